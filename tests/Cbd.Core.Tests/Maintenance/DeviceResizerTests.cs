using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Maintenance;

public class DeviceResizerTests
{
    /// <summary>300 MiB: 32-bit pblk numbers, three zones of 4800 lblks, data in each zone.</summary>
    private static async Task<(MemoryBackingStore Store, Dictionary<long, byte[]> Model)> ThreeZonesAsync()
    {
        var store = await FormatAsync(300 * MiB);
        var model = new Dictionary<long, byte[]>();
        foreach (long lblk in new long[] { 0, 1, 2, 3, 4800, 4801, 9600, 9601, 14399 })
            model[lblk] = Compressible(65536, (int)lblk);
        model[5] = MaintenanceKit.Random(65536, 5);
        await WriteAsync(store, model);
        return (store, model);
    }

    /// <summary>
    /// 24 MiB, one partial zone: 40 incompressible lblks written, then the first 24 trimmed, so the 16
    /// left sit between about 1.5 and 2.5 MiB into the store.
    /// </summary>
    private static async Task<(MemoryBackingStore Store, Dictionary<long, byte[]> Model)> HighDataAsync()
    {
        var store = await FormatAsync(24 * MiB);
        var model = new Dictionary<long, byte[]>();
        await using (var device = await OpenAsync(store))
        {
            for (int lblk = 0; lblk < 40; lblk++)
            {
                var data = MaintenanceKit.Random(65536, lblk);
                await device.WriteAsync(lblk * 65536L, data);
                if (lblk >= 24)
                    model[lblk] = data;
            }
            await device.FlushAsync();
            await device.TrimAsync(0, 24 * 65536L);
        }
        foreach (var lblk in Enumerable.Range(0, 24))
            model[lblk] = new byte[65536];
        return (store, model);
    }

    [Fact]
    public async Task Grow_adds_zones_and_logical_space_and_keeps_the_data()
    {
        var (store, model) = await ThreeZonesAsync();
        var report = await DeviceResizer.ResizeAsync(store, 1024 * MiB, 2048 * MiB);
        Assert.Equal(3u, report.Before.NrZones);
        Assert.True(report.After.NrZones > 3);
        Assert.Equal(1024 * MiB, store.Length);
        Assert.Equal(0, report.LblksMoved);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
        await VerifyAsync(store, model);

        // The new zones take data.
        long far = 2048 * MiB / 65536 - 1;
        var data = Compressible(65536, 99);
        await using (var device = await OpenAsync(store))
        {
            Assert.Equal(2048 * MiB, device.Size);
            Assert.False(device.Recovered);
            await device.WriteAsync(far * 65536, data);
        }
        model[far] = data;
        await VerifyAsync(store, model);
        var check = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.Empty(check.Problems);
        Assert.True(check.ZonePblksUsed[(int)(far / report.After.LblkPerZone)] > 0);
    }

    [Fact]
    public async Task Grow_across_a_pblk_width_is_refused_with_the_size_limit()
    {
        var store = await FormatAsync(200 * MiB);
        var before = store.Clone();
        var e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(store, 300 * MiB));
        Assert.Contains("at most 256 MiB", e.Message);
        Assert.Contains("16 bits", e.Message);
        Assert.Equal(before.Length, store.Length);
        Assert.Empty((await DeviceChecker.CheckAsync(store)).Problems);

