using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>Backing store access shared by the maintenance operations, which run on a closed image.</summary>
internal static class StoreIo
{
    public static ValueTask ReadClampedAsync(IBackingStore store, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        store.ReadClampedAsync(offset, buffer, cancellationToken);

    /// <summary>Reads and validates header and geometry; throws <see cref="InvalidDataException"/> naming what is wrong.</summary>
    public static async ValueTask<(Header Header, Geometry Geometry)> ReadHeaderAsync(IBackingStore store, CancellationToken cancellationToken)
    {
        var geometry = await Geometry.ReadAsync(store, cancellationToken).ConfigureAwait(false);
        return (geometry.Header, geometry);
    }

    public static ValueTask ReadPblksAsync(IBackingStore store, ReadOnlyMemory<ulong> pblks, Memory<byte> destination, CancellationToken cancellationToken) =>
        store.ReadPblksAsync(pblks, destination, zerosPastEnd: true, cancellationToken);

    public static ValueTask WritePblksAsync(IBackingStore store, ReadOnlyMemory<ulong> pblks, ReadOnlyMemory<byte> source, CancellationToken cancellationToken) =>
        store.WritePblksAsync(pblks, source, cancellationToken);

    /// <summary>
    /// Rewrites lblk_alloc entries: each lbat pblk holding a changed entry is read, patched and written
    /// whole. Unchanged sectors are written with the bytes they already hold and an entry never crosses
    /// a sector, so a torn write leaves every entry either old or new.
    /// </summary>
    public static async ValueTask WriteEntriesAsync(IBackingStore store, Geometry geometry, IEnumerable<(ulong Lblk, LblkAlloc Entry)> entries,
        CancellationToken cancellationToken)
    {
        var byPage = entries
            .Select(e => (Offset: geometry.EntryByteOffset(e.Lblk), e.Entry))
            .GroupBy(e => e.Offset / Layout.PblkSize)
            .OrderBy(g => g.Key);
        byte[] page = new byte[Layout.PblkSize];
        foreach (var group in byPage)
        {
            long pageOffset = group.Key * Layout.PblkSize;
            await ReadClampedAsync(store, pageOffset, page, cancellationToken).ConfigureAwait(false);
            foreach (var (offset, entry) in group)
                entry.Encode(geometry.Alloc, page.AsSpan((int)(offset - pageOffset)));
            await store.WriteAsync(pageOffset, page, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Reads the entries of lblks <paramref name="from"/> .. <paramref name="to"/> - 1 (which may lie past
    /// the logical end, inside the lbats): how many are allocated and how many not zero at all.
    /// </summary>
    public static async ValueTask<EntryRangeSummary> SummarizeEntriesAsync(IBackingStore store, Geometry geometry, ulong from, ulong to,
        CancellationToken cancellationToken)
    {
        var summary = new EntryRangeSummary();
        if (from >= to)
            return summary;
        ulong perZone = geometry.LblkPerZone;
        for (ulong zone = from / perZone; zone <= (to - 1) / perZone && zone < geometry.NrZones; zone++)
        {
            ulong first = zone * perZone;
            long fromIndex = (long)(Math.Max(from, first) - first), toIndex = (long)(Math.Min(to, first + perZone) - first);
            // The reader visits only entries that are not all zeros, in lblk order.
            await LbatReader.ForEachEntryAsync(store, geometry, (uint)zone, fromIndex, toIndex, (lblk, _, length, _) =>
            {
                if (length != 0)
                {
                    summary.Allocated++;
                    summary.FirstAllocated ??= lblk;
                }
                summary.NotZero++;
                summary.FirstNotZero ??= lblk;
            }, cancellationToken).ConfigureAwait(false);
        }
        return summary;
    }
}

internal sealed class EntryRangeSummary
{
    public long Allocated { get; set; }
    public ulong? FirstAllocated { get; set; }
    public long NotZero { get; set; }
    public ulong? FirstNotZero { get; set; }
}
