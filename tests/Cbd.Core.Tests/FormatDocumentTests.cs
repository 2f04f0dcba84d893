using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.Core.Tests;

/// <summary>The figures docs/FORMAT.md quotes are the ones the code computes.</summary>
public class FormatDocumentTests
{
    [Fact]
    public void Worked_example_of_a_1_GiB_device()
    {
        const long GiB = 1L << 30;
        var header = Geometry.Plan(GiB, 3 * GiB, 64 * 1024, CompressionAlgorithm.Lz4, 0, HeaderFlags.ZeroDetect | HeaderFlags.LblkCrc);
        var g = Geometry.FromHeader(header, GiB);
        Assert.Equal(262144UL, g.NrPblks);
        Assert.Equal("lblk_alloc_16_32", g.Alloc.Name);
        Assert.Equal(70, g.Alloc.EntrySize);
        Assert.Equal(7, g.Alloc.EntriesPerSector);
        Assert.Equal(49152UL, g.NrLblks);
        Assert.Equal(8u, g.NrZones);
        Assert.Equal(6144u, g.LblkPerZone);
        Assert.Equal(110UL, g.LbatPblks);
        Assert.Equal(32879UL, g.ZoneStride);
        Assert.Equal(230154UL, g.ZoneStart(7));
        Assert.Equal(31879, g.DataPblks(7));
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