        var big = await FormatAsync(300 * MiB);
        e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(big, 200 * MiB, 200 * MiB));
        Assert.Contains("between 256 MiB + 4 KiB and 16 TiB", e.Message);
    }

    [Fact]
    public async Task Logical_size_beyond_what_the_lbats_hold_is_refused()
    {
        var (store, _) = await ThreeZonesAsync();
        var e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(store, 300 * MiB, 2048 * MiB));
        Assert.Contains("at most 900 MiB", e.Message);
    }

    [Fact]
    public async Task Shrink_moves_data_out_of_the_removed_part()
    {
        var (store, model) = await HighDataAsync();
        var report = await DeviceResizer.ResizeAsync(store, 2 * MiB);
        Assert.True(report.LblksMoved > 0);
        Assert.Equal(2 * MiB, store.Length);
        Assert.Equal(72 * MiB, (long)report.After.NrLogicalSectors * 512);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
        await VerifyAsync(store, model);
    }

    [Fact]
    public async Task Shrink_moves_lblks_out_of_removed_zones()
    {
        var store = await FormatAsync(600 * MiB);
        var model = Enumerable.Range(0, 10).ToDictionary(l => (long)l, l => Compressible(65536, l));
        await WriteAsync(store, model);
        var (header, g) = await ReadGeometryAsync(store);
        Assert.Equal(5u, header.NrZones);
        // As if zone 0 had been full when lblks 3 and 7 were written: their data sits in zones 4 and 3.
        await RelocateAsync(store, g, 3, g.DataStart(4) + 100);
        await RelocateAsync(store, g, 7, g.DataStart(3) + 5);
        Assert.True((await DeviceRepairer.RepairAsync(store)).Repaired);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);

        var e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(store, 300 * MiB));
        Assert.Contains("give a logical size of at most", e.Message);

        var report = await DeviceResizer.ResizeAsync(store, 300 * MiB, 1024 * MiB);
        Assert.Equal(3u, report.After.NrZones);
        Assert.Equal(2, report.LblksMoved);
        var check = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.Empty(check.Problems);
        Assert.Equal(10, check.LblksUsed);
        await VerifyAsync(store, model);
    }

    [Fact]
    public async Task Shrink_is_refused_when_the_data_does_not_fit_saying_how_much_to_free()
    {
        var (store, _) = await HighDataAsync();
        var before = store.Clone();
        var e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(store, 1 * MiB));
        Assert.Matches(@"Free at least \d+ (bytes|KiB|MiB)", e.Message);
        Assert.Equal(before.Length, store.Length);
        Assert.Empty((await DeviceChecker.CheckAsync(store)).Problems);
    }

    [Fact]
    public async Task Shrink_is_refused_while_lblks_past_the_new_logical_end_hold_data()
    {
        var (store, _) = await HighDataAsync();
        var e = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(store, 24 * MiB, 30 * 65536L));
        Assert.Contains("10 lblks past the new end hold data", e.Message);
        Assert.Contains("trim them first", e.Message);
    }

    [Fact]
    public async Task Resizing_a_file_grows_and_truncates_it()
    {
        string path = Path.Combine(Path.GetTempPath(), $"cbd-resize-{Guid.NewGuid():N}.img");
        try
        {
            await using var store = FileBackingStore.Create(path, 24 * MiB);
            await ImageFormatter.FormatAsync(store, new FormatOptions());
            var model = Enumerable.Range(0, 8).ToDictionary(l => (long)l, l => MaintenanceKit.Random(65536, l));
            await WriteAsync(store, model);

            await DeviceResizer.ResizeAsync(store, 200 * MiB);
            Assert.Equal(200 * MiB, new FileInfo(path).Length);
            await VerifyAsync(store, model);
            await DeviceResizer.ResizeAsync(store, 4 * MiB);
            Assert.Equal(4 * MiB, new FileInfo(path).Length);
            Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
            await VerifyAsync(store, model);
        }
        finally
        {
            File.Delete(path);
        }
    }

    public static TheoryData<string> Cases => ["grow", "shrink"];

    /// <summary>A resize cut at every change leaves an image that opens at the old or the new size with all data, and a second run finishes.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Interrupted_resize_leaves_an_image_that_opens(string which)
    {
        var (image, model) = which == "grow" ? await ThreeZonesAsync() : await HighDataAsync();
        long oldSize = (await ReadGeometryAsync(image)).Geometry.LogicalBytes;
        long physical = which == "grow" ? 600 * MiB : 2 * MiB;
        long? logical = which == "grow" ? 1400 * MiB : null;
        var full = new CrashingStore(image, int.MaxValue);
        var done = await DeviceResizer.ResizeAsync(full, physical, logical);
        long newSize = (long)done.After.NrLogicalSectors * 512;
        Assert.True(full.Changes > 3);
        Assert.True(which == "grow" ? done.After.NrZones > done.Before.NrZones : done.LblksMoved > 0);

        for (int cut = 0; cut < full.Changes; cut++)
        {
            for (int seed = 0; seed < 2; seed++)
            {
                var crashing = new CrashingStore(image, cut);
                await Assert.ThrowsAsync<IOException>(() => DeviceResizer.ResizeAsync(crashing, physical, logical));
                var after = crashing.AfterCrash(new Random(seed * 1000 + cut));
                await using (var device = await OpenAsync(after, new DeviceOptions { ReadOnly = true }))
                    Assert.Contains(device.Size, new[] { oldSize, newSize });
                await VerifyAsync(after, model);
                Assert.False((await DeviceChecker.CheckAsync(after)).HasErrors);

                await DeviceResizer.ResizeAsync(after, physical, logical);
                Assert.Empty((await DeviceChecker.CheckAsync(after, new CheckOptions { Data = true })).Problems);
                await VerifyAsync(after, model);
            }
        }
    }

    /// <summary>Copies an lblk's stored bytes to pblks starting at <paramref name="target"/> and points its entry there.</summary>
    private static async Task RelocateAsync(IBackingStore store, Geometry g, ulong lblk, ulong target)
    {
        var entry = await ReadEntryAsync(store, g, lblk);
        int used = entry.Used(g);
        var slots = new ulong[entry.Slots.Length];
        var pblk = new byte[Layout.PblkSize];
        for (int i = 0; i < used; i++)
        {
            await store.ReadAsync((long)entry.Slots[i] * Layout.PblkSize, pblk);
            slots[i] = target + (ulong)i;
            await store.WriteAsync((long)slots[i] * Layout.PblkSize, pblk);
        }
        await WriteEntryAsync(store, g, lblk, entry with { Slots = slots });
    }
}
