namespace Cbd.Core.Storage;

/// <summary>
/// Positional storage under a device: a file or a block device. Reads and writes at any offset may run
/// concurrently (they never overlap in flight: the engine orders writes to one place).
/// </summary>
public interface IBackingStore : IAsyncDisposable
{
    long Length { get; }
    bool CanWrite { get; }

    /// <summary>Reads exactly buffer.Length bytes; bytes past the end of a sparse region read as zeros.</summary>
    /// <remarks>See <see cref="ReadsWithoutWaiting"/> for the thread it may hold.</remarks>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default);

    /// <summary>Makes every completed write durable (fsync). A write that completes after the call starts may or may not be.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Makes a range read as zeros (a hole where the store supports it).</summary>
    ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Grows or shrinks the store (a file only); throws <see cref="NotSupportedException"/> for a block device.</summary>
    ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default);

    /// <summary>
    /// The first offset at or after <paramref name="offset"/> that may hold data rather than a hole (which reads as
    /// zeros), or <see cref="Length"/> when nothing from there on does. A store that knows of no holes (the
    /// default) answers <paramref name="offset"/> itself.
    /// </summary>
    long NextDataOffset(long offset) => offset;

    /// <summary>
    /// Gives a range back to the storage under the store: a hole punched in a file, a discard on a block device. What
    /// the range reads afterwards is unspecified (zeros in a file; a device may return either), so call it only on
    /// bytes nothing reads before writing them again. Returns false, having done nothing, when the store cannot (the
    /// default, or a filesystem or device without the support); it then never can for the rest of its life.
    /// </summary>
    /// <exception cref="IOException">The store can deallocate but this call failed.</exception>
    ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default) => ValueTask.FromResult(false);

    /// <summary>Bytes the store takes on the storage under it (a file's st_blocks x 512); null where that cannot be told (a block device).</summary>
    long? AllocatedBytes => null;

    /// <summary>
    /// True when <see cref="ReadAsync"/> never holds its caller's thread waiting for a disk: it completes at once with
    /// bytes already in memory, and what would wait is read on another thread, the call completing later. False (the
    /// default): a read may block the calling thread until the disk answers.
    /// </summary>
    bool ReadsWithoutWaiting => false;
}
