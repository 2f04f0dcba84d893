using System.Diagnostics;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// One lblk written back by step 2: the version written, the entry that now describes it, and the seq below which its
/// log records are in it (<see cref="CachedLblk.LogApplied"/>).
/// </summary>
/// <see cref="Kept"/>: the pblks of the entry it replaces that the new one keeps (a patched lblk's base), else empty.
internal sealed record WrittenBack(CachedLblk Entry, long Version, LblkAlloc Alloc, ulong LogApplied, ulong[]? Kept = null);

/// <summary>
/// The checkpoint protocol: the write order of docs/FORMAT.md, "Consistency", whose step numbers it uses.
/// Step 1 (DIRTY set at open) and the header write of step 7 are <see cref="CompressedDevice"/>'s.
/// </summary>
/// <remarks>
/// <para>
/// A checkpoint runs in three stages: <see cref="WriteDataAsync"/> (step 2: compress the dirty lblks and
/// write them to free pblks), <see cref="PublishAsync"/> (step 3: fsync; the first half of step 4: publish
/// the new entries in memory and mark the lblks clean) and <see cref="CommitAsync"/> (the second half of
/// step 4: write the changed lbat pblks; step 5: fsync; step 6: free the replaced pblks). One checkpoint
/// compresses at a time (the checkpoint lock), while the ones before may still be publishing and committing;
/// each stage of a checkpoint waits for the same stage of the one before. Numbers let a flush skip work a
/// checkpoint started after its writes has covered.
/// </para>
/// <para>
/// The failure latch: the first failure of any stage is kept in <see cref="Failed"/>; from then on every
/// checkpoint, write and flush reports it, and the image stays marked dirty for recovery at the next open.
/// <see cref="DeviceOptions.Fault"/> breaks the order on purpose, for the tests that show they catch it.
/// </para>
/// </remarks>
internal sealed class CheckpointPipeline
{
    private readonly IBackingStore _store;
    private readonly LbatCache _lbat;
    private readonly Allocator _alloc;
    private readonly PblkReleaser _releaser;
    private readonly LblkCache _cache;
    private readonly LblkIo _io;
    private readonly UsedCounts _used;
    private readonly DeviceRecovery _recovery;
    private readonly DamageLog _damage;
    private readonly int _parallelism;
    private readonly CheckpointFault _fault;
    private readonly EngineCounters _counters;
    private readonly WriteLog? _log;
    private readonly Func<LogTail, CancellationToken, ValueTask> _writeLogTail;

    private readonly SemaphoreSlim _checkpointLock = new(1, 1);
    /// <summary>The commit of the last checkpoint; each commit waits for the one before it.</summary>
    private Task _commit = Task.CompletedTask;
    /// <summary>The publication of the last checkpoint; each waits for the one before it.</summary>
    private Task<Published> _publish = Task.FromResult(new Published([], []));
    private Task _olderPublish = Task.CompletedTask;
    private long _checkpointsStarted;
    private long _checkpointsCompleted;
    /// <summary>Completed and replaced whenever a checkpoint publishes or commits (or fails): progress, not completion.</summary>
    private TaskCompletionSource _progress = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile Exception? _failed;
    /// <summary>lblks published with a change the log does not have, until the commit that makes them durable (its number).</summary>
    private readonly Dictionary<ulong, long> _unloggedHolds = new();

    public CheckpointPipeline(IBackingStore store, LbatCache lbat, Allocator alloc, PblkReleaser releaser, LblkCache cache, LblkIo io, UsedCounts used,
        DeviceRecovery recovery, DamageLog damage, int parallelism, CheckpointFault fault, EngineCounters counters,
        WriteLog? log, Func<LogTail, CancellationToken, ValueTask> writeLogTail)
    {
        _log = log;
        _writeLogTail = writeLogTail;
        _counters = counters;
        _store = store;
        _lbat = lbat;
        _alloc = alloc;
        _releaser = releaser;
        _cache = cache;
        _io = io;
        _used = used;
        _recovery = recovery;
        _damage = damage;
        _parallelism = parallelism;
        _fault = fault;
    }

