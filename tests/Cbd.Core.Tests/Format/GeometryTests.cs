using Cbd.Core.Compression;
using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

public class GeometryTests
{
    private const long KiB = 1024;
    private const long MiB = 1024 * KiB;
    private const long TiB = 1024 * 1024 * MiB;
    private const int ZoneData = 32768;

    private static Header Plan(long physical, long logical, int lblkSize, bool crc = true, HeaderFlags flags = HeaderFlags.ZeroDetect) =>
        Geometry.Plan(physical, logical, lblkSize, CompressionAlgorithm.Lz4, 0, flags | (crc ? HeaderFlags.LblkCrc : 0));

    private static Geometry Planned(long physical, long logical, int lblkSize, bool crc = true) =>
        Geometry.FromHeader(Plan(physical, logical, lblkSize, crc), physical);

    [Theory]
    [InlineData(4096, false)]
    [InlineData(4096, true)]
    [InlineData(65536, true)]
    [InlineData(524288, true)]
    public void Smallest_device_holds_two_lblks_of_data_and_one_pblk_less_is_refused(int lblkSize, bool crc)
    {
        int perLblk = lblkSize / 4096;
        // Search down from well above the limit: every size formats until the first one that does not.
        long smallest = -1;
        for (long pblks = 3 + 2 * perLblk + 64; pblks >= 1; pblks--)
        {
            try
            {
                Plan(pblks * 4096, 3 * pblks * 4096, lblkSize, crc);
                smallest = pblks;
            }
            catch (ArgumentException)
            {
                break;
            }
        }
        // header + pbat + one lbat pblk + two lblks stored uncompressed
        Assert.Equal(3 + 2 * perLblk, smallest);
        var g = Planned(smallest * 4096, 3 * smallest * 4096, lblkSize, crc);
        Assert.Equal(1u, g.NrZones);
        Assert.Equal((ulong)(2 * perLblk), g.TotalDataPblks);

        var e = Assert.Throws<ArgumentException>(() => Plan((smallest - 1) * 4096, 3 * (smallest - 1) * 4096, lblkSize, crc));
        Assert.Contains($"leaves {2 * perLblk - 1} data pblks", e.Message);
        Assert.Contains($"at least {2 * perLblk}", e.Message);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4096)]
    [InlineData(3 * 4096)]
    public void Device_without_room_for_header_and_a_zone_is_refused(long physical)
    {
        var e = Assert.Throws<ArgumentException>(() => Plan(physical, 1 * MiB, 4096));
        Assert.Contains($"physical size {physical}", e.Message);
        Assert.Contains("too small", e.Message);
    }

    [Fact]
    public void Logical_size_below_one_lblk_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => Plan(64 * MiB, 65535, 65536));
        Assert.Contains("logical size 65535", e.Message);
        Assert.Contains("at least one lblk of 65536 bytes", e.Message);
    }

    /// <summary>64 KiB lblks with checksums on a 16-bit device: 38-byte entries, 13 a sector, 104 an lbat pblk.</summary>
    private const long Logical = 384 * MiB; // 6144 lblks

    private static long LbatPblksFor(long lblksPerZone) => (lblksPerZone + 103) / 104;

    [Fact]
    public void Device_of_exactly_one_full_zone()
    {
        long pblks = 1 + 1 + LbatPblksFor(6144) + ZoneData; // header, pbat, lbat, data
        var g = Planned(pblks * 4096, Logical, 65536);
        Assert.Equal("lblk_alloc_16_16", g.Alloc.Name);
        Assert.Equal(38, g.Alloc.EntrySize);
        Assert.Equal(1u, g.NrZones);
        Assert.Equal(6144u, g.LblkPerZone);
        Assert.Equal(60UL, g.LbatPblks);
        Assert.Equal(ZoneData, g.DataPblks(0));
        Assert.Equal((ulong)ZoneData, g.TotalDataPblks);
        Assert.Equal((ulong)pblks, g.DataStart(0) + ZoneData);
        Assert.True(g.TryLocateDataPblk((ulong)pblks - 1, out uint zone, out int bit));
        Assert.Equal((0u, ZoneData - 1), (zone, bit));
    }

    [Fact]
    public void One_pblk_past_a_full_zone_is_left_unused()
    {
        long pblks = 1 + 1 + LbatPblksFor(6144) + ZoneData + 1;
        var g = Planned(pblks * 4096, Logical, 65536);
        Assert.Equal(1u, g.NrZones);
        Assert.Equal(ZoneData, g.DataPblks(0));
        Assert.False(g.TryLocateDataPblk((ulong)pblks - 1, out _, out _));
        Assert.True(g.TryLocateDataPblk((ulong)pblks - 2, out _, out _));
    }

    [Fact]
    public void Full_zone_then_a_zone_of_one_data_pblk()
    {
        long lbat = LbatPblksFor(3072); // two zones of 3072 lblks each
        long pblks = 1 + (1 + lbat + ZoneData) + (1 + lbat + 1);
        var g = Planned(pblks * 4096, Logical, 65536);
        Assert.Equal(2u, g.NrZones);
        Assert.Equal(3072u, g.LblkPerZone);
        Assert.Equal((ulong)lbat, g.LbatPblks);
        Assert.Equal(ZoneData, g.DataPblks(0));
        Assert.Equal(1, g.DataPblks(1));
        Assert.Equal((ulong)ZoneData + 1, g.TotalDataPblks);
        Assert.True(g.TryLocateDataPblk((ulong)pblks - 1, out uint zone, out int bit));
        Assert.Equal((1u, 0), (zone, bit));
        Assert.Equal(1u, g.HomeZone(6143));
        Assert.False(g.TryLocateDataPblk((ulong)pblks, out _, out _));

        // One pblk less and the second zone has no data: it is not planned at all.
        var smaller = Planned((pblks - 1) * 4096, Logical, 65536);
        Assert.Equal(1u, smaller.NrZones);
    }

    [Theory]
    [InlineData(256 * MiB, 65536, "lblk_alloc_16_16")]       // 65536 pblks: the last with 16-bit numbers
    [InlineData(256 * MiB, 524288, "lblk_alloc_32_16")]
    [InlineData(256 * MiB + 4096, 65536, "lblk_alloc_16_32")] // 65537 pblks
    [InlineData(256 * MiB + 4096, 262144, "lblk_alloc_32_32")]
    [InlineData(16 * TiB, 262144, "lblk_alloc_32_32")]        // 2^32 pblks: the last with 32-bit numbers
    [InlineData(16 * TiB + 4096, 65536, "lblk_alloc_16_48")]
    [InlineData(16 * TiB + 4096, 262144, "lblk_alloc_32_48")]
    public void Largest_lblk_of_each_encoding_formats(long physical, int lblkSize, string encoding)
    {
        foreach (bool crc in new[] { false, true })
        {
            var g = Planned(physical, physical, lblkSize, crc);
            Assert.Equal(encoding, g.Alloc.Name);
            Assert.Equal(lblkSize, g.LblkSize);
            Assert.True(g.Alloc.EntrySize <= 512);
        }
    }

    [Theory]
    [InlineData(256 * MiB, 1048576, 524288)]
    [InlineData(1 * MiB, 1048576, 524288)]
    [InlineData(256 * MiB + 4096, 524288, 262144)]
    [InlineData(16 * TiB + 4096, 524288, 262144)]
    [InlineData(16 * TiB + 4096, 1 << 30, 262144)]
    public void One_lblk_size_past_the_largest_is_refused_stating_the_maximum(long physical, int lblkSize, int max)
    {
        foreach (bool crc in new[] { false, true })
        {
            var e = Assert.Throws<ArgumentException>(() => Plan(physical, physical, lblkSize, crc));
            Assert.Contains($"lblk size {lblkSize}", e.Message);
            Assert.Contains($"at most {max} bytes", e.Message);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-65536)]
    [InlineData(2048)]
    [InlineData(4095)]
    [InlineData(6144)]
    [InlineData(3 * 4096)]
    [InlineData(65535)]
    [InlineData(65537)]
    public void Lblk_size_that_is_not_a_power_of_two_of_at_least_4096_is_refused(int lblkSize)
    {
        var e = Assert.Throws<ArgumentException>(() => Plan(64 * MiB, 64 * MiB, lblkSize));
        Assert.Contains($"lblk size {lblkSize}", e.Message);
        Assert.Contains("power of two", e.Message);
    }

    [Fact]
    public void Physical_size_past_2_pow_48_pblks_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => Plan((1L << 60) + 4096, 1L << 60, 65536));
        Assert.Contains("2^48 pblks", e.Message);
    }

    [Fact]
    public void Device_needing_more_zones_than_a_u32_counts_is_refused()
    {
        // 2^48 pblks would need about 2^33 zones of 32768 data pblks: nr_zones is a u32.
        var e = Assert.Throws<ArgumentException>(() => Plan(1L << 60, 1L << 60, 65536));
        Assert.Contains("u32", e.Message);
    }

    [Fact]
    public void Plan_refuses_what_the_header_could_not_store()
    {
        var flags = Assert.Throws<ArgumentException>(() =>
            Geometry.Plan(64 * MiB, 64 * MiB, 65536, CompressionAlgorithm.Lz4, 0, (HeaderFlags)0x0008));
        Assert.Contains("flags: 0x0008", flags.Message);
        var algorithm = Assert.Throws<ArgumentException>(() =>
            Geometry.Plan(64 * MiB, 64 * MiB, 65536, (CompressionAlgorithm)9, 1, HeaderFlags.None));
        Assert.Contains("algorithm: 9", algorithm.Message);
        var level = Assert.Throws<ArgumentException>(() =>
            Geometry.Plan(64 * MiB, 64 * MiB, 65536, CompressionAlgorithm.Zlib, 265, HeaderFlags.None));
        Assert.Contains("level: 265", level.Message);
    }

    [Fact]
    public void Plan_never_sets_the_dirty_flag()
    {
        var header = Plan(64 * MiB, 64 * MiB, 65536, crc: true, flags: HeaderFlags.Dirty | HeaderFlags.ZeroDetect);
        Assert.Equal(HeaderFlags.ZeroDetect | HeaderFlags.LblkCrc, header.Flags);
    }

    [Fact]
    public void Physical_bytes_past_the_last_whole_pblk_are_ignored()
    {
        var exact = Plan(64 * MiB, 64 * MiB, 65536);
        Assert.Equal(exact, Plan(64 * MiB + 4095, 64 * MiB, 65536));
        Assert.Equal(exact, Plan(64 * MiB, 64 * MiB + 65535, 65536));
    }

    [Fact]
    public void Try_locate_data_pblk_accepts_exactly_the_data_pblks()
    {
        // Two full zones and a partial third, numbered from first principles. Over 65536 pblks, so
        // lblk_alloc_16_32 with checksums: 70-byte entries, 7 a sector, 56 an lbat pblk.
        const int partial = 777;
        long lbat = (4000 + 55) / 56;
        long pblks = 1 + 2 * (1 + lbat + ZoneData) + 1 + lbat + partial;
        var g = Planned(pblks * 4096, 12000 * 65536L, 65536);
        Assert.Equal("lblk_alloc_16_32", g.Alloc.Name);
        Assert.Equal(3u, g.NrZones);
        Assert.Equal(4000u, g.LblkPerZone);
        Assert.Equal(partial, g.DataPblks(2));

        var seen = new HashSet<(uint, int)>();
        for (ulong pblk = 0; pblk < (ulong)pblks + 3; pblk++)
        {
            bool expected = false;
            uint expectedZone = 0;
            long expectedBit = 0;
            if (pblk >= 1 && pblk < (ulong)pblks)
            {
                long inZones = (long)pblk - 1;
                expectedZone = (uint)(inZones / (1 + lbat + ZoneData));
                expectedBit = inZones % (1 + lbat + ZoneData) - 1 - lbat; // < 0 for pbat and lbat pblks
                expected = expectedBit >= 0;
            }
            bool located = g.TryLocateDataPblk(pblk, out uint zone, out int bit);
            Assert.True(expected == located, $"pblk {pblk}: located {located}, expected {expected}");
            if (located)
            {
                Assert.Equal((expectedZone, (int)expectedBit), (zone, bit));
                Assert.Equal(pblk, g.DataStart(zone) + (ulong)bit);
                Assert.True(seen.Add((zone, bit)));
            }
        }
        Assert.Equal((int)g.TotalDataPblks, seen.Count);

        foreach (ulong metadata in new[] { 0UL, g.ZoneStart(0), g.LbatStart(0), g.DataStart(0) - 1, g.ZoneStart(2), g.LbatStart(2), g.DataStart(2) - 1 })
            Assert.False(g.TryLocateDataPblk(metadata, out _, out _), $"metadata pblk {metadata}");
        foreach (ulong past in new[] { (ulong)pblks, (ulong)pblks + 1, 1UL << 40, ulong.MaxValue })
            Assert.False(g.TryLocateDataPblk(past, out _, out _), $"pblk {past} past the end");
    }

    private sealed record Sizes(long PhysicalPblks, long Lblks, int Shift, bool Crc)
    {
        public long Physical => PhysicalPblks * 4096;
        public long Logical => Lblks * (4096L << Shift);
    }

    /// <summary>Physical sizes spread over orders of magnitude, up to 1 TiB so that every zone can be walked.</summary>
    private static readonly Gen<Sizes> s_sizes =
        Gen.Select(Gen.Int[2, 28], Gen.Double[0, 1], Gen.Int[0, 7], Gen.Bool, Gen.Double[0.001, 12])
            .Select((log, frac, shift, crc, ratio) =>
            {
                long pblks = (long)Math.Pow(2, log + frac);
                long lblks = Math.Max(1, (long)(pblks * ratio / (1 << shift)));
                return new Sizes(pblks, lblks, shift, crc);
            });

    [Fact]
    public void Planned_geometry_keeps_its_invariants()
    {
        int formatted = 0;
        s_sizes.Sample(s =>
        {
            Header header;
            try
            {
                header = Plan(s.Physical, s.Logical, 4096 << s.Shift, s.Crc);
            }
            catch (ArgumentException e)
            {
                // Only the documented limits refuse a size.
                ulong maxShift = (ulong)LblkAllocFormat.MaxLblkShift((ulong)s.PhysicalPblks, s.Crc);
                bool tooSmall = s.PhysicalPblks < 3 + 2 * (1L << s.Shift) + 64;
                Assert.True(tooSmall || (ulong)s.Shift > maxShift, $"{s}: {e.Message}");
                return;
            }
            Interlocked.Increment(ref formatted);
            var g = Geometry.FromHeader(header, s.Physical);
            var page = new byte[4096];
            header.Write(page);
            Assert.True(Header.TryRead(page, out var read));
            Assert.Equal(header, read);

            Assert.Equal((ulong)s.PhysicalPblks, g.NrPblks);
            Assert.Equal((ulong)s.Lblks, g.NrLblks);
            Assert.True((ulong)g.NrZones * g.LblkPerZone >= g.NrLblks);
            Assert.True(g.HomeZone(g.NrLblks - 1) < g.NrZones);
            Assert.Equal(1UL, g.ZoneStart(0));

            ulong total = 0;
            int entrySize = g.Alloc.EntrySize;
            for (uint z = 0; z < g.NrZones; z++)
            {
                Assert.Equal(g.ZoneStart(z) + 1, g.LbatStart(z));
                Assert.Equal(g.LbatStart(z) + g.LbatPblks, g.DataStart(z));
                int data = g.DataPblks(z);
                total += (ulong)data;
                if (z + 1 < g.NrZones)
                {
                    Assert.Equal(ZoneData, data);
                    Assert.Equal(g.ZoneStart(z + 1), g.DataStart(z) + (ulong)data); // zones abut, never overlap
                }
                else
                {
                    Assert.InRange(data, 1, ZoneData);
                    ulong end = g.DataStart(z) + (ulong)data;
                    Assert.True(end <= g.NrPblks);
                    Assert.True(g.NrPblks - end <= 1 + g.LbatPblks, $"{s}: {g.NrPblks - end} pblks unused, room for another zone");
                }

                // The zone's first and last lblk have their entries inside the zone's own lbat.
                ulong first = (ulong)z * g.LblkPerZone;
                if (first >= g.NrLblks)
                    continue;
                ulong last = Math.Min(g.NrLblks, first + g.LblkPerZone) - 1;
                foreach (ulong lblk in new[] { first, last, first + (last - first) / 2 })
                {
                    Assert.Equal(z, g.HomeZone(lblk));
                    long at = g.EntryByteOffset(lblk);
                    Assert.True(at >= (long)g.LbatStart(z) * 4096 && at + entrySize <= (long)g.DataStart(z) * 4096, $"{s}: lblk {lblk} entry at {at}");
                    Assert.True(at % 512 + entrySize <= 512);
                }
            }
            Assert.Equal(total, g.TotalDataPblks);
            Assert.True(g.TotalDataPblks >= 2UL << s.Shift);
        }, iter: 600, threads: 1);
        Assert.True(formatted > 300, $"only {formatted} of 600 sizes formatted");
    }

    [Fact]
    public void Plan_succeeds_for_every_size_from_the_smallest_up()
    {
        // The limit is a threshold: no size above the smallest device is refused.
        for (long pblks = 35; pblks < 35 + 3 * ZoneData + 500; pblks += 37)
        {
            var g = Planned(pblks * 4096, 3 * pblks * 4096, 65536);
            Assert.Equal((ulong)pblks, g.NrPblks);
        }
    }
}
