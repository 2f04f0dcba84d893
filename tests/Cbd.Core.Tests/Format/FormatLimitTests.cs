using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;

namespace Cbd.Core.Tests.Format;

/// <summary>
/// Every image format accepts opens (clean and dirty), checks and repairs; past a limit, format refuses
/// and names the limit.
/// </summary>
public class FormatLimitTests
{
    /// <summary>
    /// The largest logical size of a physical size (docs/FORMAT.md, "Limits"): one zone whose lbat takes
    /// every pblk but the header, the pbat and the 2n data pblks, at 8e entries per lbat pblk.
    /// </summary>
    private static long MaxLogical(long physical, int lblkSize, bool crc)
    {
        var format = new LblkAllocFormat(int.Log2(lblkSize / 4096), (ulong)(physical / 4096), crc);
        long lbatPblks = physical / 4096 - 2 - 2 * format.PblksPerLblk;
        return lbatPblks * 8 * format.EntriesPerSector * lblkSize;
    }

    [Theory]
    [InlineData(64L << 20, 65536, true)]
    [InlineData(64L << 20, 4096, false)]
    [InlineData(300L << 20, 262144, true)]
    public async Task Largest_logical_size_opens_clean_and_dirty_checks_and_repairs(long physical, int lblkSize, bool crc)
    {
        long logical = MaxLogical(physical, lblkSize, crc);
        var options = new FormatOptions { LogicalSize = logical, LblkSize = lblkSize, LblkChecksums = crc };
        var store = new MemoryBackingStore(physical);
        var header = await ImageFormatter.FormatAsync(store, options);
        Assert.Equal((ulong)logical / 512, header.NrLogicalSectors);
        Assert.Equal(1u, header.NrZones);

        var first = DeviceTestKit.Compressible(lblkSize, 1);
        var last = DeviceTestKit.Random(lblkSize, 2);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            Assert.Equal(2 * lblkSize / 4096, (int)device.Geometry.TotalDataPblks);
            await device.WriteAsync(0, first);
            await device.WriteAsync(logical - lblkSize, last);
        }
        var (h, _) = await Maintenance.MaintenanceKit.ReadGeometryAsync(store);
        await Maintenance.MaintenanceKit.WriteHeaderAsync(store, h with { Flags = h.Flags | HeaderFlags.Dirty });
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            Assert.True(device.Recovered);
            var back = new byte[lblkSize];
            await device.ReadAsync(0, back);
            Assert.Equal(first, back);
            await device.ReadAsync(logical - lblkSize, back);
            Assert.Equal(last, back);
        }
        var check = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.Empty(check.Problems);
        var repair = await DeviceRepairer.RepairAsync(store);
        Assert.True(repair.Repaired);
        Assert.False(repair.Wrote);

        var e = await Assert.ThrowsAsync<ArgumentException>(async () =>
            await ImageFormatter.FormatAsync(new MemoryBackingStore(physical), options with { LogicalSize = logical + lblkSize }));
        Assert.Contains($"logical size {logical + lblkSize}: at most {logical} bytes", e.Message);
    }

    [Fact]
    public void Physical_size_whose_zones_overflow_the_u32_field_is_refused_with_the_limit()
    {
        // 2^32 zones of 32770 pblks: just past what nr_zones can count.
        long physical = (1L << 32) * 32770 * 4096;
        var e = Assert.Throws<ArgumentException>(() =>
            Geometry.Plan(physical, 1L << 40, 65536, CompressionAlgorithm.Lz4, 0, HeaderFlags.LblkCrc));
        Assert.Contains("u32", e.Message);
    }
}
