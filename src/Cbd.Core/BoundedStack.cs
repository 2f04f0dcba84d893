using System.Collections.Concurrent;

namespace Cbd.Core;

/// <summary>
/// A thread-safe stack of things kept for reuse, holding at most <paramref name="capacity"/> of them: the
/// store behind the engine's pools (lblk buffers, compression contexts).
/// </summary>
internal sealed class BoundedStack<T>(int capacity)
{
    private readonly ConcurrentStack<T> _items = new();
    // ConcurrentStack.Count walks the whole stack: the count is kept apart.
    private int _count;

    public bool TryPop(out T item)
    {
        if (!_items.TryPop(out item!))
            return false;
        Interlocked.Decrement(ref _count);
        return true;
    }

    /// <summary>Keeps <paramref name="item"/>, or returns false when the stack is full.</summary>
    public bool TryPush(T item)
    {
        if (Interlocked.Increment(ref _count) > capacity)
        {
            Interlocked.Decrement(ref _count);
            return false;
        }
        _items.Push(item);
        return true;
    }
}
