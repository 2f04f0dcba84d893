using System.Diagnostics;

namespace Cbd.Core.Engine;

/// <summary>
/// Merges the write log's records into their lblks (docs/FORMAT.md, "The write log"): each merge loads an lblk with its
/// pending records applied and marks it dirty (<see cref="WriteAdmission.MergeAsync"/>), so one compression covers every
/// record it gathered; the checkpoint that writes it back retires the records, and the tail moves on. It merges the
/// lblks whose records are oldest when the log is three quarters full (or a writer waits for room), every lblk when no record
/// was appended for the flush delay, and an lblk at once when it gathers <see cref="MaxRecordsPerLblk"/> records.
/// </summary>
/// <remarks>
/// Rounds overlap: a round's checkpoint is started, and its publication and commit go on while the next round loads
/// other lblks (an lblk merged and not yet published is left out, <see cref="_merging"/>). Waiting for each round's
/// commit left the CPU idle through two fsyncs a round while writers waited for room in the log.
/// <para>
/// Under pressure (the log that full, or a writer waiting), merged lblks are written back with the fast codec
/// (<see cref="CachedLblk.WriteFast"/>): writes then outrun compression, which was three quarters of the CPU random 4 KiB
/// writes cost. Once the device is idle, with every record merged, the lblks so stored are recompressed with the device's
/// codec, a batch a round, as zram recompresses its idle pages, once no write of any kind came for the flush delay; a
/// write stops that until the device is idle again.
/// </para>
/// </remarks>
internal sealed class LogMerger
{
    /// <summary>Records an lblk gathers before it is merged whatever the log's fill: a load applies them all.</summary>
    public const int MaxRecordsPerLblk = 32;

    /// <summary>
    /// The fill from which the oldest lblks are merged: the fuller the log, the more records a merge finds on its lblk
    /// (under uniform random writes, about the records the log holds over the lblks written), so the fewer compressions
    /// per write; what is left is room for the writes that arrive while a round of merges runs.
    /// </summary>
    private const double MergeFrom = 0.75;

    private bool IsFull => _log.Used >= _log.Bytes * MergeFrom;

    /// <summary>No record appended for the idle delay (the flush delay).</summary>
    private bool IsIdle => Environment.TickCount64 - Interlocked.Read(ref _lastAppend) >= (long)_idleDelay.TotalMilliseconds;

    /// <summary>
    /// No write of any kind for the idle delay (an append is a write too): recompression waits for that, so as not to slow a
    /// copy of whole lblks.
    /// </summary>
    private bool IsQuiet => Environment.TickCount64 - _admission.LastWrite >= (long)_idleDelay.TotalMilliseconds;

    private readonly WriteLog _log;
    private readonly WriteAdmission _admission;
    private readonly LblkIo _io;
    private readonly CheckpointPipeline _pipeline;
    private readonly DamageLog _damage;
    private readonly Func<LogTail, CancellationToken, ValueTask> _writeTail;
    private readonly TimeSpan _idleDelay;
    private readonly int _batch;
    private readonly int _closingBatch;
    private readonly int _parallelism;
    private readonly EngineCounters _counters;
    private readonly SemaphoreSlim _kick = new(0, 1);
    private readonly CancellationTokenSource _stop = new();
    private Task? _loop;
    private long _lastAppend = Environment.TickCount64;

    /// <summary>
    /// lblks merged by a round whose checkpoint has not published them yet, with the seq of the oldest record each had
    /// then: while that record is still pending, merging the lblk again would only write the same contents twice.
    /// Used by the loop alone, and by the close's merges after it stopped.
    /// </summary>
    private readonly Dictionary<ulong, ulong> _merging = [];
    private volatile Exception? _stuck;

    public LogMerger(WriteLog log, WriteAdmission admission, LblkIo io, CheckpointPipeline pipeline, DamageLog damage,
        Func<LogTail, CancellationToken, ValueTask> writeTail, TimeSpan idleDelay, int batch, int closingBatch, int parallelism, EngineCounters counters)
    {
        _counters = counters;
        _closingBatch = Math.Max(1, closingBatch);
        _log = log;
        _admission = admission;
        _io = io;
        _pipeline = pipeline;
        _damage = damage;
        _writeTail = writeTail;
        _idleDelay = idleDelay;
        _batch = Math.Max(1, batch);
        _parallelism = Math.Max(1, parallelism);
    }

    /// <summary>Why the log cannot make room (no space to merge into), while that lasts; writers waiting for room then fail with it.</summary>
    public Exception? Stuck => _stuck;

    public void Start() => _loop = Task.Run(LoopAsync);

