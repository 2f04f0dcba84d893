using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// A backing store that records every write and flush, to build the images a power cut could leave:
/// <see cref="ImageAt"/> keeps the writes before the last flush that started before the cut and keeps,
/// drops or tears (at 512-byte sectors) each later one.
/// </summary>
internal sealed class RecordingStore(MemoryBackingStore inner) : IBackingStore
{
    public abstract record Entry;
    public sealed record Write(long Offset, byte[] Data) : Entry;
    public sealed record Flush : Entry;

    private readonly MemoryBackingStore _base = inner.Clone();
    private readonly List<Entry> _log = [];
    private readonly Lock _lock = new();

    public int Count { get { lock (_lock) return _log.Count; } }
    public long Length => inner.Length;
    public bool CanWrite => true;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            _log.Add(new Write(offset, data.ToArray()));
            inner.Write(offset, data.Span);
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteAsync(offset, new byte[length], cancellationToken);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        lock (_lock)
            _log.Add(new Flush());
        return ValueTask.CompletedTask;
    }

    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => throw new NotSupportedException();

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>The image after a power cut once <paramref name="cut"/> log entries were issued.</summary>
    public MemoryBackingStore ImageAt(int cut, Random random)
    {
        var image = _base.Clone();
        List<Entry> log;
        lock (_lock)
            log = _log[..cut];
        int lastFlush = log.FindLastIndex(e => e is Flush);
        for (int i = 0; i < log.Count; i++)
        {
            if (log[i] is not Write write)
                continue;
            if (i < lastFlush)
            {
                image.Write(write.Offset, write.Data);
                continue;
            }
            switch (random.Next(4))
            {
                case 0:
                    break; // never reached the disk
                case 1:
                    // Torn: any subset of its sectors landed.
                    for (int s = 0; s < write.Data.Length; s += 512)
                    {
                        if (random.Next(2) == 0)
                            image.Write(write.Offset + s, write.Data.AsSpan(s, Math.Min(512, write.Data.Length - s)));
                    }
                    break;
                default:
                    image.Write(write.Offset, write.Data);
                    break;
            }
        }
        return image;
    }
}
