namespace Cbd.Core.Storage;

/// <summary>
/// Wraps a store and fails chosen operations with <see cref="IOException"/>, as a dying disk would:
/// for fault-injection tests of everything above the store.
/// </summary>
public sealed class FaultInjectingStore(IBackingStore inner) : IBackingStore
{
    private int _writes;
    private int _flushes;

    /// <summary>Fail every write once this many writes have succeeded (null: never).</summary>
    public int? FailWritesAfter { get; set; }

    /// <summary>Fail every flush once this many flushes have succeeded (null: never).</summary>
    public int? FailFlushesAfter { get; set; }

    /// <summary>Fail every read of a byte inside this range.</summary>
    public (long Offset, long Length)? FailReadsIn { get; set; }

    public int Writes => Volatile.Read(ref _writes);
    public long Length => inner.Length;
    public bool CanWrite => inner.CanWrite;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (FailReadsIn is var (start, length) && offset < start + length && start < offset + buffer.Length)
            return ValueTask.FromException(new IOException($"injected read error at [{offset}, {offset + buffer.Length})"));
        return inner.ReadAsync(offset, buffer, cancellationToken);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        if (FailWritesAfter is int limit && Interlocked.Increment(ref _writes) > limit)
            return ValueTask.FromException(new IOException($"injected write error at [{offset}, {offset + data.Length})"));
        return inner.WriteAsync(offset, data, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (FailFlushesAfter is int limit && Interlocked.Increment(ref _flushes) > limit)
            return ValueTask.FromException(new IOException("injected flush error"));
        return inner.FlushAsync(cancellationToken);
    }

    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.ZeroRangeAsync(offset, length, cancellationToken);
    public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.DeallocateAsync(offset, length, cancellationToken);
    public long? AllocatedBytes => inner.AllocatedBytes;
    public bool ReadsWithoutWaiting => inner.ReadsWithoutWaiting;
    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => inner.SetLengthAsync(length, cancellationToken);
    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
