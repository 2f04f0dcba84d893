using Cbd.Core.Storage;

namespace Cbd.Cli.Storage;

/// <summary>Passes everything to another store and reports the bytes written or zeroed, for a progress bar.</summary>
/// <remarks>Does not own the inner store: disposing this leaves it open.</remarks>
public sealed class CountingStore(IBackingStore inner, IProgress<long>? progress) : IBackingStore
{
    private long _written;

    public long Length => inner.Length;
    public bool CanWrite => inner.CanWrite;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        inner.ReadAsync(offset, buffer, cancellationToken);

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        await inner.WriteAsync(offset, data, cancellationToken).ConfigureAwait(false);
        progress?.Report(Interlocked.Add(ref _written, data.Length));
    }

    public async ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        await inner.ZeroRangeAsync(offset, length, cancellationToken).ConfigureAwait(false);
        progress?.Report(Interlocked.Add(ref _written, length));
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);
    public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.DeallocateAsync(offset, length, cancellationToken);
    public long? AllocatedBytes => inner.AllocatedBytes;
    public bool ReadsWithoutWaiting => inner.ReadsWithoutWaiting;
    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => inner.SetLengthAsync(length, cancellationToken);
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
