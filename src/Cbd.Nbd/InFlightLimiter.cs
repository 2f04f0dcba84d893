namespace Cbd.Nbd;

/// <summary>
/// Counts the requests and payload bytes of one connection that are in flight, and makes the reader wait
/// for room. Only the connection's reader acquires and waits, one call at a time, so one waiter suffices;
/// any request task may release. Payload bytes also count against a <see cref="PayloadBudget"/> shared by
/// every connection of the server, so that many clients together cannot hold more than it either.
/// </summary>
internal sealed class InFlightLimiter(int maxRequests, long maxBytes, PayloadBudget? shared = null)
{
    private readonly Lock _lock = new();
    private int _requests;
    private long _bytes;
    private TaskCompletionSource? _waiter;

    /// <summary>Waits until one more request of <paramref name="bytes"/> fits, then counts it.</summary>
    public async ValueTask AcquireAsync(long bytes, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                // An idle connection admits any single request, however large, so the byte caps can never
                // deadlock a request that is within the protocol's own length limit.
                bool idle = _requests == 0;
                Task? budgetWait = null;
                if (_requests < maxRequests && (idle || _bytes + bytes <= maxBytes)
                    && (shared is null || shared.TryTake(bytes, force: idle, out budgetWait)))
                {
                    _requests++;
                    _bytes += bytes;
                    return;
                }
                if (budgetWait is not null)
                {
                    wait = budgetWait;
                }
                else
                {
                    _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                    wait = _waiter.Task;
                }
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
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
        shared?.Release(bytes);
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

/// <summary>Payload bytes in flight over all connections of a server, up to a limit.</summary>
internal sealed class PayloadBudget(long maxBytes)
{
    private readonly Lock _lock = new();
    private long _bytes;
    private TaskCompletionSource? _waiter;

    /// <summary>
    /// Takes <paramref name="bytes"/> if they fit, or regardless with <paramref name="force"/> (a connection
    /// with nothing in flight must always be able to make progress); otherwise returns false and a task that
    /// completes when bytes are next released.
    /// </summary>
    public bool TryTake(long bytes, bool force, out Task? wait)
    {
        lock (_lock)
        {
            if (force || _bytes + bytes <= maxBytes)
            {
                _bytes += bytes;
                wait = null;
                return true;
            }
            _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            wait = _waiter.Task;
            return false;
        }
    }

    public void Release(long bytes)
    {
        TaskCompletionSource? waiter;
        lock (_lock)
        {
            _bytes -= bytes;
            waiter = _waiter;
            _waiter = null;
        }
        waiter?.TrySetResult();
    }
}
