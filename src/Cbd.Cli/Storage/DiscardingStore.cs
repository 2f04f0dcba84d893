using Cbd.Core.Storage;

namespace Cbd.Cli.Storage;

/// <summary>
/// A store of a given length that reads zeros and forgets what is written: formatting it checks the
/// sizes and options and yields the header a real format would write, before any file is touched.
/// </summary>
public sealed class DiscardingStore(long length) : IBackingStore
{
    public long Length => length;
    public bool CanWrite => true;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        buffer.Span.Clear();
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => throw new NotSupportedException();
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