    public async ValueTask StopAsync()
    {
        _stop.Cancel();
        if (_loop is not null)
            await _loop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>After an append that left <paramref name="pending"/> records on its lblk: kicks a merge when the log is full enough or the lblk has gathered enough.</summary>
    public void Appended(int pending)
    {
        Interlocked.Exchange(ref _lastAppend, Environment.TickCount64);
        if (pending >= MaxRecordsPerLblk || IsFull)
            Kick();
    }

    /// <summary>
    /// A writer waits for room in the log (<see cref="WriteLog.WritersWaiting"/>): the oldest lblks are merged however full
    /// the log is, round after round while it waits.
    /// </summary>
    public void WantRoom() => Kick();

    private void Kick()
    {
        try
        {
            if (_kick.CurrentCount == 0)
                _kick.Release();
        }
        catch (SemaphoreFullException)
        {
        }
    }

    /// <summary>
    /// How long a clean close spends recompressing the lblks stored with the fast codec: the set is not kept in the image, so
    /// those left stay as they are after a restart. About a second a GiB of them on this machine, so small devices finish.
    /// </summary>
    private static readonly TimeSpan CloseRecompression = TimeSpan.FromSeconds(5);

    /// <summary>
    /// At a clean close: merges every record it can and waits for the tail to pass them, then recompresses the lblks stored
    /// with the fast codec for up to <see cref="CloseRecompression"/>. Records of lblks that do not fit in the space left stay
    /// in the log (durable, read at the next open) and are named in the log; returns how many lblks.
    /// </summary>
    public async ValueTask<int> MergeAllAsync(CancellationToken cancellationToken)
    {
        while (_log.PendingLblks > 0)
        {
            int before = _log.PendingLblks;
            // The write-back scheduler has stopped: merge no more at once than the cache takes without holding writers
            // back, after writing back what is dirty, so that no merge waits for a write-back nothing would start.
            await _pipeline.CheckpointAsync(_pipeline.Started, cancellationToken).ConfigureAwait(false);
            try
            {
                await MergeRoundAsync(_log.OldestLblks(_closingBatch), fast: false, cancellationToken).ConfigureAwait(false);
            }
            catch (OutOfSpaceException)
            {
            }
            await _pipeline.CheckpointAsync(_pipeline.Started, cancellationToken).ConfigureAwait(false);
            if (_log.PendingLblks >= before)
            {
                _damage.Log($"{_log.PendingLblks} lblk(s) keep records in the write log for want of space to merge them; they are read from the log, and merge once space is freed");
                return _log.PendingLblks;
            }
        }
        long start = Stopwatch.GetTimestamp();
        while (_io.FastStoredCount > 0 && Stopwatch.GetElapsedTime(start) < CloseRecompression)
        {
            // As the merges above: one cache's worth a round, written back before the next.
            await RecompressRoundAsync(_closingBatch, cancellationToken).ConfigureAwait(false);
            await _pipeline.CheckpointAsync(_pipeline.Started, cancellationToken).ConfigureAwait(false);
        }
        if (_io.FastStoredCount is > 0 and int left)
            _damage.Log($"{left} lblk(s) written back with the fast codec under write pressure keep that form, a little larger than the image's compression makes them, until written again: the device was not idle long enough to recompress them");
        return 0;
    }

    private async Task LoopAsync()
    {
        var token = _stop.Token;
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(_idleDelay.TotalMilliseconds / 4, 10, 1000));
        while (!token.IsCancellationRequested)
        {
            try
            {
                await _kick.WaitAsync(tick, token).ConfigureAwait(false);
                if (_pipeline.Failed is not null || _log.Failed is not null)
                    return;
                var (lblks, oldest, fast) = Choose();
                if (lblks.Count == 0)
                {
                    // Every lblk left to merge waits for its publication: wait for it, rather than for the next tick.
                    if (oldest && _merging.Count > 0)
                    {
                        await _pipeline.CheckpointAsync(_pipeline.Started, token).ConfigureAwait(false);
                        Kick();
                    }
                    else if (_log.PendingLblks == 0 && IsQuiet && _io.FastStoredCount > 0)
                    {
                        await RecompressRoundAsync(_batch, token).ConfigureAwait(false);
                        await _pipeline.CheckpointAsync(_pipeline.Started, token, waitForCommit: false).ConfigureAwait(false);
                        Kick();
                    }
                    continue;
                }
                await MergeRoundAsync(lblks, fast, token).ConfigureAwait(false);
                _stuck = null;
                // The round's lblks are written back now; their publication and commit, which move the tail, go on behind.
                await _pipeline.CheckpointAsync(_pipeline.Started, token, waitForCommit: false).ConfigureAwait(false);
                // More to do at once while the log stays that full, or while writes have stopped: reads meanwhile find their
                // lblks merged the sooner, rather than applying records round after round.
                if (IsFull || (_log.PendingLblks > 0 && IsIdle))
                    Kick();
            }
            catch (OperationCanceledException) when (token.IsCancellationRequested)
            {
                return;
            }
            catch (OutOfSpaceException e)
            {
                // Nothing could be merged for want of space: writers waiting for room learn why.
                _stuck = e;
                _log.WakeWaiters();
            }
            catch (Exception e)
            {
                // The pipeline's latch holds the cause of a failed checkpoint; anything else stops merging too, and writers
                // waiting for room in the log must learn of it rather than wait for ever.
                _stuck = _pipeline.Failed ?? _log.Failed ?? e;
                _log.WakeWaiters();
                return;
            }
        }
    }

