using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Maintenance;

/// <summary>
/// <see cref="ImageTrimmer"/> punches free pblks only: never one an lblk_alloc entry names, whatever its pbat says, and
/// nothing at all on an image with invalid entries. The stores are sparse in-memory ones, whose punches zero the bytes.
/// </summary>
public class ImageTrimmerTests
{
    private const int LblkSize = 65536;

    /// <summary>20 lblks written, then rewritten with the device left punching nothing: their first copies sit in free pblks.</summary>
    private static async Task<(MemoryBackingStore Store, Geometry Geometry, Dictionary<long, byte[]> Model)> ImageAsync()
    {
        var store = await FormatAsync(32 * MiB);
        var model = new Dictionary<long, byte[]>();
        var ignore = new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Discard = DiscardMode.Ignore };
        for (int round = 0; round < 2; round++)
        {
            await using var device = await OpenAsync(store, ignore);
            for (int lblk = 0; lblk < 20; lblk++)
                await device.WriteAsync(lblk * LblkSize, model[lblk] = Random(LblkSize, round * 100 + lblk));
        }
        var (_, g) = await ReadGeometryAsync(store);
        return (store, g, model);
    }

    [Fact]
    public async Task Trim_releases_the_free_pblks_and_keeps_every_lblk()
    {
        var (store, _, model) = await ImageAsync();
        long before = store.AllocatedBytes;
        var report = await ImageTrimmer.TrimAsync(store);
        Assert.True(report.PbatsUsed);
        Assert.Equal(before, report.AllocatedBefore);
        Assert.True(report.AllocatedAfter <= before - 20 * LblkSize, $"{before} -> {report.AllocatedAfter} bytes allocated");
        await VerifyAsync(store, model);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
    }

    /// <summary>A pbat that marks a live lblk's pblks free (damage) does not get them punched: the lbats have the last word.</summary>
    [Fact]
    public async Task A_pbat_marking_live_pblks_free_does_not_get_them_punched()
    {
        var (store, g, model) = await ImageAsync();
        var entry = await ReadEntryAsync(store, g, 7);
        foreach (ulong pblk in entry.Slots.Take(entry.Used(g)))
        {
            Assert.True(g.TryLocateDataPblk(pblk, out uint zone, out int bit));
            await SetPbatBitAsync(store, g, zone, bit, false);
        }
        await ImageTrimmer.TrimAsync(store);
        await VerifyAsync(store, model);
    }

    /// <summary>
    /// A dirty image's pbats are stale: the lbats alone decide, as its next open does. The first data pblk, which held
    /// the first copy of an lblk before the rewrite, is marked in use in the pbat and still punched.
    /// </summary>
    [Fact]
    public async Task A_dirty_image_is_trimmed_by_its_lbats_alone()
    {
        var (store, g, model) = await ImageAsync();
        await WriteHeaderAsync(store, g.Header with { Flags = g.Header.Flags | HeaderFlags.Dirty });
        ulong first = g.DataStart(0);
        for (long lblk = 0; lblk < 20; lblk++)
            Assert.DoesNotContain(first, (await ReadEntryAsync(store, g, (ulong)lblk)).Slots);
        Assert.True(g.TryLocateDataPblk(first, out uint zone, out int bit));
        await SetPbatBitAsync(store, g, zone, bit, true);
        var page = new byte[Layout.PblkSize];
        await store.ReadAsync((long)first * Layout.PblkSize, page);
        Assert.True(page.AsSpan().ContainsAnyExcept((byte)0), "the first data pblk should hold an old copy");

        var report = await ImageTrimmer.TrimAsync(store);
        Assert.False(report.PbatsUsed);
        await store.ReadAsync((long)first * Layout.PblkSize, page);
        Assert.False(page.AsSpan().ContainsAnyExcept((byte)0), "a pblk no entry names was kept for its stale pbat bit");
        await VerifyAsync(store, model);
    }

    [Fact]
    public async Task An_image_with_an_invalid_entry_is_refused_and_left_as_it_is()
    {
        var (store, g, _) = await ImageAsync();
        var entry = await ReadEntryAsync(store, g, 3);
        await WriteEntryAsync(store, g, 3, entry with { Length = 1 }); // no valid stored length
        long before = store.AllocatedBytes;
        var refusal = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => ImageTrimmer.TrimAsync(store));
        Assert.Contains("run cbd check --repair first", refusal.Message);
        Assert.Equal(before, store.AllocatedBytes);
    }
}
