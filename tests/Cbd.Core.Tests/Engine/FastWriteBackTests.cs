using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Tests.Format;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// lblks merged while the write log is under pressure are written back with the fast codec, and recompressed with the
/// device's once the device is idle (<see cref="LogMerger"/>): the data reads back the same all along, and in the end
/// every lblk takes what the device's codec compresses it to.
/// </summary>
public class FastWriteBackTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Lblks_merged_under_pressure_are_recompressed_once_the_device_is_idle()
    {
        Assert.True(Codec.CreateFast() is not null, "liblz4.so.1 (Debian's liblz4-1) is needed for the fast codec");
        var store = await DeviceTestKit.FormatAsync(64 * MiB, new FormatOptions { LogicalSize = 64 * MiB, LogSize = 2 * MiB });
        await using var device = await DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromMilliseconds(200) });
        var model = new byte[device.Size];

        // 4 KiB writes spread over every lblk, far more than the 2 MiB log holds: it stays full, and merges are fast.
        await WriteRandomAsync(device, model, writes: 4000, seed: 12);
        await device.FlushAsync();
        Assert.True(device.Counters.FastWriteBacks > 0, "no lblk was written back with the fast codec");
        Assert.True(device.Counters.Patches > 0, $"no lblk was stored patched ({device.Counters.FastWriteBacks} fast write-backs)");
        await AssertReadsAsync(device, model);

        // Idle: every record is merged and every lblk stored fast is recompressed.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (device.GetStats() is var stats && (stats.FastStoredLblks > 0 || stats.LogPendingLblks > 0 || stats.DirtyLblks > 0))
        {
            Assert.True(DateTime.UtcNow < deadline, $"not settled after 60 s idle: {stats}");
            await Task.Delay(50);
        }
        await device.FlushAsync();
        Assert.True(device.Counters.Recompressions > 0, "nothing was recompressed");
        await AssertReadsAsync(device, model);

        Assert.Equal(Floor(device, model), device.GetStats().PblksUsed);
    }

    /// <summary>
    /// Patched lblks are what the image holds, not a state of the engine: a copy of the image taken while they are there
    /// (dirty, as after a power cut) passes <c>cbd check --data</c>, and opens to read back every write, with nothing
    /// lost and nothing recompressed meanwhile. Patches over patches are among them.
    /// </summary>
    [Fact]
    public async Task Patched_lblks_read_back_from_the_image_itself()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB, new FormatOptions { LogicalSize = 16 * MiB, LogSize = 1 * MiB });
        var model = new byte[16 * MiB];
        // A cache of a few lblks: merges find them unloaded, as on a device much larger than its cache.
        await using var device = await DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), CacheBytes = 1 * MiB });
        await WriteRandomAsync(device, model, writes: 6000, seed: 21);
        await device.FlushAsync();
        long patched = device.Counters.Patches;
        Assert.True(patched > device.GetStats().LblksUsed, $"{patched} patches over {device.GetStats().LblksUsed} lblks: too few to patch patched lblks");

        // The copy is taken byte by byte, so nothing may be written meanwhile: the merges go on until the log is below three
        // quarters, and then, the device not being idle for an hour, nothing moves.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (device.GetStats() is var stats && (stats.DirtyLblks > 0 || stats.LogUsedBytes >= stats.LogBytes * 3 / 4))
        {
            Assert.True(DateTime.UtcNow < deadline, $"merges not settled after 60 s: {stats}");
            await Task.Delay(20);
        }
        await device.FlushAsync();
        var copy = store.Clone();
        var check = await DeviceChecker.CheckAsync(copy, new CheckOptions { Data = true });
        Assert.False(check.HasErrors, string.Join("; ", check.Problems.Select(p => p.ToString())));
        Assert.True(check.DataChecked);
        await using (var reopened = await DeviceTestKit.OpenAsync(copy, new DeviceOptions { ReadOnly = true }))
            await AssertReadsAsync(reopened, model);
        await AssertReadsAsync(device, model);
    }

    /// <summary>
    /// An image of format 1.1 opens as before and stays 1.1, readable by a 1.1 reader: its merges compress whole lblks, and
    /// none is stored patched.
    /// </summary>
    [Fact]
    public async Task A_format_1_1_image_is_merged_without_patches_and_stays_1_1()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB, new FormatOptions { LogicalSize = 16 * MiB, LogSize = 1 * MiB });
        HeaderImage.Rewrite(store, HeaderField.VersionMinor, Header.LogVersionMinor);
        var model = new byte[16 * MiB];
        await using (var device = await DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), CacheBytes = 1 * MiB }))
        {
            await WriteRandomAsync(device, model, writes: 3000, seed: 5);
            await device.FlushAsync();
            Assert.True(device.Counters.FastWriteBacks > 0, "no merge under pressure");
            Assert.Equal(0, device.Counters.Patches);
        }
        Assert.Equal(Header.LogVersionMinor, (int)HeaderImage.Read(store, HeaderField.VersionMinor));
        await using (var device = await DeviceTestKit.OpenAsync(store))
            await AssertReadsAsync(device, model);
    }

    /// <summary>
    /// The set of lblks stored with the fast codec is not kept in the image: a clean close recompresses them (a small device
    /// within its time budget), so the image reopens with every lblk at what the device's codec makes of it.
    /// </summary>
    [Fact]
    public async Task A_clean_close_recompresses_what_the_device_was_not_idle_long_enough_for()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB, new FormatOptions { LogicalSize = 64 * MiB, LogSize = 2 * MiB });
        var model = new byte[64 * MiB];
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await WriteRandomAsync(device, model, writes: 4000, seed: 3);
            await device.FlushAsync();
            Assert.True(device.GetStats().FastStoredLblks > 0, "no lblk is stored with the fast codec");
        }
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await AssertReadsAsync(device, model);
            Assert.Equal(Floor(device, model), device.GetStats().PblksUsed);
        }
    }

    /// <summary>
    /// On a nearly full device a merge's reservation is what the lblk measures with the device's codec, which the fast
    /// codec's output may exceed: such a merge is written back with the device's codec, and nothing breaks.
    /// </summary>
    [Fact]
    public async Task A_nearly_full_device_under_log_pressure_keeps_working()
    {
        var store = await DeviceTestKit.FormatAsync(16 * MiB, new FormatOptions { LogicalSize = 48 * MiB, LogSize = 1 * MiB });
        await using var device = await DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromMilliseconds(200) });
        int lblkSize = device.BlockSize;
        var model = new byte[device.Size];
        long filled = 0;
        while (filled < device.Size && device.GetStats() is var stats && stats.PblksUsed < stats.PblksTotal * 95 / 100)
        {
            var data = DeviceTestKit.Compressible(lblkSize, (int)(filled / lblkSize));
            try
            {
                await device.WriteAsync(filled, data);
                await device.FlushAsync();
            }
            catch (OutOfSpaceException)
            {
                break;
            }
            data.CopyTo(model, filled);
            filled += lblkSize;
        }
        Assert.True(device.GetStats().PblksUsed >= device.GetStats().PblksTotal * 9 / 10, $"only {device.GetStats()} after filling");

        var random = new Random(5);
        int refused = 0;
        for (int i = 0; i < 3000; i++)
        {
            long offset = random.NextInt64(filled / 4096) * 4096;
            var data = DeviceTestKit.Compressible(4096, 100_000 + i);
            try
            {
                await device.WriteAsync(offset, data);
            }
            catch (OutOfSpaceException)
            {
                refused++;
                continue;
            }
            data.CopyTo(model, offset);
        }
        await device.FlushAsync();
        Assert.True(refused < 3000, "every write was refused");
        await AssertReadsAsync(device, model);
    }

    private static async Task WriteRandomAsync(CompressedDevice device, byte[] model, int writes, int seed)
    {
        var random = new Random(seed);
        for (int i = 0; i < writes; i++)
        {
            long offset = random.NextInt64(device.Size / 4096) * 4096;
            var data = DeviceTestKit.Compressible(4096, seed * writes + i);
            data.CopyTo(model, offset);
            await device.WriteAsync(offset, data);
        }
    }

    /// <summary>The pblks every lblk of <paramref name="model"/> takes compressed with the device's codec.</summary>
    private static long Floor(CompressedDevice device, byte[] model)
    {
        int lblkSize = device.BlockSize;
        var codec = Codec.Create(device.Header.Algorithm, device.Header.Level);
        var scratch = new byte[lblkSize];
        long floor = 0;
        for (long lblk = 0; lblk < model.Length / lblkSize; lblk++)
            floor += StoredLblk.PblksNeeded(device.Geometry.Alloc, codec, model.AsSpan((int)(lblk * lblkSize), lblkSize), zeroDetect: true, scratch);
        return floor;
    }

    private static async Task AssertReadsAsync(CompressedDevice device, byte[] model)
    {
        var buffer = new byte[device.Size];
        await device.ReadAsync(0, buffer);
        Assert.True(buffer.AsSpan().SequenceEqual(model), "the device does not read back what was written");
    }
}