    /// <summary>
    /// What to merge now: the oldest lblks when the log is full enough, a writer waits for room or writes have stopped
    /// (then <c>Oldest</c>), else lblks with many records; <c>Fast</c> under pressure, in the first two cases.
    /// </summary>
    private (List<(ulong Lblk, ulong Seq)> Lblks, bool Oldest, bool Fast) Choose()
    {
        // Published since they were merged: their oldest record then is no longer pending.
        foreach (var (lblk, seq) in _merging)
        {
            if (_log.OldestPending(lblk) != seq)
                _merging.Remove(lblk);
        }
        if (_log.PendingLblks == 0)
            return ([], false, false);
        // While a writer waits for room, every round frees the oldest records, not only the one its request kicked: that
        // round may have found every oldest lblk awaiting its publication, and a record can need more room than the log has
        // below the fill from which it merges on its own.
        bool pressure = _log.WritersWaiting || IsFull;
        if (pressure || IsIdle)
            return (_log.OldestLblks(_batch, _merging), true, pressure);
        return (_log.LblksWithRecords(MaxRecordsPerLblk, _batch, _merging), false, false);
    }

    /// <summary>Merges <paramref name="lblks"/>, and notes each merged in <see cref="_merging"/>.</summary>
    private async Task MergeRoundAsync(List<(ulong Lblk, ulong Seq)> lblks, bool fast, CancellationToken cancellationToken)
    {
        OutOfSpaceException? full = null;
        var done = new System.Collections.Concurrent.ConcurrentQueue<(ulong, ulong)>();
        await Parallel.ForEachAsync(lblks, new ParallelOptions { MaxDegreeOfParallelism = _parallelism, CancellationToken = cancellationToken },
            async (pick, token) =>
            {
                ulong lblk = pick.Lblk;
                try
                {
                    await _admission.MergeAsync(lblk, fast, token).ConfigureAwait(false);
                    _counters.CountMerge();
                    done.Enqueue(pick);
                }
                catch (LblkCorruptException)
                {
                    // The lblk reads as an I/O error whatever its records say (the damage log named it): its records
                    // cannot be merged, and must not hold the log's tail for ever.
                    await DropAsync(lblk, token).ConfigureAwait(false);
                }
                catch (OutOfSpaceException e)
                {
                    full = e;
                }
            }).ConfigureAwait(false);
        foreach (var (lblk, seq) in done)
            _merging[lblk] = seq;
        if (done.IsEmpty && full is not null)
            throw full;
    }

    /// <summary>
    /// Marks a batch of the lblks stored with the fast codec dirty, to be written back with the device's. One that cannot be
    /// (damaged, or no space for its write-back now) stays as it is stored, readable.
    /// </summary>
    private async Task RecompressRoundAsync(int batch, CancellationToken cancellationToken)
    {
        await Parallel.ForEachAsync(_io.TakeFastStored(batch), new ParallelOptions { MaxDegreeOfParallelism = _parallelism, CancellationToken = cancellationToken },
            async (lblk, token) =>
            {
                try
                {
                    await _admission.RecompressAsync(lblk, token).ConfigureAwait(false);
                    _counters.CountRecompression();
                }
                catch (Exception e) when (e is LblkCorruptException or OutOfSpaceException)
                {
                }
            }).ConfigureAwait(false);
    }

    private async ValueTask DropAsync(ulong lblk, CancellationToken cancellationToken)
    {
        var dropped = new List<ulong>();
        _log.TakeMerged(lblk, ulong.MaxValue, dropped);
        if (dropped.Count == 0)
            return;
        _damage.Log($"lblk {lblk}: {dropped.Count} log record(s) written to it since it was damaged are dropped; it reads as an I/O error until written whole or repaired (cbd check --repair)");
        await _log.RetireAsync(dropped, _writeTail, cancellationToken).ConfigureAwait(false);
    }
}
