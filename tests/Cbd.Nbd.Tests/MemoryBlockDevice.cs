using Cbd.Core.Engine;

namespace Cbd.Nbd.Tests;

/// <summary>
/// Test double: an <see cref="IBlockDevice"/> held in a byte array, for exercising the NBD server without the
/// compressed engine. Tracks per block whether it is allocated, so block status and hole reads have something
/// to report, and lets tests inject failures and delays. Not for production use.
/// </summary>
public sealed class MemoryBlockDevice : IBlockDevice
{
    private readonly byte[] _data;
    private readonly bool[] _allocated;
    private readonly Lock _lock = new();
    private int _flushes;

    public MemoryBlockDevice(long size, int blockSize = 4096, bool readOnly = false)
    {
        if (size % blockSize != 0)
        {
            throw new ArgumentException("size must be a multiple of the block size", nameof(size));
        }
        Size = size;
        BlockSize = blockSize;
        IsReadOnly = readOnly;
        _data = new byte[size];
        _allocated = new bool[size / blockSize];
    }

    public long Size { get; }
    public int BlockSize { get; }
    public bool IsReadOnly { get; }

    /// <summary>Memory never runs out of space for a block that is already there.</summary>
    public bool CanProvision => true;

    public int FlushCount => Volatile.Read(ref _flushes);

    /// <summary>True unless a test says otherwise: reads copy from memory, and the hooks wait asynchronously.</summary>
    public bool ReadsWithoutWaiting { get; set; } = true;

    /// <summary>Called before every operation with its name ("read", "write", ...), offset and length; may throw or delay.</summary>
    public Func<string, long, long, ValueTask>? BeforeOperation { get; set; }

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await HookAsync("read", offset, buffer.Length).ConfigureAwait(false);
        CheckRange(offset, buffer.Length);
        lock (_lock)
        {
            _data.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
        }
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        await HookAsync("write", offset, data.Length).ConfigureAwait(false);
        CheckWritable();
        CheckRange(offset, data.Length);
        lock (_lock)
        {
            data.Span.CopyTo(_data.AsSpan((int)offset));
            MarkAllocated(offset, data.Length);
        }
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        await HookAsync("flush", 0, 0).ConfigureAwait(false);
        Interlocked.Increment(ref _flushes);
    }

    public async ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        await HookAsync("trim", offset, length).ConfigureAwait(false);
        CheckWritable();
        CheckRange(offset, length);
        Zero(offset, length, deallocate: true);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate = true, bool fua = false, CancellationToken cancellationToken = default)
    {
        await HookAsync("zero", offset, length).ConfigureAwait(false);
        CheckWritable();
        CheckRange(offset, length);
        Zero(offset, length, mayDeallocate);
    }

    public async ValueTask<IReadOnlyList<BlockExtent>> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        await HookAsync("status", offset, length).ConfigureAwait(false);
        CheckRange(offset, length);
        var extents = new List<BlockExtent>();
        lock (_lock)
        {
            long position = offset;
            long end = offset + length;
            while (position < end)
            {
                long block = position / BlockSize;
                long next = Math.Min(end, (block + 1) * BlockSize);
                bool hole = !_allocated[block];
                bool zero = hole || _data.AsSpan((int)position, (int)(next - position)).IndexOfAnyExcept((byte)0) < 0;
                if (extents.Count > 0 && extents[^1].IsHole == hole && extents[^1].IsZero == zero)
                {
                    extents[^1] = extents[^1] with { Length = extents[^1].Length + (next - position) };
                }
                else
                {
                    extents.Add(new BlockExtent(next - position, hole, zero));
                }
                position = next;
            }
        }
        return extents;
    }

    public async ValueTask PrefetchAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        await HookAsync("prefetch", offset, length).ConfigureAwait(false);
        CheckRange(offset, length);
    }

    public DeviceStats GetStats()
    {
        lock (_lock)
        {
            long used = _allocated.Count(a => a);
            return new DeviceStats(Size, BlockSize, _allocated.Length, used, _allocated.Length, used, 0);
        }
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>A copy of the whole contents.</summary>
    public byte[] Snapshot()
    {
        lock (_lock)
        {
            return (byte[])_data.Clone();
        }
    }

    public bool IsAllocated(long block)
    {
        lock (_lock)
        {
            return _allocated[block];
        }
    }

    private ValueTask HookAsync(string operation, long offset, long length)
        => BeforeOperation?.Invoke(operation, offset, length) ?? ValueTask.CompletedTask;

    private void CheckWritable()
    {
        if (IsReadOnly)
        {
            throw new ReadOnlyDeviceException();
        }
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside the device of {Size} bytes");
        }
    }

    private void MarkAllocated(long offset, long length)
    {
        if (length == 0)
        {
            return;
        }
        for (long b = offset / BlockSize; b <= (offset + length - 1) / BlockSize; b++)
        {
            _allocated[b] = true;
        }
    }

    private void Zero(long offset, long length, bool deallocate)
    {
        lock (_lock)
        {
            _data.AsSpan((int)offset, (int)length).Clear();
            if (length == 0)
            {
                return;
            }
            for (long b = offset / BlockSize; b <= (offset + length - 1) / BlockSize; b++)
            {
                bool whole = b * BlockSize >= offset && (b + 1) * BlockSize <= offset + length;
                _allocated[b] = deallocate && whole ? false : whole || _allocated[b];
            }
        }
    }
}
