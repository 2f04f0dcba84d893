using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Maintenance;

public class DeviceTunerTests
{
    [Fact]
    public async Task New_algorithm_applies_to_new_writes_and_old_lblks_still_read()
    {
        var store = await FormatAsync(64 * MiB);
        var model = Enumerable.Range(0, 6).ToDictionary(l => (long)l, l => Compressible(65536, l));
        await WriteAsync(store, model);

        var report = await DeviceTuner.TuneAsync(store, new TuneOptions { Algorithm = CompressionAlgorithm.Zstd });
        Assert.True(report.Changed);
        Assert.Equal(CompressionAlgorithm.Zstd, report.After.Algorithm);
        Assert.Equal(3, report.After.Level); // zstd's default level
        await VerifyAsync(store, model);

        model[10] = Compressible(65536, 10);
        await WriteAsync(store, new Dictionary<long, byte[]> { [10] = model[10] });
        await VerifyAsync(store, model);
        var (_, g) = await ReadGeometryAsync(store);
        Assert.Equal((byte)CompressionAlgorithm.Lz4, await FirstStoredByteAsync(store, g, 0));
        Assert.Equal((byte)CompressionAlgorithm.Zstd, await FirstStoredByteAsync(store, g, 10));
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
    }

    [Fact]
    public async Task Level_and_zero_detect_change_in_the_header_only()
    {
        var store = await FormatAsync(64 * MiB);
        var report = await DeviceTuner.TuneAsync(store, new TuneOptions { Level = 9, ZeroDetect = false });
        Assert.Equal(CompressionAlgorithm.Lz4, report.After.Algorithm);
        Assert.Equal(9, report.After.Level);
        Assert.False(report.After.Flags.HasFlag(HeaderFlags.ZeroDetect));
        Assert.Equal(report.After, (await ReadGeometryAsync(store)).Header);

        var same = await DeviceTuner.TuneAsync(store, new TuneOptions { Level = 9 });
        Assert.False(same.Changed);
        await Assert.ThrowsAsync<ArgumentException>(() => DeviceTuner.TuneAsync(store, new TuneOptions { Level = 13 }));
        await Assert.ThrowsAsync<ArgumentException>(() => DeviceTuner.TuneAsync(store, new TuneOptions { Algorithm = (CompressionAlgorithm)9 }));
    }

    [Fact]
    public async Task Logical_size_grows_within_the_lbats_and_shrinks_only_over_unallocated_lblks()
    {
        // 100 lblks on lbats that hold 4800: room to grow without moving anything.
        var store = await FormatAsync(64 * MiB, new FormatOptions { LogicalSize = 100 * 65536L });
        var model = new Dictionary<long, byte[]> { [10] = Compressible(65536, 10), [99] = Compressible(65536, 99) };
        await WriteAsync(store, model);
        var (_, g) = await ReadGeometryAsync(store);
        long max = (long)g.LblkPerZone * 65536;

        var grown = await DeviceTuner.TuneAsync(store, new TuneOptions { LogicalBytes = max });
        Assert.Equal((ulong)max / 512, grown.After.NrLogicalSectors);
        var e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceTuner.TuneAsync(store, new TuneOptions { LogicalBytes = max + 65536 }));
        Assert.Contains($"at most {max / MiB} MiB", e.Message);

        e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceTuner.TuneAsync(store, new TuneOptions { LogicalBytes = 50 * 65536L }));
        Assert.Contains("1 lblks past the new end hold data", e.Message);
        Assert.Contains("lblk 99", e.Message);

        await using (var device = await OpenAsync(store))
            await device.TrimAsync(99 * 65536L, 65536);
        var shrunk = await DeviceTuner.TuneAsync(store, new TuneOptions { LogicalBytes = 50 * 65536L + 1000 });
        Assert.Equal(50UL * 65536 / 512, shrunk.After.NrLogicalSectors);
        await using (var device = await OpenAsync(store, new DeviceOptions { ReadOnly = true }))
            Assert.Equal(50 * 65536L, device.Size);
        model.Remove(99);
        await VerifyAsync(store, model);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
    }

    private static async Task<byte> FirstStoredByteAsync(Cbd.Core.Storage.IBackingStore store, Geometry g, ulong lblk)
    {
        var entry = await ReadEntryAsync(store, g, lblk);
        Assert.NotEqual(g.Alloc.UncompressedLength, entry.Length);
        var b = new byte[1];
        await store.ReadAsync((long)entry.Slots[0] * Layout.PblkSize, b);
        return b[0];
    }
}
