using System.Runtime.InteropServices;

namespace Cbd.Nbd;

/// <summary>Owner and mode of a Unix socket file: .NET sets a file's mode but not its group.</summary>
internal static partial class UnixSocketFile
{
    /// <summary>Gives <paramref name="path"/> the group <paramref name="groupId"/> (when not null), then <paramref name="mode"/>.</summary>
    /// <exception cref="IOException">The group or mode cannot be set; the message names the path and the reason.</exception>
    public static void SetAccess(string path, UnixFileMode mode, int? groupId)
    {
        if (OperatingSystem.IsWindows())
        {
            return; // Windows keeps a socket file's access in its ACL, inherited from the directory.
        }
        if (groupId is { } group && LChown(path, uint.MaxValue, (uint)group) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            ThrowHelper.ThrowIO($"{path}: cannot give the socket to group {group}: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        try
        {
            File.SetUnixFileMode(path, mode);
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
        {
            ThrowHelper.ThrowIO($"{path}: cannot set the socket's mode: {ex.Message}");
        }
    }

    // lchown, not chown: the path is the socket just bound, and a link put in its place is not followed.
    [LibraryImport("libc", EntryPoint = "lchown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int LChown(string path, uint owner, uint group);
}
