using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// A backing store that records every write, punch and fsync, to build the images a power cut could leave.
/// Writes complete at once. An fsync is held until a later write happens to complete it (a seeded chance)
/// or <see cref="DriveAsync(Task)"/> finds the workload waiting on a quiet store, and then a seeded choice
/// among those held completes: fsyncs complete late and out of order, several checkpoints are really in
/// flight at once, and writes issued after an fsync started are logged before it completes. As on a real
/// disk, a write is durable once an fsync that started after the write completed has completed;
/// <see cref="ImageAt"/> keeps the durable writes and keeps, drops or tears (at 512-byte sectors) each
/// later one.
/// </summary>
/// <remarks>
/// Which held fsync completes follows the seed; when one completes depends also on the engine's threads
/// and the machine's load, so two runs record similar but not identical logs. Every recorded log is
/// checked in full, and a failure names the seed and the cut. The quiet period stands for the disk's
/// latency, not for synchronisation: whatever the timing, the log says what happened in which order.
/// </remarks>
internal sealed class RecordingStore : IBackingStore
{
    public abstract record Entry;
    public sealed record Write(long Offset, byte[] Data) : Entry;

    /// <summary>A range given back to the store (<see cref="IBackingStore.DeallocateAsync"/>): it reads as zeros from then
    /// on, and it is durable, or not, or partly (by pblks), just as a write is.</summary>
    public sealed record Punch(long Offset, long Length) : Entry;

    /// <summary>An fsync was called: it covers every write logged before this entry.</summary>
    public sealed record FlushStart(int Id) : Entry;

    /// <summary>The fsync that started at log index <paramref name="StartIndex"/> completed.</summary>
    public sealed record FlushEnd(int Id, int StartIndex) : Entry;

    private sealed record Held(int Id, int StartIndex, TaskCompletionSource Done);

    private readonly MemoryBackingStore _inner;
    private readonly MemoryBackingStore _base;
    private readonly List<Entry> _log = [];
    private readonly List<Held> _held = [];
    private readonly Random _random;
    private readonly double _releaseOnWrite;
    private readonly Lock _lock = new();
    private TaskCompletionSource _activity = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _flushes;

    /// <param name="inner">The store as formatted: the state before the first logged write.</param>
    /// <param name="seed">Chooses which held fsync completes when.</param>
    /// <param name="releaseOnWrite">The chance that a write completes one held fsync, as a disk finishing a
    /// cache flush while new writes arrive; the rest complete only when the workload waits for them.</param>
    public RecordingStore(MemoryBackingStore inner, int seed, double releaseOnWrite = 0.05)
    {
        _inner = inner;
        _base = inner.Clone();
        _random = new Random(seed);
        _releaseOnWrite = releaseOnWrite;
    }

    /// <summary>How long an operation must leave the store idle before a held fsync completes.</summary>
    public static TimeSpan QuietPeriod { get; } = TimeSpan.FromMilliseconds(2);

    public int Count { get { lock (_lock) return _log.Count; } }

    /// <summary>The most fsyncs that were in flight at once.</summary>
    public int MaxFsyncsInFlight { get; private set; }

    public long Length => _inner.Length;
    public bool CanWrite => true;

    public IReadOnlyList<Entry> Log
    {
        get { lock (_lock) return [.. _log]; }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => _inner.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        TaskCompletionSource activity;
        lock (_lock)
        {
            _log.Add(new Write(offset, data.ToArray()));
            _inner.Write(offset, data.Span);
            if (_held.Count > 0 && _random.NextDouble() < _releaseOnWrite)
                ReleaseOneLocked();
            activity = NextActivityLocked();
        }
        activity.TrySetResult();
        return ValueTask.CompletedTask;
    }

    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteAsync(offset, new byte[length], cancellationToken);

