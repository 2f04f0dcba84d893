namespace Cbd.Nbd;

/// <summary>
/// Counts the requests and payload bytes of one connection that are in flight, and makes the reader wait
/// for room. Only the connection's reader acquires and waits, one call at a time, so one waiter suffices;
/// any request task may release. The server-wide bound on payload memory is the <see cref="PayloadPool"/>'s
/// budget, which each request meets when it rents its buffer.
/// </summary>
internal sealed class InFlightLimiter(int maxRequests, long maxBytes)
{
    private readonly Lock _lock = new();
    private int _requests;
    private long _bytes;
    private TaskCompletionSource? _waiter;
    private int _readerWaiting;

    /// <summary>True while the reader waits in <see cref="AcquireAsync"/> for room.</summary>
    public bool IsReaderWaiting => Volatile.Read(ref _readerWaiting) != 0;

    /// <summary>Waits until one more request of <paramref name="bytes"/> fits, then counts it.</summary>
    public async ValueTask AcquireAsync(long bytes, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                // An idle connection admits any single request, however large, so the byte cap can never
                // deadlock a request that is within the protocol's own length limit.
                if (_requests < maxRequests && (_requests == 0 || _bytes + bytes <= maxBytes))
                {
                    _requests++;
                    _bytes += bytes;
                    return;
                }
                _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
                _readerWaiting = 1;
            }
            try
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                Volatile.Write(ref _readerWaiting, 0);
            }
        }
    }

    public void Release(long bytes)
    {
        TaskCompletionSource? waiter;
        lock (_lock)
        {
            _requests--;
            _bytes -= bytes;
            waiter = _waiter;
            _waiter = null;
        }
        waiter?.TrySetResult();
    }

    /// <summary>Completes when no request is in flight.</summary>
    public async Task WaitForIdleAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (_requests == 0)
                {
                    return;
                }
                _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }
}
