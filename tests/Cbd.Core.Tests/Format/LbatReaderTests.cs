using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using CsCheck;

namespace Cbd.Core.Tests.Format;

/// <summary>The one lbat scan, over a zone or a range of its entries, and the summary of a range that tune builds on it.</summary>
public class LbatReaderTests
{
    private const long Physical = 200L << 20; // two zones

    private static async Task<(MemoryBackingStore Store, Geometry Geometry, SortedSet<ulong> Written)> ImageAsync()
    {
        var store = new MemoryBackingStore(Physical);
        await ImageFormatter.FormatAsync(store, new FormatOptions());
        var g = await Geometry.ReadAsync(store);
        Assert.Equal(2u, g.NrZones);
        var written = new SortedSet<ulong>();
        var entries = new List<(ulong, LblkAlloc)>();
        var random = new Random(11);
        for (int i = 0; i < 300; i++)
        {
            ulong lblk = (ulong)random.NextInt64(0, (long)g.NrZones * g.LblkPerZone);
            if (!written.Add(lblk))
                continue;
            // One pblk of a compressed lblk, or (every fifth) length 0 with a stray crc: not zero, not allocated.
            entries.Add((lblk, i % 5 == 0 ? new LblkAlloc(0, 9, ReadOnlyMemory<ulong>.Empty) : new LblkAlloc(100, 1, new[] { g.DataStart(0) + (ulong)i })));
        }
        await StoreIo.WriteEntriesAsync(store, g, entries, CancellationToken.None);
        return (store, g, written);
    }

    [Fact]
    public async Task A_range_visits_exactly_the_entries_in_it_that_are_not_zero()
    {
        var (store, g, written) = await ImageAsync();
        Gen.Select(Gen.UInt[0, 1], Gen.Long[0, g.LblkPerZone], Gen.Long[0, g.LblkPerZone]).Sample((zone, a, b) =>
        {
            long from = Math.Min(a, b), to = Math.Max(a, b);
            var seen = new List<ulong>();
            LbatReader.ForEachEntryAsync(store, g, zone, from, to, (lblk, _, _, _) => seen.Add(lblk)).AsTask().GetAwaiter().GetResult();
            ulong first = zone * (ulong)g.LblkPerZone;
            Assert.Equal(written.Where(l => l >= first + (ulong)from && l < first + (ulong)to), seen);
        }, iter: 300, threads: 1);
    }

    [Fact]
    public async Task A_summary_across_zones_counts_allocated_and_non_zero_entries()
    {
        var (store, g, written) = await ImageAsync();
        ulong all = (ulong)g.NrZones * g.LblkPerZone;
        var allocated = new HashSet<ulong>();
        for (uint zone = 0; zone < g.NrZones; zone++)
            await LbatReader.ForEachEntryAsync(store, g, zone, (lblk, _, length, _) => { if (length != 0) allocated.Add(lblk); });
        Gen.Select(Gen.ULong[0, all], Gen.ULong[0, all]).Sample((a, b) =>
        {
            ulong from = Math.Min(a, b), to = Math.Max(a, b);
            var summary = StoreIo.SummarizeEntriesAsync(store, g, from, to, CancellationToken.None).AsTask().GetAwaiter().GetResult();
            var inRange = written.Where(l => l >= from && l < to).ToList();
            Assert.Equal(inRange.Count, summary.NotZero);
            Assert.Equal(inRange.Count(allocated.Contains), summary.Allocated);
            Assert.Equal(inRange.Count == 0 ? null : inRange[0], summary.FirstNotZero);
            Assert.Equal(inRange.Where(allocated.Contains).Select(l => (ulong?)l).FirstOrDefault(), summary.FirstAllocated);
        }, iter: 200, threads: 1);
    }
}