    public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        TaskCompletionSource activity;
        lock (_lock)
        {
            _log.Add(new Punch(offset, length));
            _inner.Deallocate(offset, length);
            activity = NextActivityLocked();
        }
        activity.TrySetResult();
        return ValueTask.FromResult(true);
    }

    /// <summary>Punches logged so far.</summary>
    public int Punches { get { lock (_lock) return _log.Count(e => e is Punch); } }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        // Completions run on the pool, never inside this lock or on the thread that releases them.
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        TaskCompletionSource activity;
        lock (_lock)
        {
            int id = ++_flushes;
            _held.Add(new Held(id, _log.Count, done));
            _log.Add(new FlushStart(id));
            MaxFsyncsInFlight = Math.Max(MaxFsyncsInFlight, _held.Count);
            activity = NextActivityLocked();
        }
        activity.TrySetResult();
        return new ValueTask(done.Task);
    }

    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => throw new NotSupportedException();

    public ValueTask DisposeAsync()
    {
        lock (_lock)
        {
            while (_held.Count > 0)
                ReleaseOneLocked();
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>
    /// Waits for <paramref name="operation"/>. While it is running and the store sees no write or fsync
    /// for <see cref="QuietPeriod"/>, one held fsync completes (a seeded choice among those in flight), as
    /// a disk finishing a cache flush would: what the operation does not wait for stays in flight behind it.
    /// </summary>
    /// <exception cref="TimeoutException">The operation made no progress for a long time with no fsync
    /// held: the device is stuck.</exception>
    public async Task DriveAsync(Task operation)
    {
        var stuck = TimeSpan.FromSeconds(60);
        while (!operation.IsCompleted)
        {
            Task activity;
            bool held;
            lock (_lock)
            {
                activity = _activity.Task;
                held = _held.Count > 0;
            }
            var wait = Task.Delay(held ? QuietPeriod : stuck);
            if (await Task.WhenAny(operation, activity, wait).ConfigureAwait(false) != wait)
                continue;
            lock (_lock)
            {
                if (!held)
                    throw new TimeoutException($"the device made no progress in {stuck.TotalSeconds} s with no fsync held");
                if (_held.Count > 0)
                    ReleaseOneLocked();
            }
        }
        await operation.ConfigureAwait(false);
    }

    public Task DriveAsync(ValueTask operation) => DriveAsync(operation.AsTask());

    private TaskCompletionSource NextActivityLocked()
    {
        var activity = _activity;
        _activity = new(TaskCreationOptions.RunContinuationsAsynchronously);
        return activity;
    }

    private void ReleaseOneLocked()
    {
        var held = _held[_random.Next(_held.Count)];
        _held.Remove(held);
        _log.Add(new FlushEnd(held.Id, held.StartIndex));
        held.Done.TrySetResult();
    }

    /// <summary>
    /// Log indices below this are durable once the first <paramref name="cut"/> entries were logged: the
    /// start of the latest-starting fsync that had completed.
    /// </summary>
    public static int DurablePrefix(IReadOnlyList<Entry> log, int cut)
    {
        int durable = 0;
        for (int i = 0; i < cut; i++)
        {
            if (log[i] is FlushEnd end)
                durable = Math.Max(durable, end.StartIndex);
        }
        return durable;
    }

    /// <summary>The image after a power cut once <paramref name="cut"/> log entries were logged.</summary>
    public MemoryBackingStore ImageAt(int cut, Random random)
    {
        var image = _base.Clone();
        var log = Log;
        int durable = DurablePrefix(log, cut);
        for (int i = 0; i < cut; i++)
        {
            if (log[i] is Punch punch)
            {
                ApplyPunch(image, punch, durable: i < durable, random);
                continue;
            }
            if (log[i] is not Write write)
                continue;
            if (i < durable)
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

    /// <summary>A durable punch landed whole; a later one may have reached any subset of its pblks, or none.</summary>
    private static void ApplyPunch(MemoryBackingStore image, Punch punch, bool durable, Random random)
    {
        const int Pblk = 4096;
        int mode = durable ? 2 : random.Next(4);
        if (mode == 0)
            return;
        for (long at = punch.Offset; at < punch.Offset + punch.Length; at += Pblk)
        {
            if (mode != 1 || random.Next(2) == 0)
                image.Deallocate(at, Math.Min(Pblk, punch.Offset + punch.Length - at));
        }
    }
}
