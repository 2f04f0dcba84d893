using System.Collections.Concurrent;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Damaged metadata costs at most the lblks it names: the device never overwrites a live pblk because of
/// it, never stops serving the other lblks, names each damaged lblk in one log line, and closes into
/// an image that opens again and that repair makes clean.
/// </summary>
public class DamageTests
{
    private const int LblkSize = 65536;

    /// <summary>
    /// 200 MiB, two zones (the second partial) of 4800 lblks; lblks 0..19 compressible, 20..29 random
    /// (stored uncompressed), 4800..4809 in zone 1; closed clean.
    /// </summary>
    private static async Task<(MemoryBackingStore Store, Geometry Geometry, Dictionary<long, byte[]> Model)> ImageAsync()
    {
        var store = await FormatAsync(200 * MiB, new FormatOptions { LogicalSize = 9599L * LblkSize });
        var model = new Dictionary<long, byte[]>();
        for (int lblk = 0; lblk < 20; lblk++)
            model[lblk] = Compressible(LblkSize, lblk);
        for (int lblk = 20; lblk < 30; lblk++)
            model[lblk] = DeviceTestKit.Random(LblkSize, lblk);
        for (int lblk = 4800; lblk < 4810; lblk++)
            model[lblk] = Compressible(LblkSize, lblk);
        await WriteAsync(store, model);
        var (_, g) = await ReadGeometryAsync(store);
        return (store, g, model);
    }

    /// <summary>An lblk that compresses into one pblk, different for each seed.</summary>
    private static byte[] Small(int seed)
    {
        var data = new byte[LblkSize];
        DeviceTestKit.Random(64, seed).CopyTo(data, 0);
        return data;
    }

    private sealed class LogLines
    {
        public ConcurrentQueue<string> Lines { get; } = new();
        public Action<string> Sink => Lines.Enqueue;
        public string All => string.Join('\n', Lines);
    }

