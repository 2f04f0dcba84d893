using Cbd.Core.Engine;
using Cbd.Core.Format;

namespace Cbd.Core.Tests.Engine;

public class DeviceBasicsTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Fresh_device_reads_zeros_and_reports_one_hole()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB);
        await using var device = await DeviceTestKit.OpenAsync(store);
        Assert.Equal(3 * 64 * MiB, device.Size);
        var buffer = new byte[200_000];
        buffer.AsSpan().Fill(0xAA);
        await device.ReadAsync(12345, buffer);
        Assert.DoesNotContain(buffer, b => b != 0);
        var extents = await device.GetBlockStatusAsync(0, device.Size);
        Assert.Equal([new BlockExtent(device.Size, true, true)], extents);
    }

    [Theory]
    [InlineData(0, 65536)]
    [InlineData(1, 100)]
    [InlineData(65000, 2000)]
    [InlineData(4096 * 7 + 13, 300_000)]
    public async Task Write_then_read_round_trips_at_any_offset_before_and_after_reopen(long offset, int length)
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB);
        var data = DeviceTestKit.Compressible(length, 7);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await device.WriteAsync(offset, data);
            var back = new byte[length];
            await device.ReadAsync(offset, back);
            Assert.Equal(data, back);
            await device.FlushAsync();
            Assert.Equal(0, device.GetStats().DirtyLblks);
        }
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            Assert.False(device.Recovered);
            var back = new byte[length];
            await device.ReadAsync(offset, back);
            Assert.Equal(data, back);
            var before = new byte[Math.Min(offset, 4096)];
            await device.ReadAsync(offset - before.Length, before);
            Assert.DoesNotContain(before, b => b != 0);
        }
    }

    [Fact]
    public async Task Compressible_data_takes_fewer_pblks_and_random_data_is_stored_uncompressed()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB);
        await using var device = await DeviceTestKit.OpenAsync(store);
        await device.WriteAsync(0, DeviceTestKit.Compressible(65536, 1));
        await device.WriteAsync(65536, DeviceTestKit.Random(65536, 2));
        await device.WriteAsync(2 * 65536, new byte[65536]);
        await device.FlushAsync();
        var stats = device.GetStats();
        Assert.Equal(2, stats.LblksUsed);
        Assert.InRange(stats.PblksUsed, 16 + 1, 16 + 12);
    }

    [Fact]
    public async Task Trim_deallocates_whole_lblks_and_zeroes_partial_ones()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB);
        await using var device = await DeviceTestKit.OpenAsync(store);
        var data = DeviceTestKit.Random(4 * 65536, 3);
        await device.WriteAsync(0, data);
        await device.FlushAsync();
        Assert.Equal(4, device.GetStats().LblksUsed);
        await device.TrimAsync(1000, 2 * 65536);
        await device.FlushAsync();
        var back = new byte[data.Length];
        await device.ReadAsync(0, back);
        Array.Clear(data, 1000, 2 * 65536);
        Assert.Equal(data, back);
        Assert.Equal(3, device.GetStats().LblksUsed); // lblk 1 deallocated; 0 and 2 partially zeroed
    }
}
