namespace Cbd.Core.Engine;

/// <summary>
/// Decides when a checkpoint starts: on a timer once an lblk has been dirty for the flush delay, under memory
/// pressure once the dirty lblks reach the cache's write-back threshold (<see cref="Kick"/>, from the writers'
/// throttle), and on a flush. The checkpoint itself is <see cref="CheckpointPipeline"/>'s. When a tick finds nothing
/// dirty and nothing waiting in the write log (<paramref name="logMerged"/>), it has the freed pblks released to the
/// backing store (<see cref="PblkReleaser"/>): small writes that go to the log leave the cache clean while they flow,
/// so a clean cache alone does not mean the device is idle.
/// </summary>
internal sealed class WriteBackScheduler(LblkCache cache, CheckpointPipeline pipeline, TimeSpan flushDelay, Func<bool> logMerged)
{
    private readonly LblkCache _cache = cache;
    private readonly CheckpointPipeline _pipeline = pipeline;
    private readonly TimeSpan _flushDelay = flushDelay;
    private readonly SemaphoreSlim _kick = new(0, 1);
    private readonly CancellationTokenSource _stop = new();
    private Task? _writeBackLoop;

    /// <summary>Starts the write-back loop, on a device open for write.</summary>
    public void Start() => _writeBackLoop = Task.Run(WriteBackLoopAsync);

    /// <summary>Stops the loop, at close; the close's own checkpoint follows.</summary>
    public async ValueTask StopAsync()
    {
        _stop.Cancel();
        if (_writeBackLoop is not null)
            await _writeBackLoop.ConfigureAwait(false);
    }

    /// <summary>A flush: a checkpoint that covers every write completed before it, done when they are durable.</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken) => _pipeline.CheckpointAsync(_pipeline.Started, cancellationToken);

    private async Task WriteBackLoopAsync()
    {
        var token = _stop.Token;
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(_flushDelay.TotalMilliseconds / 4, 10, 1000));
        bool again = false;
        while (!token.IsCancellationRequested)
        {
            try
            {
                if (!again)
                    await _kick.WaitAsync(tick, token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            bool due = _cache.IsWriteBackDue(_flushDelay);
            again = false;
            if (!due)
            {
                // Idle: nothing waits for write-back, so freed pblks go back to the backing store now.
                if (_cache.DirtyCount == 0 && logMerged())
                {
                    try
                    {
                        await _pipeline.ReleaseFreedAsync().ConfigureAwait(false);
                    }
                    catch (Exception) when (!token.IsCancellationRequested)
                    {
                        // Only the pblks' release failed; the data is durable and the allocator whole.
                    }
                }
                continue;
            }
            try
            {
                // Publication and commit go on behind: the next checkpoint may compress meanwhile.
                await _pipeline.CheckpointAsync(_pipeline.Started, token, waitForCommit: false).ConfigureAwait(false);
                again = _cache.DirtyCount >= _cache.WriteBackThreshold;
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception)
            {
                return; // the pipeline's latch holds the cause; writes and flushes now report it
            }
        }
    }

    /// <summary>Memory pressure: starts write-back now rather than at the next tick.</summary>
    public void Kick()
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
}
