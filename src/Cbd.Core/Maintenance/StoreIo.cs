using Cbd.Core.Engine;
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
        var format = geometry.Alloc;
        var slots = new ulong[format.PblksPerLblk];
        byte[] page = new byte[Layout.PblkSize];
        long pageOffset = -1;
        var summary = new EntryRangeSummary();
        for (ulong lblk = from; lblk < to; lblk++)
        {
            long offset = geometry.EntryByteOffset(lblk);
            long want = offset / Layout.PblkSize * Layout.PblkSize;
            if (want != pageOffset)
            {
                await ReadClampedAsync(store, want, page, cancellationToken).ConfigureAwait(false);
                pageOffset = want;
            }
            format.Read(page.AsSpan((int)(offset - pageOffset)), slots, out uint length, out uint crc);
            if (length != 0)
            {
                summary.Allocated++;
                summary.FirstAllocated ??= lblk;
            }
            if (length != 0 || crc != 0 || slots.AsSpan().ContainsAnyExcept(0UL))
            {
                summary.NotZero++;
                summary.FirstNotZero ??= lblk;
            }
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
