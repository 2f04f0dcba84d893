using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Cbd.Core.Storage;

/// <summary>
/// Reads that take only what the page cache already holds: preadv2 with RWF_NOWAIT (Linux 4.14 and later, for
/// buffered reads on ext4, xfs, btrfs and block devices), which answers EAGAIN instead of waiting for the disk. A
/// caller that must not wait on I/O (a thread serving many requests in turn) reads this way first and hands only
/// what is missing to a thread that may wait.
/// </summary>
internal static unsafe partial class CachedReads
{
    private const int NoWait = 0x08; // RWF_NOWAIT
    private const int Again = 11, Interrupted = 4, Invalid = 22, OpNotSupp = 95; // EAGAIN, EINTR, EINVAL, EOPNOTSUPP

    /// <summary>What a cached read came to.</summary>
    public enum Outcome
    {
        /// <summary>Every byte asked for was read.</summary>
        Done,

        /// <summary>The rest is not in the page cache: reading it would wait for the disk.</summary>
        WouldBlock,

        /// <summary>The end of the file came first.</summary>
        EndOfFile,

        /// <summary>The kernel or filesystem does not read without waiting (no RWF_NOWAIT there).</summary>
        Unsupported,
    }

    /// <summary>
    /// Reads into <paramref name="destination"/> at <paramref name="offset"/> as far as the page cache holds the bytes;
    /// <paramref name="read"/> says how many were read, whatever the outcome.
    /// </summary>
    /// <exception cref="IOException">The read failed for another reason; the message names the file.</exception>
    public static Outcome Read(SafeFileHandle handle, long offset, Span<byte> destination, string path, out int read)
    {
        read = 0;
        fixed (byte* start = destination)
        {
            while (read < destination.Length)
            {
                var iov = new IoVec { Base = start + read, Length = (nuint)(destination.Length - read) };
                nint n = PreadV2(handle, &iov, 1, offset + read, NoWait);
                if (n > 0)
                {
                    read += (int)n;
                    continue;
                }
                if (n == 0)
                    return Outcome.EndOfFile;
                int errno = Marshal.GetLastPInvokeError();
                switch (errno)
                {
                    case Interrupted:
                        continue;
                    case Again:
                        return Outcome.WouldBlock;
                    case OpNotSupp or Invalid when read == 0:
                        return Outcome.Unsupported;
                    default:
                        throw new IOException($"{path}: read of {destination.Length - read} bytes at {offset + read} failed: {Marshal.GetPInvokeErrorMessage(errno)}");
                }
            }
        }
        return Outcome.Done;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc", EntryPoint = "preadv2", SetLastError = true)]
    private static partial nint PreadV2(SafeFileHandle fd, IoVec* iov, int iovcnt, long offset, int flags);
}
