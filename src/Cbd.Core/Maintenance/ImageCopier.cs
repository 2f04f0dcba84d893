using System.Buffers;
using Cbd.Core.Engine;
using Cbd.Core.Storage;
using Microsoft.Win32.SafeHandles;

namespace Cbd.Core.Maintenance;

/// <summary>
/// Copies raw disk images into and out of a device, keeping zeros as holes on both sides: an import
/// does not allocate all-zero lblks, and an export leaves zero ranges unwritten in a sparse file.
/// </summary>
/// <remarks>
/// Copies go in chunks of whole lblks (1 MiB, or one lblk when lblks are larger), with
/// <see cref="InFlight"/> chunks under way at once so that compression on one overlaps I/O on others.
/// Progress reports (bytes done, bytes in all).
/// </remarks>
public static class ImageCopier
{
    /// <summary>Chunks read or written at once.</summary>
    public const int InFlight = 4;

    private const int ChunkBytes = 1 << 20;

    /// <summary>
    /// Writes <paramref name="source"/>, from its current position to its end, to the device from offset 0,
    /// then flushes the device. All-zero lblks are not written: they become (or stay) unallocated.
    /// </summary>
    /// <exception cref="ArgumentException">A seekable source is longer than the device.</exception>
    /// <exception cref="IOException">A non-seekable source turned out longer than the device (what fitted was written).</exception>
    public static async Task ImportAsync(Stream source, IBlockDevice device, IProgress<(long Done, long Total)>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(device);
        long total = source.CanSeek ? source.Length - source.Position : device.Size;
        if (total > device.Size)
            throw new ArgumentException($"the source holds {total} bytes, more than the device's {device.Size}", nameof(source));
        int chunk = ChunkSize(device);
        long done = 0;
        var pending = new Queue<(Task Task, byte[] Buffer)>();
        try
        {
            long offset = 0;
            while (offset < device.Size)
            {
                int want = (int)Math.Min(chunk, device.Size - offset);
                byte[] buffer = ArrayPool<byte>.Shared.Rent(chunk);
                int n = await source.ReadAtLeastAsync(buffer.AsMemory(0, want), want, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
                if (n == 0)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    break;
                }
                long at = offset;
                pending.Enqueue((Task.Run(async () =>
                {
                    await StoreChunkAsync(device, at, buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                    progress?.Report((Interlocked.Add(ref done, n), total));
                }, cancellationToken), buffer));
                offset += n;
                if (pending.Count >= InFlight)
                    await CompleteOldestAsync(pending).ConfigureAwait(false);
                if (n < want)
                    break;
            }
            while (pending.Count > 0)
                await CompleteOldestAsync(pending).ConfigureAwait(false);
            if (offset == device.Size && !source.CanSeek)
            {
                byte[] probe = new byte[1];
                if (await source.ReadAsync(probe, cancellationToken).ConfigureAwait(false) > 0)
                    throw new IOException($"the source is longer than the device's {device.Size} bytes; the first {device.Size} were imported");
            }
        }
        finally
        {
            // On failure, let the chunks under way finish before their buffers go back to the pool.
            while (pending.Count > 0)
            {
                var (task, buffer) = pending.Dequeue();
                await task.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
        await device.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Writes the whole of <paramref name="source"/> to the device from offset 0, then flushes the device.</summary>
    /// <exception cref="ArgumentException">The source is longer than the device.</exception>
    public static async Task ImportAsync(IBackingStore source, IBlockDevice device, IProgress<(long Done, long Total)>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(device);
        long total = source.Length;
        if (total > device.Size)
            throw new ArgumentException($"the source holds {total} bytes, more than the device's {device.Size}", nameof(source));
        int chunk = ChunkSize(device);
        long done = 0;
        long chunks = (total + chunk - 1) / chunk;
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = InFlight, CancellationToken = cancellationToken };
        await Parallel.ForAsync(0L, chunks, parallel, async (i, token) =>
        {
            long offset = i * chunk;
            int n = (int)Math.Min(chunk, total - offset);
            byte[] buffer = ArrayPool<byte>.Shared.Rent(n);
            try
            {
                await source.ReadAsync(offset, buffer.AsMemory(0, n), token).ConfigureAwait(false);
                await StoreChunkAsync(device, offset, buffer.AsMemory(0, n), token).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            progress?.Report((Interlocked.Add(ref done, n), total));
        }).ConfigureAwait(false);
        await device.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the device to <paramref name="destination"/>, a regular file whose contents are replaced:
    /// it is truncated and set to the device's size, and only ranges that are not zero are written,
    /// so zeros stay holes.
    /// </summary>
    public static async Task ExportAsync(IBlockDevice device, SafeFileHandle destination, IProgress<(long Done, long Total)>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(destination);
        long total = device.Size;
        // Truncating first drops whatever the file held: every range not written below reads as zeros.
        RandomAccess.SetLength(destination, 0);
        RandomAccess.SetLength(destination, total);
        int chunk = ChunkSize(device);
        long done = 0;
        long chunks = (total + chunk - 1) / chunk;
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = InFlight, CancellationToken = cancellationToken };
        await Parallel.ForAsync(0L, chunks, parallel, async (i, token) =>
        {
            long offset = i * chunk;
            int n = (int)Math.Min(chunk, total - offset);
            byte[]? buffer = await ReadChunkAsync(device, offset, n, token).ConfigureAwait(false);
            if (buffer is not null)
            {
                try
                {
                    foreach (var (start, length, zero) in Runs(buffer.AsMemory(0, n), device.BlockSize))
                    {
                        if (!zero)
                            await RandomAccess.WriteAsync(destination, buffer.AsMemory(start, length), offset + start, token).ConfigureAwait(false);
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
            progress?.Report((Interlocked.Add(ref done, n), total));
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes the device to <paramref name="destination"/> from its current position. A seekable stream
    /// is first cut at that position, then zero ranges are skipped (holes in a file) and its length set
    /// at the end; any other stream (a pipe) gets every byte, zeros included.
    /// </summary>
    public static async Task ExportAsync(IBlockDevice device, Stream destination, IProgress<(long Done, long Total)>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(destination);
        long total = device.Size;
        bool seek = destination.CanSeek;
        long start = seek ? destination.Position : 0;
        if (seek)
            destination.SetLength(start);
        int chunk = ChunkSize(device);
        byte[] zeros = seek ? [] : new byte[chunk];
        var pending = new Queue<(Task<byte[]?> Read, int Length)>();
        long next = 0, done = 0;
        try
        {
            while (next < total || pending.Count > 0)
            {
                // Reads run ahead; writes go in order.
                while (next < total && pending.Count < InFlight)
                {
                    int n = (int)Math.Min(chunk, total - next);
                    long at = next;
                    pending.Enqueue((Task.Run(() => ReadChunkAsync(device, at, n, cancellationToken).AsTask(), cancellationToken), n));
                    next += n;
                }
                var (read, length) = pending.Dequeue();
                byte[]? buffer = await read.ConfigureAwait(false);
                try
                {
                    if (buffer is null)
                        await SkipAsync(destination, length, zeros, cancellationToken).ConfigureAwait(false);
                    else
                    {
                        foreach (var (at, n, zero) in Runs(buffer.AsMemory(0, length), device.BlockSize))
                        {
                            if (zero)
                                await SkipAsync(destination, n, zeros, cancellationToken).ConfigureAwait(false);
                            else
                                await destination.WriteAsync(buffer.AsMemory(at, n), cancellationToken).ConfigureAwait(false);
                        }
                    }
                }
                finally
                {
                    if (buffer is not null)
                        ArrayPool<byte>.Shared.Return(buffer);
                }
                done += length;
                progress?.Report((done, total));
            }
        }
        finally
        {
            while (pending.Count > 0)
            {
                var (read, _) = pending.Dequeue();
                await ((Task)read).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                if (read.IsCompletedSuccessfully && read.Result is { } buffer)
                    ArrayPool<byte>.Shared.Return(buffer);
            }
        }
        if (seek && destination.Length < start + total)
            destination.SetLength(start + total);
        await destination.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    private static int ChunkSize(IBlockDevice device) => Math.Max(device.BlockSize, ChunkBytes);

    private static async Task CompleteOldestAsync(Queue<(Task Task, byte[] Buffer)> pending)
    {
        var (task, buffer) = pending.Dequeue();
        try
        {
            await task.ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes a chunk that starts on an lblk boundary: runs of data are written, runs of all-zero lblks are deallocated unless already holes.</summary>
    private static async Task StoreChunkAsync(IBlockDevice device, long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        foreach (var (start, length, zero) in Runs(data, device.BlockSize))
        {
            if (!zero)
            {
                await device.WriteAsync(offset + start, data.Slice(start, length), cancellationToken: cancellationToken).ConfigureAwait(false);
                continue;
            }
            // Deallocating what is already a hole would only churn the device's cache.
            long at = offset + start;
            foreach (var extent in await device.GetBlockStatusAsync(at, length, cancellationToken).ConfigureAwait(false))
            {
                if (!extent.IsZero)
                    await device.WriteZeroesAsync(at, extent.Length, mayDeallocate: true, cancellationToken: cancellationToken).ConfigureAwait(false);
                at += extent.Length;
            }
        }
    }

    /// <summary>Reads a chunk of the device; null when the device reports it all zeros (nothing is read).</summary>
    private static async ValueTask<byte[]?> ReadChunkAsync(IBlockDevice device, long offset, int length, CancellationToken cancellationToken)
    {
        var extents = await device.GetBlockStatusAsync(offset, length, cancellationToken).ConfigureAwait(false);
        if (extents.All(e => e.IsZero))
            return null;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            await device.ReadAsync(offset, buffer.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
            return buffer;
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(buffer);
            throw;
        }
    }

    /// <summary>Splits data into maximal runs of whole lblks (the last may be short) that are all zero or all not.</summary>
    private static List<(int Start, int Length, bool Zero)> Runs(ReadOnlyMemory<byte> data, int lblkSize)
    {
        var runs = new List<(int Start, int Length, bool Zero)>();
        var span = data.Span;
        for (int at = 0; at < span.Length; at += lblkSize)
        {
            int n = Math.Min(lblkSize, span.Length - at);
            bool zero = !span.Slice(at, n).ContainsAnyExcept((byte)0);
            if (runs.Count > 0 && runs[^1].Zero == zero)
                runs[^1] = runs[^1] with { Length = runs[^1].Length + n };
            else
                runs.Add((at, n, zero));
        }
        return runs;
    }

    private static async ValueTask SkipAsync(Stream destination, int length, byte[] zeros, CancellationToken cancellationToken)
    {
        if (destination.CanSeek)
        {
            destination.Seek(length, SeekOrigin.Current);
            return;
        }
        while (length > 0)
        {
            int n = Math.Min(length, zeros.Length);
            await destination.WriteAsync(zeros.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            length -= n;
        }
    }
}
