using System.Runtime.InteropServices;

namespace Cbd.TestTools;

/// <summary>Signals by process id: .NET can send SIGKILL (<see cref="System.Diagnostics.Process.Kill()"/>) but not SIGTERM.</summary>
internal static partial class Posix
{
    public const int SigKill = 9;
    public const int SigTerm = 15;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int SysKill(int pid, int signal);

    /// <exception cref="IOException">kill(2) failed; the message carries errno.</exception>
    public static void Signal(int pid, int signal)
    {
        if (SysKill(pid, signal) != 0)
        {
            throw new IOException($"kill({pid}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }
}
