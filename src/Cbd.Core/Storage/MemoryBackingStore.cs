using System.Collections.Concurrent;

namespace Cbd.Core.Storage;

/// <summary>
/// A sparse in-memory store: 64 KiB chunks allocated on first write, so a test can format a device of
/// many terabytes (48-bit pblk numbers) at the cost of the bytes actually written.
/// </summary>
public sealed class MemoryBackingStore(long length) : IBackingStore
{
    private const int ChunkShift = 16;
    private const int ChunkSize = 1 << ChunkShift;
    private readonly ConcurrentDictionary<long, byte[]> _chunks = new();
    private long _length = length;

    public long Length => Volatile.Read(ref _length);
    public bool CanWrite => true;

    /// <summary>Every read is a copy from memory.</summary>
    public bool ReadsWithoutWaiting => true;

    /// <summary>Bytes held in memory.</summary>
    public long AllocatedBytes => (long)_chunks.Count * ChunkSize;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Read(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public void Read(long offset, Span<byte> buffer)
    {
        CheckRange(offset, buffer.Length);
        while (!buffer.IsEmpty)
        {
            long chunk = offset >> ChunkShift;
            int within = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(buffer.Length, ChunkSize - within);
            if (_chunks.TryGetValue(chunk, out var data))
                data.AsSpan(within, n).CopyTo(buffer);
            else
                buffer[..n].Clear();
            buffer = buffer[n..];
            offset += n;
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        Write(offset, data.Span);
        return ValueTask.CompletedTask;
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        CheckRange(offset, data.Length);
        while (!data.IsEmpty)
        {
            long chunk = offset >> ChunkShift;
            int within = (int)(offset & (ChunkSize - 1));
            int n = Math.Min(data.Length, ChunkSize - within);
            while (true)
            {
                var target = _chunks.GetOrAdd(chunk, static _ => new byte[ChunkSize]);
                lock (target)
                {
                    // A deallocation may have dropped the chunk between the lookup and the lock: write to its successor.
                    if (!_chunks.TryGetValue(chunk, out var current) || current != target)
                        continue;
                    data[..n].CopyTo(target.AsSpan(within));
                    break;
                }
            }
            data = data[n..];
            offset += n;
        }
    }

    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, 0);
        long end = Math.Min(offset + length, Length);
        byte[] zeros = new byte[ChunkSize];
        while (offset < end)
        {
            long chunk = offset >> ChunkShift;
            int within = (int)(offset & (ChunkSize - 1));
            int n = (int)Math.Min(end - offset, ChunkSize - within);
            if (within == 0 && n == ChunkSize)
                _chunks.TryRemove(chunk, out _);
            else if (_chunks.ContainsKey(chunk))
                Write(offset, zeros.AsSpan(0, n));
            offset += n;
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>Zeros the range and drops every chunk left all zeros, which <see cref="AllocatedBytes"/> then no longer counts.</summary>
    public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        Deallocate(offset, length);
        return ValueTask.FromResult(true);
    }

    public void Deallocate(long offset, long length)
    {
        CheckRange(offset, 0);
        long end = Math.Min(offset + length, Length);
        while (offset < end)
        {
            long chunk = offset >> ChunkShift;
            int within = (int)(offset & (ChunkSize - 1));
            int n = (int)Math.Min(end - offset, ChunkSize - within);
            if (_chunks.TryGetValue(chunk, out var data))
            {
                lock (data)
                {
                    data.AsSpan(within, n).Clear();
                    if (!data.AsSpan().ContainsAnyExcept((byte)0))
                        _chunks.TryRemove(KeyValuePair.Create(chunk, data));
                }
            }
            offset += n;
        }
    }

    long? IBackingStore.AllocatedBytes => AllocatedBytes;

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default)
    {
        Volatile.Write(ref _length, length);
        foreach (var key in _chunks.Keys)
        {
            if (key << ChunkShift >= length)
                _chunks.TryRemove(key, out _);
        }
        // Bytes cut off must read as zeros if the store grows again, as in a file.
        if (_chunks.TryGetValue(length >> ChunkShift, out var tail))
        {
            lock (tail)
                tail.AsSpan((int)(length & (ChunkSize - 1))).Clear();
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>A full copy, for crash and corruption tests.</summary>
    public MemoryBackingStore Clone()
    {
        var copy = new MemoryBackingStore(Length);
        foreach (var (key, value) in _chunks)
            copy._chunks[key] = (byte[])value.Clone();
        return copy;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private void CheckRange(long offset, int count)
    {
        if (offset < 0 || offset + count > Length)
            throw new IOException($"access [{offset}, {offset + count}) outside the store of {Length} bytes");
    }
}
