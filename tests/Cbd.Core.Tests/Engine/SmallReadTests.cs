using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// A small read of an lblk that is not loaded decodes its stored form only up to the end of the range and keeps
/// nothing; the next read of that lblk loads it whole. Whatever changes the lblk between reads, each read sees the
/// last write.
/// </summary>
public class SmallReadTests
{
    private const int LblkSize = 64 * 1024;
    private const long MiB = 1 << 20;

    private static async Task<MemoryBackingStore> ImageAsync(long logSize, byte[] contents, long lblk)
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB, new FormatOptions { LogSize = logSize });
        await using var device = await DeviceTestKit.OpenAsync(store);
        await device.WriteAsync(lblk * LblkSize, contents);
        return store;
    }

    [Fact]
    public async Task The_first_small_read_of_an_lblk_keeps_nothing_and_the_next_loads_it()
    {
        var data = DeviceTestKit.Compressible(LblkSize, 3);
        var store = await ImageAsync(0, data, 2);
        await using var device = await DeviceTestKit.OpenAsync(store);
        EngineCounters counters = device.Counters;
        var buffer = new byte[4096];

        await device.ReadAsync(2 * LblkSize + 8192, buffer);
        Assert.Equal(data.AsSpan(8192, 4096).ToArray(), buffer);
        Assert.Equal((0L, 1L), (counters.CacheHits, counters.CacheMisses));

        await device.ReadAsync(2 * LblkSize + 40960, buffer);
        Assert.Equal(data.AsSpan(40960, 4096).ToArray(), buffer);
        Assert.Equal((0L, 2L), (counters.CacheHits, counters.CacheMisses));

        await device.ReadAsync(2 * LblkSize, buffer);
        Assert.Equal(data.AsSpan(0, 4096).ToArray(), buffer);
        Assert.Equal((1L, 2L), (counters.CacheHits, counters.CacheMisses));

        // A read larger than a quarter of an lblk, or one that reaches its end, loads it at once.
        var quarter = new byte[LblkSize / 4 + 1];
        await device.ReadAsync(5 * LblkSize, quarter);
        await device.ReadAsync(5 * LblkSize + 4096, buffer);
        await device.ReadAsync(6 * LblkSize + LblkSize - 4096, buffer);
        await device.ReadAsync(6 * LblkSize, buffer);
        Assert.Equal((3L, 4L), (counters.CacheHits, counters.CacheMisses));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4 * MiB)]
    public async Task Every_small_read_sees_the_last_write_whatever_came_between(long logSize)
    {
        const long Lblk = 3;
        var model = DeviceTestKit.Compressible(LblkSize, 5);
        var store = await ImageAsync(logSize, model, Lblk);
        var buffer = new byte[4096];
        async Task CheckAsync(CompressedDevice device, int within, string after)
        {
            await device.ReadAsync(Lblk * LblkSize + within, buffer);
            Assert.True(buffer.AsSpan().SequenceEqual(model.AsSpan(within, 4096)), $"4 KiB at {within} after {after}");
        }

        // Each change is made on a device that has not read the lblk yet: the read after it must not take the short path
        // past the change (a log record, or the change in the cache); after a reopen the first read takes it.
        var steps = new (string Name, Func<CompressedDevice, Task> Change)[]
        {
            ("a 4 KiB write", async d =>
            {
                var data = DeviceTestKit.Random(4096, 7);
                await d.WriteAsync(Lblk * LblkSize + 4096, data);
                data.CopyTo(model, 4096);
            }),
            ("a 100-byte write", async d =>
            {
                var data = DeviceTestKit.Random(100, 8);
                await d.WriteAsync(Lblk * LblkSize + 4000, data);
                data.CopyTo(model, 4000);
            }),
            ("a trim of 8 KiB", async d =>
            {
                await d.TrimAsync(Lblk * LblkSize, 8192);
                model.AsSpan(0, 8192).Clear();
            }),
            ("zeroes written over 4 KiB", async d =>
            {
                await d.WriteZeroesAsync(Lblk * LblkSize + 12288, 4096);
                model.AsSpan(12288, 4096).Clear();
            }),
        };
        foreach (var (name, change) in steps)
        {
            await using (var device = await DeviceTestKit.OpenAsync(store))
            {
                await change(device);
                foreach (int within in new[] { 0, 4096, 8192, 12288 })
                    await CheckAsync(device, within, name);
            }
            await using (var device = await DeviceTestKit.OpenAsync(store))
            {
                await CheckAsync(device, 4096, $"{name} and a reopen");
                await CheckAsync(device, 0, $"{name} and a reopen");
            }
        }
    }
}
