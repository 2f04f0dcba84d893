using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Cbd.Core.Storage;

/// <summary>
/// The Linux calls that give a file's or a block device's space back (fallocate PUNCH_HOLE, ioctl BLKDISCARD) and
/// tell how much of a file is allocated (statx). statx rather than fstat: its struct is laid out alike on every
/// architecture, where struct stat is not.
/// </summary>
internal static unsafe partial class Deallocation
{
    /// <summary>errno values that say the filesystem or device has no such support, as opposed to a failure.</summary>
    private const int NotTty = 25, NoSys = 38, OpNotSupp = 95; // ENOTTY, ENOSYS, EOPNOTSUPP

    /// <summary>
    /// Punches a hole in a file, or discards a range of a block device. Returns false when the filesystem or device
    /// cannot; throws <see cref="IOException"/> on any other failure.
    /// </summary>
    public static bool Deallocate(SafeFileHandle handle, bool blockDevice, long offset, long length, string path)
    {
        int result;
        if (blockDevice)
        {
            const nuint BlkDiscard = 0x1277; // _IO(0x12, 119)
            ulong* range = stackalloc ulong[2];
            range[0] = (ulong)offset;
            range[1] = (ulong)length;
            result = Ioctl(handle, BlkDiscard, range);
        }
        else
        {
            const int KeepSize = 0x01, PunchHole = 0x02; // FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
            result = Fallocate(handle, KeepSize | PunchHole, offset, length);
        }
        if (result == 0)
            return true;
        int errno = Marshal.GetLastPInvokeError();
        if (errno is OpNotSupp or NoSys or NotTty)
            return false;
        throw new IOException($"{path}: {(blockDevice ? "BLKDISCARD" : "fallocate(PUNCH_HOLE)")} of [{offset}, {offset + length}) failed: " +
            Marshal.GetPInvokeErrorMessage(errno));
    }

    /// <summary>The bytes a file takes on its filesystem (st_blocks x 512), or null when statx cannot tell.</summary>
    public static long? AllocatedBytes(SafeFileHandle handle)
    {
        const int EmptyPath = 0x1000; // AT_EMPTY_PATH: the handle itself
        const uint Blocks = 0x400; // STATX_BLOCKS
        const int Mask = 0x00, BlocksField = 0x30; // stx_mask u32, stx_blocks u64 (struct statx, 256 bytes)
        byte* buffer = stackalloc byte[256];
        if (Statx(handle, "", EmptyPath, Blocks, buffer) != 0 || (*(uint*)(buffer + Mask) & Blocks) == 0)
            return null;
        return (long)(*(ulong*)(buffer + BlocksField) * 512);
    }

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int Fallocate(SafeFileHandle fd, int mode, long offset, long length);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(SafeFileHandle fd, nuint request, ulong* range);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(SafeFileHandle dirfd, string path, int flags, uint mask, byte* buffer);
}
