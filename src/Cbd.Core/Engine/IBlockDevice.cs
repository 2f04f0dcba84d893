namespace Cbd.Core.Engine;

/// <summary>
/// A byte-addressed virtual disk: the contract the NBD server serves. <see cref="CompressedDevice"/>
/// is the real implementation.
/// </summary>
/// <remarks>
/// Every method accepts any byte offset and length inside <c>[0, Size)</c>; callers validate ranges
/// first (an out-of-range call throws <see cref="ArgumentOutOfRangeException"/>). Calls may run
/// concurrently; calls touching the same logical block are ordered by the device.
/// Errors: <see cref="OutOfSpaceException"/> when the backing store is full (ENOSPC),
/// <see cref="LblkCorruptException"/> or <see cref="IOException"/> for a failed read or write of the
/// backing store (EIO), <see cref="ReadOnlyDeviceException"/> for a write to a read-only device (EPERM),
/// <see cref="ProvisioningNotSupportedException"/> for zeroing that must provision a range the device cannot
/// promise (ENOTSUP).
/// </remarks>
public interface IBlockDevice : IAsyncDisposable
{
    /// <summary>Logical size in bytes; a multiple of <see cref="BlockSize"/>.</summary>
    long Size { get; }

    /// <summary>Logical block (lblk) size in bytes: the unit of compression, the preferred I/O size.</summary>
    int BlockSize { get; }

    bool IsReadOnly { get; }

    /// <summary>
    /// True when zeroing without <c>mayDeallocate</c> can promise that no later write to the range fails for
    /// space, whatever is written elsewhere and across a restart; otherwise such zeroing throws
    /// <see cref="ProvisioningNotSupportedException"/>.
    /// </summary>
    bool CanProvision { get; }

    /// <summary>
    /// True when <see cref="ReadAsync"/> never holds its caller's thread waiting for a disk (what must wait goes on
    /// elsewhere, and the call completes later), so that one thread may serve many reads in turn. False (the default):
    /// a read may block its calling thread.
    /// </summary>
    bool ReadsWithoutWaiting => false;

    /// <summary>Fills <paramref name="buffer"/> with the bytes at <paramref name="offset"/>.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="offset"/>. Visible to every later read at once;
    /// durable after the next <see cref="FlushAsync"/>, or on return when <paramref name="fua"/> is set.
    /// </summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default);

    /// <summary>Makes every write completed before the call durable on the backing store (fsync).</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Discards a range: whole lblks inside it are deallocated, partial lblks at its edges are zeroed.
    /// The range reads back as zeros.
    /// </summary>
    ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>
    /// Zeroes a range. With <paramref name="mayDeallocate"/> whole lblks are deallocated (they still read
    /// as zeros). Without it the range must stay writable whatever happens (NBD_CMD_FLAG_NO_HOLE): a device
    /// that cannot promise that (<see cref="CanProvision"/> false) throws
    /// <see cref="ProvisioningNotSupportedException"/> and changes nothing.
    /// </summary>
    ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate = true, bool fua = false, CancellationToken cancellationToken = default);

    /// <summary>
    /// Describes <c>[offset, offset + length)</c> as consecutive extents, each flagged as hole and/or
    /// known zeros. The extents cover the range exactly, in order, and adjacent extents differ in flags.
    /// A write to an extent that is not a hole does not fail for lack of space (NBD base:allocation).
    /// </summary>
    ValueTask<IReadOnlyList<BlockExtent>> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Hints that the range will be read soon (NBD_CMD_CACHE); may do nothing.</summary>
    ValueTask PrefetchAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Live usage figures.</summary>
    DeviceStats GetStats();
}

/// <summary>One run of bytes with the same allocation state.</summary>
/// <param name="Length">Bytes in the run.</param>
/// <param name="IsHole">Not allocated on the backing store, or a write to it may fail for lack of space.</param>
/// <param name="IsZero">Known to read as zeros.</param>
public readonly record struct BlockExtent(long Length, bool IsHole, bool IsZero);

/// <summary>Usage of a device.</summary>
/// <param name="LogicalBytes">Logical size of the device.</param>
/// <param name="LblkSize">Logical block size in bytes.</param>
/// <param name="LblksTotal">Logical blocks in the device.</param>
/// <param name="LblksUsed">Logical blocks that hold data (allocated), as last written back.</param>
/// <param name="PblksTotal">Data pblks the device can allocate.</param>
/// <param name="PblksUsed">Data pblks in use, as last written back.</param>
/// <param name="DirtyLblks">Logical blocks in the cache whose newest contents are not yet written back.</param>
/// <param name="LogBytes">Bytes of the write log (0 without one).</param>
/// <param name="LogUsedBytes">Bytes of the log from its tail to its head: records not yet merged, or merged and not yet passed by the tail.</param>
/// <param name="LogPendingLblks">lblks with log records not yet merged into them.</param>
/// <param name="FastStoredLblks">lblks written back with the fast codec under write pressure, to be recompressed when the device is idle.</param>
public readonly record struct DeviceStats(
    long LogicalBytes, int LblkSize, long LblksTotal, long LblksUsed, long PblksTotal, long PblksUsed, long DirtyLblks,
    long LogBytes = 0, long LogUsedBytes = 0, long LogPendingLblks = 0, long FastStoredLblks = 0)
{
    /// <summary>Bytes of data pblks in use.</summary>
    public long PhysicalBytesUsed => PblksUsed * Format.Layout.PblkSize;

    /// <summary>Uncompressed bytes of the allocated lblks divided by the physical bytes storing them (1 when empty).</summary>
    public double CompressionRatio => PblksUsed == 0 ? 1.0 : (double)LblksUsed * LblkSize / PhysicalBytesUsed;
}