    /// <summary>The number of the last checkpoint started: a checkpoint numbered above it covers every write made so far.</summary>
    public long Started => Interlocked.Read(ref _checkpointsStarted);

    /// <summary>The number of the last checkpoint committed.</summary>
    public long Completed => Interlocked.Read(ref _checkpointsCompleted);

    /// <summary>The first failure of a checkpoint, if any (the failure latch).</summary>
    public Exception? Failed => _failed;

    /// <summary>Completes at the next progress of a checkpoint (a publication or a commit, done or failed). Take it before looking at what it changes.</summary>
    public Task Progress => Volatile.Read(ref _progress).Task;

    /// <summary>The commit of the last checkpoint.</summary>
    public Task CommitFinished => _commit;

    /// <summary>
    /// True while the lblk's published entry holds a change that is not in the write log and not yet durable: a record
    /// appended now could be replayed over the entry before it, so the lblk's changes go to the cache until the commit.
    /// </summary>
    public bool HoldsUnlogged(ulong lblk)
    {
        lock (_unloggedHolds)
            return _unloggedHolds.ContainsKey(lblk);
    }

    /// <summary>The ordering bug injected for tests, if any.</summary>
    public CheckpointFault Fault => _fault;

    public void ThrowIfFailed()
    {
        if (_failed is { } failed)
            ThrowHelper.Failed(failed);
    }

    /// <summary>
    /// The checkpoint of a clean close, before <see cref="CompressedDevice"/> clears DIRTY (step 7): writes back
    /// everything, waits for every commit, then writes the pbats and fsyncs.
    /// </summary>
    public async ValueTask CloseAsync()
    {
        await CheckpointAsync(Started, CancellationToken.None).ConfigureAwait(false);
        await _commit.ConfigureAwait(false);
        await _releaser.ReleaseNotedAsync().ConfigureAwait(false);
        await _alloc.WriteDirtyAsync(CancellationToken.None).ConfigureAwait(false);
        await _store.FlushAsync().ConfigureAwait(false);
    }

    /// <summary>When the device is idle: the pblks freed so far that are still free go back to the backing store (<see cref="PblkReleaser"/>).</summary>
    public ValueTask ReleaseFreedAsync() => _releaser.ReleaseNotedAsync();

