using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;

namespace Cbd.Core.Tests.Format;

/// <summary>
/// Geometry edges through the real device, on sparse in-memory stores: the smallest devices, and devices
/// past the 16-bit and 32-bit pblk limits, whose wide lblk_alloc encodings and partial last zone get used.
/// </summary>
public class DeviceGeometryTests
{
    private const long MiB = 1 << 20;
    private const long TiB = 1L << 40;
    private const int LblkSize = 65536;

    [Fact]
    public Task Device_with_32_bit_pblk_numbers_stores_lblks_at_both_ends() =>
        StoreAtBothEndsAsync(300 * MiB, logical: null, "lblk_alloc_16_32", minHighPblk: 1UL << 16);

    /// <summary>
    /// 130455 zones, the last with 2043 data pblks. The logical size is a whole number of zones' worth
    /// of lblks, so that the last lblks have the last zone as their home zone.
    /// </summary>
    [Fact]
    public Task Device_with_48_bit_pblk_numbers_stores_lblks_at_both_ends() =>
        StoreAtBothEndsAsync(16 * TiB + 400 * MiB, logical: 130455L * 6173 * LblkSize, "lblk_alloc_16_48", minHighPblk: 1UL << 32);

    private static async Task StoreAtBothEndsAsync(long physical, long? logical, string encoding, ulong minHighPblk)
    {
        var store = new MemoryBackingStore(physical);
        var header = await ImageFormatter.FormatAsync(store, new FormatOptions { LblkSize = LblkSize, LogicalSize = logical });
        var g = Geometry.FromHeader(header, physical);
        Assert.Equal(encoding, g.Alloc.Name);
        uint lastZone = g.NrZones - 1;
        Assert.InRange(g.DataPblks(lastZone), 64, 32767); // partial, with room for what is written below

        ulong lastLblk = g.NrLblks - 1;
        Assert.Equal(lastZone, g.HomeZone(lastLblk));
        var lblks = new ulong[] { 0, 1, lastLblk - 2, lastLblk - 1, lastLblk };
        var contents = lblks.Select((l, i) => i % 2 == 0 ? DeviceTestKit.Compressible(LblkSize, (int)i) : DeviceTestKit.Random(LblkSize, (int)i)).ToArray();

        long pblksUsed;
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            Assert.Equal((long)g.NrLblks * LblkSize, device.Size);
            Assert.Equal((long)g.TotalDataPblks, device.GetStats().PblksTotal);
            for (int i = 0; i < lblks.Length; i++)
                await device.WriteAsync((long)lblks[i] * LblkSize, contents[i]);
            await device.FlushAsync();

            pblksUsed = 0;
            foreach (ulong lblk in lblks)
            {
                var pblks = ReadEntry(store, g, lblk);
                Assert.NotEmpty(pblks);
                pblksUsed += pblks.Length;
                foreach (ulong pblk in pblks)
                {
                    Assert.True(g.TryLocateDataPblk(pblk, out uint zone, out _), $"lblk {lblk}: pblk {pblk} is not a data pblk");
                    if (lblk < 2)
                    {
                        Assert.Equal(0u, zone);
                    }
                    else
                    {
                        Assert.Equal(lastZone, zone); // home zone of the last lblks: the partial one
                        Assert.True(pblk >= minHighPblk, $"pblk {pblk} below {minHighPblk}");
                    }
                }
            }
            var stats = device.GetStats();
            Assert.Equal(lblks.Length, stats.LblksUsed);
            Assert.Equal(pblksUsed, stats.PblksUsed);
            Assert.True(pblksUsed < lblks.Length * 16, "compressible lblks should take fewer pblks");
            await AssertContentsAsync(device, lblks, contents);
        }

        // The clean close recorded the stats in the header; a reopen reads everything back.
        Assert.Equal((ulong)pblksUsed, HeaderImage.Read(store, HeaderField.PblkUsed));
        Assert.Equal((ulong)lblks.Length, HeaderImage.Read(store, HeaderField.LblkUsed));
        Assert.Equal(0UL, HeaderImage.Read(store, HeaderField.Flags) & (ulong)HeaderFlags.Dirty);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            Assert.False(device.Recovered);
            var stats = device.GetStats();
            Assert.Equal(lblks.Length, stats.LblksUsed);
            Assert.Equal(pblksUsed, stats.PblksUsed);
            await AssertContentsAsync(device, lblks, contents);
            var between = new byte[LblkSize];
            await device.ReadAsync((long)(lastLblk - 3) * LblkSize, between);
            Assert.DoesNotContain(between, b => b != 0);
        }
    }

    [Theory]
    [InlineData(4096)]
    [InlineData(65536)]
    [InlineData(524288)]
    public async Task Smallest_device_stores_two_incompressible_lblks(int lblkSize)
    {
        long physical = (3 + 2 * (lblkSize / 4096)) * 4096L; // header, pbat, lbat, two lblks
        var store = new MemoryBackingStore(physical);
        await ImageFormatter.FormatAsync(store, new FormatOptions { LblkSize = lblkSize });
        var first = DeviceTestKit.Random(lblkSize, 1);
        var second = DeviceTestKit.Random(lblkSize, 2);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await device.WriteAsync(0, first);
            await device.WriteAsync(device.Size - lblkSize, second);
            await device.FlushAsync();
            var stats = device.GetStats();
            Assert.Equal(stats.PblksTotal, stats.PblksUsed); // every data pblk in use
        }
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            var back = new byte[lblkSize];
            await device.ReadAsync(0, back);
            Assert.Equal(first, back);
            await device.ReadAsync(device.Size - lblkSize, back);
            Assert.Equal(second, back);
        }
    }

    /// <summary>The pblks of lblk's entry, read straight from the lbat on the store.</summary>
    private static ulong[] ReadEntry(MemoryBackingStore store, Geometry g, ulong lblk)
    {
        var format = g.Alloc;
        var entry = new byte[format.EntrySize];
        store.Read(g.EntryByteOffset(lblk), entry);
        var slots = new ulong[format.PblksPerLblk];
        format.Read(entry, slots, out uint length, out _);
        Assert.Null(format.CheckLength(length));
        return slots[..format.PblksFor(length)];
    }

    private static async Task AssertContentsAsync(CompressedDevice device, ulong[] lblks, byte[][] contents)
    {
        var back = new byte[LblkSize];
        for (int i = 0; i < lblks.Length; i++)
        {
            await device.ReadAsync((long)lblks[i] * LblkSize, back);
            Assert.True(contents[i].AsSpan().SequenceEqual(back), $"lblk {lblks[i]} reads back different bytes");
        }
    }
}
