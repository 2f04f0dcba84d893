using System.Buffers;
using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>
/// The one sequential reader of a zone's lbat, shared by the engine's scans and the maintenance
/// operations. It reads in bounded chunks: a zone's lbat has no size limit of its own (a logical size
/// far above the physical one gives a single zone with gigabytes of lbat), so it is never held whole.
/// </summary>
public static class LbatReader
{
    /// <summary>Bytes read at once: large enough that a sparse lbat streams at the store's speed, small enough to be a rounding error in memory.</summary>
    public const int ChunkBytes = 4 << 20;

    /// <summary>Called for each entry that is not all zeros: its lblk (which may be past the logical end), pblk slots, length and crc.</summary>
    public delegate void EntryVisitor(ulong lblk, ReadOnlySpan<ulong> slots, uint length, uint crc);

    /// <summary>
    /// Reads zone <paramref name="zone"/>'s lbat and calls <paramref name="visit"/> for every entry that
    /// is not all zeros, in lblk order. Bytes past the end of the store read as zeros (a truncated image
    /// is examined as far as it goes). Whole sectors of zeros are skipped without decoding, so a sparse
    /// lbat costs about its reading.
    /// </summary>
    public static ValueTask ForEachEntryAsync(IBackingStore store, Geometry geometry, uint zone, EntryVisitor visit,
        CancellationToken cancellationToken = default) =>
        ForEachEntryAsync(store, geometry, zone, 0, geometry.LblkPerZone, visit, cancellationToken);

    /// <summary>
    /// As <see cref="ForEachEntryAsync(IBackingStore, Geometry, uint, EntryVisitor, CancellationToken)"/>, for the
    /// entries of indexes <paramref name="from"/> .. <paramref name="to"/> - 1 of the zone only: only the lbat
    /// pblks that hold them are read.
    /// </summary>
    public static async ValueTask ForEachEntryAsync(IBackingStore store, Geometry geometry, uint zone, long from, long to, EntryVisitor visit,
        CancellationToken cancellationToken = default)
    {
        var format = geometry.Alloc;
        to = Math.Min(to, geometry.LblkPerZone);
        if (from >= to)
            return;
        long lbatOffset = (long)geometry.LbatStart(zone) * Layout.PblkSize;
        // Whole pblks from the one holding the first entry wanted to the one holding the last.
        long start = format.EntryOffset(from) / Layout.PblkSize * Layout.PblkSize;
        long end = Math.Min((long)geometry.LbatPblks * Layout.PblkSize,
            (format.EntryOffset(to - 1) + format.EntrySize + Layout.PblkSize - 1) / Layout.PblkSize * Layout.PblkSize);
        int entriesPerSector = format.EntriesPerSector;
        ulong firstLblk = (ulong)zone * geometry.LblkPerZone;
        byte[] chunk = ArrayPool<byte>.Shared.Rent((int)Math.Min(ChunkBytes, end - start));
        ulong[] slots = ArrayPool<ulong>.Shared.Rent(format.PblksPerLblk);
        try
        {
            long at = start;
            while (at < end)
            {
                // Holes of a sparse backing file read as zeros, which hold no entry: skipped, not read.
                long data = store.NextDataOffset(lbatOffset + at) - lbatOffset;
                if (data >= end)
                    break;
                at = Math.Max(at, data / Layout.PblkSize * Layout.PblkSize);
                int length = (int)Math.Min(ChunkBytes, end - at);
                await store.ReadClampedAsync(lbatOffset + at, chunk.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
                VisitChunk(chunk.AsSpan(0, length), at / Layout.SectorSize * entriesPerSector, from, to, firstLblk, format, slots, visit);
                at += length;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
            ArrayPool<ulong>.Shared.Return(slots);
        }
    }

    private static void VisitChunk(ReadOnlySpan<byte> chunk, long firstIndex, long from, long to, ulong firstLblk, LblkAllocFormat format,
        ulong[] slots, EntryVisitor visit)
    {
        int perSector = format.EntriesPerSector;
        var used = slots.AsSpan(0, format.PblksPerLblk);
        for (int sector = 0; sector * Layout.SectorSize < chunk.Length; sector++)
        {
            long index = firstIndex + (long)sector * perSector;
            if (index >= to)
                return;
            var bytes = chunk.Slice(sector * Layout.SectorSize, Layout.SectorSize);
            if (!bytes.ContainsAnyExcept((byte)0))
                continue;
            for (int k = 0; k < perSector && index + k < to; k++)
            {
                if (index + k < from)
                    continue;
                var entry = bytes.Slice(k * format.EntrySize, format.EntrySize);
                if (!entry.ContainsAnyExcept((byte)0))
                    continue;
                format.Read(entry, used, out uint length, out uint crc);
                visit(firstLblk + (ulong)(index + k), used, length, crc);
            }
        }
    }
}
