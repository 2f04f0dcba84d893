namespace Cbd.Nbd;

/// <summary>
/// A thread of one connection that serves part of each burst of small READs the reader finds in hand, while the
/// reader serves the rest itself: two cores on one connection's reads, for one wake-up per burst instead of a
/// thread-pool hand-off per read. Only for a device whose reads never hold their thread waiting for a disk
/// (<see cref="Cbd.Core.Engine.IBlockDevice.ReadsWithoutWaiting"/>): a read that must wait completes on the pool,
/// and the lane goes on with the next.
/// </summary>
/// <remarks>
/// The thread starts with the first burst and ends once <see cref="Complete"/> was called and everything posted
/// before it was started. Posted by the connection's reader alone.
/// </remarks>
internal sealed class ReadLane<T>(string name, Action<T> serve)
{
    private readonly Lock _lock = new();
    private readonly SemaphoreSlim _wake = new(0);
    private List<T> _posted = [];
    private List<T> _serving = [];
    private bool _completed;
    private Thread? _thread;

    /// <summary>Hands <paramref name="items"/> to the lane, which serves them in order.</summary>
    public void Post(ReadOnlySpan<T> items)
    {
        if (_thread is null)
        {
            _thread = new Thread(Run) { IsBackground = true, Name = name };
            _thread.Start();
        }
        lock (_lock)
        {
            _posted.AddRange(items);
        }
        _wake.Release();
    }

    /// <summary>Lets the thread end once it has served what was posted; nothing may be posted after.</summary>
    public void Complete()
    {
        lock (_lock)
        {
            _completed = true;
        }
        _wake.Release();
    }

    /// <summary>Waits for the thread to end (after <see cref="Complete"/>); for tests.</summary>
    internal bool Join(TimeSpan timeout) => _thread?.Join(timeout) ?? true;

    private void Run()
    {
        while (true)
        {
            _wake.Wait();
            bool completed;
            lock (_lock)
            {
                (_serving, _posted) = (_posted, _serving);
                completed = _completed;
            }
            foreach (T item in _serving)
            {
                serve(item);
            }
            _serving.Clear();
            if (completed)
            {
                // Everything posted came before Complete, under the same lock: all of it was in this batch.
                return;
            }
        }
    }
}
