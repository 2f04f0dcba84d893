namespace Cbd.Core.Engine;

/// <summary>One lblk's part of a byte range: the lblk, where the part starts in it, and where in the range.</summary>
/// <param name="Lblk">The lblk the piece lies in.</param>
/// <param name="Within">Offset of the piece inside the lblk.</param>
/// <param name="Length">Bytes in the piece; never past the end of the lblk.</param>
/// <param name="Start">Offset of the piece from the start of the range (where it lies in the caller's buffer).</param>
internal readonly record struct LblkPiece(ulong Lblk, int Within, int Length, long Start)
{
    /// <summary>True when the piece covers its whole lblk.</summary>
    public bool IsWhole(int lblkSize) => Length == lblkSize;
}

/// <summary>
/// Splits the byte range [offset, offset + length) into <see cref="LblkPiece"/>s, in order, one per lblk it
/// touches: the one loop that every request over a range (read, write, zeroing, prefetch, block status)
/// walks. A struct enumerator, so that <c>foreach</c> over it allocates nothing.
/// </summary>
internal struct LblkRange(long offset, long length, int lblkSize)
{
    private long _offset = offset;
    private long _remaining = length;
    private long _start;

    public readonly LblkRange GetEnumerator() => this;

    public LblkPiece Current { get; private set; }

    public bool MoveNext()
    {
        if (_remaining <= 0)
            return false;
        int within = (int)(_offset % lblkSize);
        int n = (int)Math.Min(_remaining, lblkSize - within);
        Current = new LblkPiece((ulong)(_offset / lblkSize), within, n, _start);
        _offset += n;
        _remaining -= n;
        _start += n;
        return true;
    }
}
