namespace Cbd.Core.Engine;

/// <summary>
/// The stats the header keeps (lblk_used, pblk_used), as the engine counts them: taken from the header or the
/// lbats at open, changed by every publication. Fields, so that they can be read and added to with
/// <see cref="Interlocked"/>.
/// </summary>
internal sealed class UsedCounts(long lblks, long pblks)
{
    /// <summary>lblks with an allocated lblk_alloc entry.</summary>
    public long Lblks = lblks;

    /// <summary>Data pblks named by lblk_alloc entries.</summary>
    public long Pblks = pblks;
}
