namespace Cbd.Core.Engine;

/// <summary>
/// Buffers of exactly one lblk, on the pinned object heap. Cached lblks live for seconds to hours: as
/// ordinary arrays they would be promoted and copied by every compacting GC, which costs more than the
/// compression itself. Pinned buffers never move, and also suit the backing store's I/O.
/// </summary>
internal sealed class LblkBufferPool(int lblkSize, int maxRetained)
{
    private readonly BoundedStack<byte[]> _free = new(maxRetained);

    public byte[] Rent() => _free.TryPop(out var buffer) ? buffer : GC.AllocateUninitializedArray<byte>(lblkSize, pinned: true);

    public void Return(byte[] buffer)
    {
        Invariant.Check(buffer.Length == lblkSize, "a buffer of another size returned to the lblk pool");
        _free.TryPush(buffer);
    }
}