    /// <summary>
    /// Runs a checkpoint: writes back every dirty lblk and makes it durable. Skipped when a checkpoint numbered above
    /// <paramref name="coveredAfter"/> (so started after the caller's writes) has completed meanwhile.
    /// With <paramref name="waitForCommit"/> false it returns once the lblks are compressed and written
    /// (step 2), and the rest goes on behind while the next checkpoint compresses: its fsync and publication
    /// (<see cref="PublishAsync"/>), then its commit (<see cref="CommitAsync"/>). Each stage of a checkpoint
    /// waits for the same stage of the one before, so entries are published and committed in order.
    /// </summary>
    public async ValueTask CheckpointAsync(long coveredAfter, CancellationToken cancellationToken, bool waitForCommit = true)
    {
        Task commit;
        await _checkpointLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            if (Interlocked.Read(ref _checkpointsCompleted) > coveredAfter)
                return;
            // Nothing is allocated or freed before the pbats were checked against every lbat.
            if (!_recovery.ClaimsApplied.IsCompletedSuccessfully)
            {
                try
                {
                    await _recovery.ClaimsApplied.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    _failed ??= e;
                    SignalProgress();
                    throw;
                }
            }
            // One publication at most goes on behind this checkpoint's compression: a deeper pipeline would
            // only find the lblks still being written back by the checkpoints before.
            // Its failure, if any, is in _failed, which the stages below check.
            await _olderPublish.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            long number = Interlocked.Increment(ref _checkpointsStarted);
            long started = Stopwatch.GetTimestamp();
            var (batch, results) = await WriteDataAsync().ConfigureAwait(false);
            var publish = PublishAsync(_publish, batch, results, number);
            _olderPublish = _publish;
            _publish = publish;
            commit = CommitAsync(_commit, publish, number, started);
            _commit = commit;
        }
        finally
        {
            _checkpointLock.Release();
        }
        if (waitForCommit)
            await commit.ConfigureAwait(false);
    }

    /// <summary>
    /// Step 2: compress the dirty lblks and write them to free pblks (<see cref="LblkIo.WriteBackAsync"/>). The
    /// batch stays pinned until <see cref="PublishAsync"/>. An lblk an earlier checkpoint is still writing back,
    /// unchanged since, is left to it.
    /// </summary>
    private async Task<(List<CachedLblk> Batch, WrittenBack?[] Results)> WriteDataAsync()
    {
        var batch = _cache.PinDirtyForWriteBack();
        var results = new WrittenBack?[batch.Count];
        try
        {
            // Write-back runs to completion once started: cancelling half-way would strand reservations.
            await Parallel.ForAsync(0, batch.Count, new ParallelOptions { MaxDegreeOfParallelism = _parallelism },
                async (i, token) => results[i] = await _io.WriteBackAsync(batch[i], token).ConfigureAwait(false)).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // The image on disk is still consistent (nothing live was overwritten), but what is in
            // memory may not be: stop taking writes rather than risk them.
            _failed ??= e;
            _cache.Unpin(batch);
            // Writers held back by a full cache learn of the failure now: no publication will wake them.
            SignalProgress();
            throw;
        }
        return (batch, results);
    }

    /// <summary>What a publication hands its commit: the pblks the new entries replaced, and the log records they merged.</summary>
    private sealed record Published(List<ulong> Freed, List<ulong> Merged);

    /// <summary>
    /// Step 3, then the first half of step 4, after the previous checkpoint's: fsync, so the data is durable
    /// before any entry points at it (and, with a write log, every record the lblks were written back with: the fsync
    /// waits for them to be written, so that no durable entry holds a record a replay could stop short of); then
    /// publish the new lblk_alloc entries (in the lbat cache), mark the lblks clean, and take the records merged off
    /// their lblks. Returns the pblks the new entries replaced and the records merged.
    /// </summary>
    private async Task<Published> PublishAsync(Task previous, List<CachedLblk> batch, WrittenBack?[] results, long number)
    {
        var ct = CancellationToken.None;
        var freed = new List<ulong>();
        var merged = new List<ulong>();
        // A failure of the stage before is in _failed, checked next.
        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            if (batch.Count == 0)
                return new Published(freed, merged);
            ulong logApplied = 0;
            foreach (var result in results)
                logApplied = Math.Max(logApplied, result?.LogApplied ?? 0);
            if (_log is not null)
            {
                await _log.WaitCompletedAsync(logApplied).ConfigureAwait(false);
                _log.ThrowIfFailed();
            }
            if (_fault != CheckpointFault.PublishBeforeDataFsync)
                await _store.FlushAsync(ct).ConfigureAwait(false);

            foreach (var result in results)
            {
                if (result is null)
                    continue;
                LblkAlloc old;
                try
                {
                    old = await _lbat.ReadAsync(result.Entry.Lblk, ct).ConfigureAwait(false);
                }
                catch (InvalidDataException e)
                {
                    // The lblk was written whole over a damaged entry: the new entry repairs it. What the old
                    // one named is not freed, since those pblks may be another lblk's (they stay leaked).
                    old = LblkAlloc.Unallocated;
                    _damage.Log($"lblk {result.Entry.Lblk}: invalid lblk_alloc entry ({DamageLog.WithoutLblk(e.Message)}) replaced by the lblk's new contents; the pblks it named stay in use");
                }
                await _lbat.WriteAsync(result.Entry.Lblk, result.Alloc, ct).ConfigureAwait(false);
                // The entry now holds the lblk's records below LogApplied: a reload applies only the later ones.
                _log?.TakeMerged(result.Entry.Lblk, result.LogApplied, merged);
                // A patched entry keeps its base's pblks: only those the new entry no longer names are freed. It was made from
                // the entry published now (no other write-back of the lblk can come between), which must still name them.
                if (result.Kept is { } kept)
                {
                    foreach (ulong pblk in kept)
                        Invariant.Check(old.Pblks.Memory.Span.Contains(pblk), $"lblk {result.Entry.Lblk}: patched over pblk {pblk}, which its published entry no longer names");
                }
                foreach (ulong pblk in old.Pblks)
                {
                    if (!result.Alloc.Pblks.Memory.Span.Contains(pblk))
                        freed.Add(pblk);
                }
                Interlocked.Add(ref _used.Lblks, (result.Alloc.IsAllocated ? 1 : 0) - (old.IsAllocated ? 1 : 0));
                Interlocked.Add(ref _used.Pblks, result.Alloc.Pblks.Length - old.Pblks.Length);
            }
            if (_fault == CheckpointFault.PublishBeforeDataFsync)
                await _store.FlushAsync(ct).ConfigureAwait(false);
            // The entries are published in memory: an evicted lblk now reloads its new contents.
            foreach (var result in results)
            {
                if (result is null)
                    continue;
                var entry = result.Entry;
                await entry.Lock.WaitAsync(ct).ConfigureAwait(false);
                try
                {
                    if (entry.Version == result.Version)
                    {
                        if (entry.Unlogged)
                        {
                            lock (_unloggedHolds)
                                _unloggedHolds[entry.Lblk] = number;
                            entry.Unlogged = false;
                        }
                        _cache.MarkClean(entry);
                    }
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
            _cache.RestartDirtyClock();
            return new Published(freed, merged);
        }
        catch (Exception e)
        {
            _failed ??= e;
            throw;
        }
        finally
        {
            _cache.Unpin(batch);
            _cache.EvictIfNeeded();
            // Writers held back by a full cache may go on now: the entries written back are clean.
            SignalProgress();
        }
    }

    /// <summary>
    /// The commit, the last steps of checkpoint <paramref name="number"/>, after the one before it
    /// (<paramref name="previous"/>) and its own publication: the second half of step 4, write the changed
    /// lbat pblks; 5. fsync; 6. only now free the replaced pblks, since until step 5 a power cut would bring
    /// the old entries back, and they must still find their data. Entries a later checkpoint publishes
    /// meanwhile may go out with these lbat pblks: their data was made durable before they were published.
    /// </summary>
    private async Task CommitAsync(Task previous, Task<Published> publish, long number, long started)
    {
        var ct = CancellationToken.None;
        // A failure of either stage waited for is in _failed, checked next.
        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await ((Task)publish).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            var (freed, merged) = publish.Result;
            if (_fault == CheckpointFault.FreeBeforeCommitFsync)
            {
                await _alloc.FreeAsync(freed, ct).ConfigureAwait(false);
                freed = [];
            }
            if (_fault == CheckpointFault.PunchBeforeCommitFsync)
                await _releaser.PunchAsync(freed, ct).ConfigureAwait(false);
            if (_fault == CheckpointFault.RetireBeforeCommitFsync && _log is not null && merged.Count > 0)
            {
                await _log.RetireAsync(merged, _writeLogTail, ct).ConfigureAwait(false);
                merged = [];
            }
            if (freed.Count > 0 || _lbat.HasDirty)
            {
                await _lbat.WriteDirtyAsync(ct).ConfigureAwait(false);
                await _store.FlushAsync(ct).ConfigureAwait(false);
                await _releaser.ReleaseAsync(freed, ct).ConfigureAwait(false);
            }
            lock (_unloggedHolds)
            {
                List<ulong>? durable = null;
                foreach (var (lblk, holder) in _unloggedHolds)
                {
                    if (holder <= number)
                        (durable ??= new()).Add(lblk);
                }
                if (durable is not null)
                {
                    foreach (ulong lblk in durable)
                        _unloggedHolds.Remove(lblk);
                }
            }
            // The entries that merged these records are durable: the log's tail may pass them (written to the header).
            if (_log is not null && merged.Count > 0)
                await _log.RetireAsync(merged, _writeLogTail, ct).ConfigureAwait(false);
            Interlocked.Exchange(ref _checkpointsCompleted, number);
            _counters.Checkpoints.ObserveSince(started);
        }
        catch (Exception e)
        {
            _failed ??= e;
            throw;
        }
        finally
        {
            SignalProgress();
        }
    }


    /// <summary>Wakes writers waiting in <see cref="Progress"/> to look at the dirty count again.</summary>
    private void SignalProgress()
    {
        Interlocked.Exchange(ref _progress, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }
}
