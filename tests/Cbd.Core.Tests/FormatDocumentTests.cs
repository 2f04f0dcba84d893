using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests;

/// <summary>The figures docs/FORMAT.md quotes are the ones the code computes.</summary>
public class FormatDocumentTests
{
    [Fact]
    public void Worked_example_of_a_1_GiB_device()
    {
        const long GiB = 1L << 30;
        const int LblkSize = 64 * 1024;
        // What cbd format does with its defaults: the default log (FormatCommand.WithLog), then the plan.
        long logBytes = ImageFormatter.DefaultLogBytes(GiB, LblkSize);
        var header = ImageFormatter.Plan(GiB, new FormatOptions { LogSize = logBytes });
        var g = Geometry.FromHeader(header, GiB);
        Assert.Equal(262144UL, g.NrPblks);
        Assert.Equal("lblk_alloc_16_32", g.Alloc.Name);
        Assert.Equal(70, g.Alloc.EntrySize);
        Assert.Equal(7, g.Alloc.EntriesPerSector);

        Assert.Equal(128L << 20, logBytes);
        Assert.Equal(32768UL, g.LogPblks);
        Assert.Equal(229376UL, g.ZonesEnd);
        Assert.Equal(939524096L, g.LogStartByte);
        Assert.Equal(1073741823L, g.LogStartByte + g.LogBytes - 1);

        Assert.Equal(3 * GiB, g.LogicalBytes);
        Assert.Equal(49152UL, g.NrLblks);
        // The iteration as the document gives it, in the pblks before the log.
        ulong start = (g.ZonesEnd - 4) / 32770 + 1;
        Assert.Equal(7UL, start);
        Assert.Equal(7022u, g.LblkPerZone);
        Assert.Equal((uint)((g.NrLblks + start - 1) / start), g.LblkPerZone);
        Assert.Equal(126UL, g.LbatPblks);
        Assert.Equal(32895UL, g.ZoneStride);
        Assert.Equal(7UL, (g.ZonesEnd - 3 - g.LbatPblks) / g.ZoneStride + 1);
        Assert.Equal(7u, g.NrZones);
        Assert.Equal(197371UL, g.ZoneStart(6));
        Assert.Equal(197498UL, g.DataStart(6));
        Assert.Equal(31878, g.DataPblks(6));
        Assert.Equal(g.ZonesEnd, g.DataStart(6) + 31878);
        Assert.Equal(228486UL, g.TotalDataPblks);
        Assert.Equal(892.5, Math.Round(g.TotalDataPblks * 4096 / (double)(1 << 20), 1));
        Assert.Equal(0.34, Math.Round(100.0 * (7 * 127 + 1) / g.NrPblks, 2));

        Assert.Equal((1, 2), ((int)header.VersionMajor, (int)header.VersionMinor));
        Assert.NotEqual(0UL, header.LogId);
        Assert.Equal((0UL, 0UL, 0u), (header.LogTail, header.LogSeq, header.LogEpoch));
    }

    [Fact]
    public async Task Worked_example_the_first_open_for_write_makes_log_epoch_1()
    {
        // The example's claim on a smaller device: the epoch does not depend on the size.
        const long Physical = 64L << 20;
        var store = new MemoryBackingStore(Physical);
        await ImageFormatter.FormatAsync(store, new FormatOptions { LogSize = ImageFormatter.DefaultLogBytes(Physical, FormatOptions.DefaultLblkSize) });
        Assert.Equal(0u, (await Geometry.ReadAsync(store)).Header.LogEpoch);
        await using var device = await CompressedDevice.OpenAsync(store);
        Assert.Equal(1u, (await Geometry.ReadAsync(store)).Header.LogEpoch);
    }

    [Theory]
    [InlineData(65536UL, true, 7, 264)]
    [InlineData(65536UL, false, 7, 260)]
    [InlineData(1UL << 32, true, 6, 264)]
    [InlineData(1UL << 32, false, 6, 260)]
    [InlineData(1UL << 48, true, 6, 392)]
    [InlineData(1UL << 48, false, 6, 388)]
    public void Limits_table(ulong pblks, bool crc, int maxShift, int entrySize)
    {
        Assert.Equal(maxShift, LblkAllocFormat.MaxLblkShift(pblks, crc));
        Assert.Equal(entrySize, new LblkAllocFormat(maxShift, pblks, crc).EntrySize);
    }
}