    private static ValueTask<CompressedDevice> OpenAsync(IBackingStore store, LogLines log, bool readOnly = false) =>
        DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Log = log.Sink, ReadOnly = readOnly });

    /// <summary>
    /// Writes 600 one-pblk lblks from lblk 100 on (all with home zone 0) and flushes: allocation is first
    /// fit, so they take every free pblk among the first few hundred of zone 0, where the image's lblks live.
    /// </summary>
    private static async Task<Dictionary<long, byte[]>> FillAsync(CompressedDevice device, long firstLblk)
    {
        var written = new Dictionary<long, byte[]>();
        for (long lblk = firstLblk; lblk < firstLblk + 600; lblk++)
        {
            written[lblk] = Small((int)lblk);
            await device.WriteAsync(lblk * LblkSize, written[lblk]);
        }
        await device.FlushAsync();
        return written;
    }

    private static async Task AssertReadsAsync(CompressedDevice device, IReadOnlyDictionary<long, byte[]> model, params long[] except)
    {
        var back = new byte[LblkSize];
        foreach (var (lblk, data) in model)
        {
            if (except.Contains(lblk))
                continue;
            await device.ReadAsync(lblk * LblkSize, back);
            Assert.True(data.AsSpan().SequenceEqual(back), $"lblk {lblk} does not read back what was written");
        }
    }

    private static async Task<CheckReport> RepairAndCheckAsync(IBackingStore store)
    {
        var repair = await DeviceRepairer.RepairAsync(store, new RepairOptions { Data = true });
        Assert.True(repair.Repaired, repair.CannotRepairReason);
        var check = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.Empty(check.Problems);
        return check;
    }

    [Fact]
    public async Task Pbat_bits_cleared_under_a_live_lblk_are_fenced_so_new_writes_never_overwrite_it()
    {
        var (store, g, model) = await ImageAsync();
        var entry = await ReadEntryAsync(store, g, 3);
        foreach (ulong pblk in entry.Slots.Take(entry.Used(g)))
        {
            Assert.True(g.TryLocateDataPblk(pblk, out uint zone, out int bit));
            await SetPbatBitAsync(store, g, zone, bit, false);
        }

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log))
        {
            var filled = await FillAsync(device, 100);
            await AssertReadsAsync(device, model);
            await AssertReadsAsync(device, filled);
        }
        Assert.Contains($"pblks in use by lblks were marked free (first {entry.Slots[0]})", log.All);
        await RepairAndCheckAsync(store);
        await VerifyAsync(store, model);
    }

    [Fact]
    public async Task Pblk_claimed_twice_is_never_freed_when_one_claimant_is_rewritten()
    {
        var (store, g, model) = await ImageAsync();
        ulong shared = (await ReadEntryAsync(store, g, 5)).Slots[0];
        var six = await ReadEntryAsync(store, g, 6);
        six.Slots[0] = shared;
        await WriteEntryAsync(store, g, 6, six);

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log))
        {
            // lblk 6 rewritten whole: its old entry names lblk 5's pblk, which must stay in use.
            model[6] = Compressible(LblkSize, 600);
            await device.WriteAsync(6 * LblkSize, model[6]);
            var filled = await FillAsync(device, 100);
            await AssertReadsAsync(device, model);
            await AssertReadsAsync(device, filled);
        }
        Assert.Contains($"pblk {shared} is claimed by more than one lblk", log.All);
        await RepairAndCheckAsync(store);
        await VerifyAsync(store, model);
    }

    [Fact]
    public async Task Dirty_image_with_a_pblk_claimed_twice_opens_and_keeps_the_pblk()
    {
        var (store, g, model) = await ImageAsync();
        ulong shared = (await ReadEntryAsync(store, g, 5)).Slots[0];
        var six = await ReadEntryAsync(store, g, 6);
        six.Slots[0] = shared;
        await WriteEntryAsync(store, g, 6, six);
        await WriteHeaderAsync(store, g.Header with { Flags = g.Header.Flags | HeaderFlags.Dirty });

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log))
        {
            Assert.True(device.Recovered);
            await Assert.ThrowsAsync<LblkCorruptException>(async () => await device.ReadAsync(6 * LblkSize, new byte[LblkSize]));
            model[6] = Compressible(LblkSize, 600);
            await device.WriteAsync(6 * LblkSize, model[6]);
            await FillAsync(device, 100);
            await AssertReadsAsync(device, model);
        }
        Assert.Contains($"pblk {shared} is claimed by more than one lblk", log.All);
        Assert.Contains("lblk 6: checksum mismatch", log.All);
        await RepairAndCheckAsync(store);
        await VerifyAsync(store, model);
    }

    [Theory]
    [InlineData("unused-slot", false)]
    [InlineData("unused-slot", true)]
    [InlineData("bad-length", false)]
    [InlineData("pblk-in-lbat", true)]
    public async Task Invalid_entry_costs_its_lblk_only_and_a_whole_overwrite_replaces_it(string damage, bool dirty)
    {
        var (store, g, model) = await ImageAsync();
        const long Bad = 8;
        var entry = await ReadEntryAsync(store, g, Bad);
        switch (damage)
        {
            case "unused-slot":
                entry.Slots[^1] = entry.Slots[0] + 1000;
                break;
            case "bad-length":
                entry = entry with { Length = 1 };
                break;
            default:
                entry.Slots[1] = g.LbatStart(0);
                break;
        }
        await WriteEntryAsync(store, g, Bad, entry);
        if (dirty)
            await WriteHeaderAsync(store, g.Header with { Flags = g.Header.Flags | HeaderFlags.Dirty });

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log))
        {
            var e = await Assert.ThrowsAsync<LblkCorruptException>(async () => await device.ReadAsync(Bad * LblkSize, new byte[LblkSize]));
            Assert.Equal(Bad, e.Lblk);
            // A partial write needs the old contents: it fails for that lblk alone.
            await Assert.ThrowsAsync<LblkCorruptException>(async () => await device.WriteAsync(Bad * LblkSize + 4096, new byte[4096]));
            // Writes to other lblks are acknowledged before the damaged one is written back with them.
            model[1] = Compressible(LblkSize, 100);
            await device.WriteAsync(1 * LblkSize, model[1]);
            model[Bad] = Compressible(LblkSize, 800);
            await device.WriteAsync(Bad * LblkSize, model[Bad]);
            await device.FlushAsync();
            var filled = await FillAsync(device, 100);
            await AssertReadsAsync(device, model);
            await AssertReadsAsync(device, filled);
        }
        Assert.Single(log.Lines, l => l.StartsWith($"lblk {Bad}: invalid lblk_alloc entry", StringComparison.Ordinal) && l.Contains("reads as an I/O error"));
        Assert.DoesNotContain("   at ", log.All);

        // The clean close left an image that opens and reads the lblk's new contents.
        await using (var device = await OpenAsync(store, new LogLines()))
            await AssertReadsAsync(device, model);
        await RepairAndCheckAsync(store);
        await VerifyAsync(store, model);
    }

    [Fact]
    public async Task Invalid_entry_left_alone_keeps_the_image_opening_after_clean_and_unclean_closes()
    {
        var (store, g, model) = await ImageAsync();
        var entry = await ReadEntryAsync(store, g, 8);
        entry.Slots[^1] = 12345;
        await WriteEntryAsync(store, g, 8, entry);
        model.Remove(8);

        await using (var device = await OpenAsync(store, new LogLines()))
        {
            await device.WriteAsync(2 * LblkSize, model[2] = Compressible(LblkSize, 200));
            await device.FlushAsync();
        }
        var dirty = await ReadGeometryAsync(store);
        await WriteHeaderAsync(store, dirty.Header with { Flags = dirty.Header.Flags | HeaderFlags.Dirty });
        var log = new LogLines();
        await using (var device = await OpenAsync(store, log))
        {
            Assert.True(device.Recovered);
            await AssertReadsAsync(device, model);
            await Assert.ThrowsAsync<LblkCorruptException>(async () => await device.ReadAsync(8 * LblkSize, new byte[LblkSize]));
        }
        Assert.Contains("lblk 8: invalid lblk_alloc entry", log.All);
        await RepairAndCheckAsync(store);
    }

    [Fact]
    public async Task Pbat_bits_past_the_data_are_cleared_and_logged_not_fatal()
    {
        var (store, g, model) = await ImageAsync();
        await SetPbatBitAsync(store, g, 1, g.DataPblks(1) + 3, true);

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log))
        {
            // lblk 4805's home is the damaged zone: its write-back reads that pbat.
            await device.WriteAsync(4805 * LblkSize, model[4805] = Compressible(LblkSize, 4805_1));
            await device.FlushAsync();
            await AssertReadsAsync(device, model);
        }
        Assert.Contains($"zone 1 pbat: 1 bits set past its {g.DataPblks(1)} data pblks; cleared", log.All);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
    }

    [Fact]
    public async Task Damaged_stored_bytes_are_logged_once_and_cost_their_lblk()
    {
        var (store, g, model) = await ImageAsync();
        var entry = await ReadEntryAsync(store, g, 9);
        var b = new byte[1];
        long at = (long)entry.Slots[0] * Layout.PblkSize + 100;
        await store.ReadAsync(at, b);
        b[0] ^= 0x10;
        await store.WriteAsync(at, b);

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log, readOnly: true))
        {
            for (int i = 0; i < 2; i++)
                await Assert.ThrowsAsync<LblkCorruptException>(async () => await device.ReadAsync(9 * LblkSize, new byte[LblkSize]));
            await AssertReadsAsync(device, model, except: 9);
        }
        Assert.Single(log.Lines, l => l.StartsWith("lblk 9: checksum mismatch", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_small_read_that_decodes_part_of_an_lblk_still_checks_all_its_stored_bytes()
    {
        var (store, g, model) = await ImageAsync();
        // The last stored byte of lblk 9, past what a read of its first 4 KiB decodes.
        var entry = await ReadEntryAsync(store, g, 9);
        Assert.True(entry.Used(g) > 1, $"lblk 9 takes {entry.Used(g)} pblk(s)");
        int last = (int)entry.Length - 1;
        long at = (long)entry.Slots[last / Layout.PblkSize] * Layout.PblkSize + last % Layout.PblkSize;
        var b = new byte[1];
        await store.ReadAsync(at, b);
        b[0] ^= 0x10;
        await store.WriteAsync(at, b);

        var log = new LogLines();
        await using (var device = await OpenAsync(store, log, readOnly: true))
        {
            await Assert.ThrowsAsync<LblkCorruptException>(async () => await device.ReadAsync(9 * LblkSize, new byte[4096]));
            await AssertReadsAsync(device, model, except: 9);
        }
        Assert.Single(log.Lines, l => l.StartsWith("lblk 9: checksum mismatch", StringComparison.Ordinal));
    }
}
