using System.Collections.Concurrent;

namespace Cbd.Core.Engine;

/// <summary>
/// Buffers of exactly one lblk, on the pinned object heap. Cached lblks live for seconds to hours: as
/// ordinary arrays they would be promoted and copied by every compacting GC, which costs more than the
/// compression itself. Pinned buffers never move, and also suit the backing store's I/O.
/// </summary>
internal sealed class LblkBufferPool(int lblkSize, int maxRetained)
{
    private readonly ConcurrentStack<byte[]> _free = new();
    // ConcurrentStack.Count walks the whole stack: the pool keeps its own count.
    private int _retained;

    public int LblkSize => lblkSize;

    public byte[] Rent()
    {
        if (_free.TryPop(out var buffer))
        {
            Interlocked.Decrement(ref _retained);
            return buffer;
        }
        return GC.AllocateUninitializedArray<byte>(lblkSize, pinned: true);
    }

    public void Return(byte[] buffer)
    {
        Invariant.Check(buffer.Length == lblkSize, "a buffer of another size returned to the lblk pool");
        if (Interlocked.Increment(ref _retained) <= maxRetained)
            _free.Push(buffer);
        else
            Interlocked.Decrement(ref _retained);
    }
}
