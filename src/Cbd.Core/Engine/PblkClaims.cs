using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// What every lbat of the device claims: one bit per data pblk, the pblks claimed more than once, and
/// the lblks whose entries cannot be valid. The allocator trusts a pbat only after comparing it with
/// this, so that no damaged metadata can make it hand out a pblk that a live lblk still uses.
/// </summary>
/// <remarks>
/// An lblk's pblks may lie in any zone (allocation spills over when the home zone is full), so one
/// zone's pbat can only be judged against the claims of every lbat. An invalid entry still claims
/// every slot that names a data pblk: what it pointed at may be some lblk's data, and nothing tells
/// which slots were damaged.
/// </remarks>
internal sealed class PblkClaims
{
    private readonly Geometry _geometry;
    private readonly ulong[][] _zones;

    private PblkClaims(Geometry geometry)
    {
        _geometry = geometry;
        _zones = new ulong[geometry.NrZones][];
    }

    /// <summary>pblks claimed by two or more entries, or twice by one.</summary>
    public HashSet<ulong> ClaimedTwice { get; } = [];

    /// <summary>lblks whose entries are invalid, with the reason (a line that names the lblk).</summary>
    public List<(ulong Lblk, string Reason)> Invalid { get; } = [];

    /// <summary>Valid allocated entries.</summary>
    public long LblksUsed { get; private set; }

    /// <summary>pblks of the valid allocated entries (pblk_used as the checker counts it).</summary>
    public long PblksUsed { get; private set; }

    /// <summary>The zone's claims, one bit per data pblk as in its pbat; null when nothing in the zone is claimed.</summary>
    public ulong[]? Zone(uint zone) => _zones[zone];

    /// <summary>Reads every lbat in bounded chunks and collects the claims. Invalid entries are listed, never thrown.</summary>
    public static async ValueTask<PblkClaims> ScanAsync(Geometry geometry, IBackingStore store, CancellationToken cancellationToken)
    {
        var claims = new PblkClaims(geometry);
        for (uint zone = 0; zone < geometry.NrZones; zone++)
            await LbatReader.ForEachEntryAsync(store, geometry, zone, claims.Visit, cancellationToken).ConfigureAwait(false);
        return claims;
    }

    private void Visit(ulong lblk, ReadOnlySpan<ulong> slots, uint length, uint crc)
    {
        // Entries past the logical end are never read or written; check reports and repair zeroes them.
        if (lblk >= _geometry.NrLblks)
            return;
        if (!LblkAlloc.TryValidate(_geometry, length, crc, slots, out int used, out var error))
        {
            Invalid.Add((lblk, error.Describe(_geometry, lblk)));
            int seen = 0;
            foreach (ulong pblk in slots)
            {
                // One slot naming a pblk twice is counted once: it is not a clash with another lblk.
                if (slots[..seen++].Contains(pblk))
                    continue;
                Claim(pblk);
            }
            return;
        }
        if (used == 0)
            return;
        LblksUsed++;
        PblksUsed += used;
        foreach (ulong pblk in slots[..used])
            Claim(pblk);
    }

    private void Claim(ulong pblk)
    {
        if (!_geometry.TryLocateDataPblk(pblk, out uint zone, out int bit))
            return;
        var words = _zones[zone] ??= new ulong[Layout.PblksPerZoneData / 64];
        ulong mask = 1UL << bit;
        if ((words[bit >> 6] & mask) != 0)
        {
            ClaimedTwice.Add(pblk);
            return;
        }
        words[bit >> 6] |= mask;
    }
}
