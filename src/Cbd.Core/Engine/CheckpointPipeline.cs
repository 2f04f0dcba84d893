using System.Diagnostics;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>One lblk written back by step 2: the version written, and the entry that now describes it.</summary>
internal sealed record WrittenBack(CachedLblk Entry, long Version, LblkAlloc Alloc);

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

    private readonly SemaphoreSlim _checkpointLock = new(1, 1);
    /// <summary>The commit of the last checkpoint; each commit waits for the one before it.</summary>
    private Task _commit = Task.CompletedTask;
    /// <summary>The publication of the last checkpoint; each waits for the one before it.</summary>
    private Task<List<ulong>> _publish = Task.FromResult(new List<ulong>());
    private Task _olderPublish = Task.CompletedTask;
    private long _checkpointsStarted;
    private long _checkpointsCompleted;
    /// <summary>Completed and replaced whenever a checkpoint publishes or commits (or fails): progress, not completion.</summary>
    private TaskCompletionSource _progress = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile Exception? _failed;

    public CheckpointPipeline(IBackingStore store, LbatCache lbat, Allocator alloc, PblkReleaser releaser, LblkCache cache, LblkIo io, UsedCounts used,
        DeviceRecovery recovery, DamageLog damage, int parallelism, CheckpointFault fault, EngineCounters counters)
    {
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
            var publish = PublishAsync(_publish, batch, results);
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

    /// <summary>
    /// Step 3, then the first half of step 4, after the previous checkpoint's: fsync, so the data is durable
    /// before any entry points at it; then publish the new lblk_alloc entries (in the lbat cache) and mark the
    /// lblks clean. Returns the pblks the new entries replaced.
    /// </summary>
    private async Task<List<ulong>> PublishAsync(Task previous, List<CachedLblk> batch, WrittenBack?[] results)
    {
        var ct = CancellationToken.None;
        var freed = new List<ulong>();
        // A failure of the stage before is in _failed, checked next.
        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            if (batch.Count == 0)
                return freed;
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
                freed.AddRange(old.Pblks);
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
                        _cache.MarkClean(entry);
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
            _cache.RestartDirtyClock();
            return freed;
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
    private async Task CommitAsync(Task previous, Task<List<ulong>> publish, long number, long started)
    {
        var ct = CancellationToken.None;
        // A failure of either stage waited for is in _failed, checked next.
        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await ((Task)publish).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            var freed = publish.Result;
            if (_fault == CheckpointFault.FreeBeforeCommitFsync)
            {
                await _alloc.FreeAsync(freed, ct).ConfigureAwait(false);
                freed = [];
            }
            if (_fault == CheckpointFault.PunchBeforeCommitFsync)
                await _releaser.PunchAsync(freed, ct).ConfigureAwait(false);
            if (freed.Count > 0 || _lbat.HasDirty)
            {
                await _lbat.WriteDirtyAsync(ct).ConfigureAwait(false);
                await _store.FlushAsync(ct).ConfigureAwait(false);
                await _releaser.ReleaseAsync(freed, ct).ConfigureAwait(false);
            }
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
