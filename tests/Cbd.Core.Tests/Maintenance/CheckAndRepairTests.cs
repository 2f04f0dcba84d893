using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Maintenance;

public class CheckAndRepairTests
{
    /// <summary>
    /// 200 MiB, 64 KiB lblks, CRC32Cs: two zones (the second partial), 4800 lblks per zone and a logical
    /// size one lblk short of the lbats, so lblk 9599 has an entry past the logical end.
    /// </summary>
    private static readonly FormatOptions s_format = new() { LogicalSize = 9599 * 65536L };

    private static readonly Lazy<Task<(MemoryBackingStore Store, Dictionary<long, byte[]> Model)>> s_image = new(BuildAsync);

    private static async Task<(MemoryBackingStore, Dictionary<long, byte[]>)> BuildAsync()
    {
        var store = await FormatAsync(200 * MiB, s_format);
        var model = new Dictionary<long, byte[]>();
        for (int lblk = 0; lblk < 20; lblk++)
            model[lblk] = Compressible(65536, lblk);
        for (int lblk = 20; lblk < 30; lblk++)
            model[lblk] = MaintenanceKit.Random(65536, lblk);
        for (int lblk = 4800; lblk < 4810; lblk++)
            model[lblk] = Compressible(65536, lblk);
        await WriteAsync(store, model);
        return (store, model);
    }

    private static async Task<(MemoryBackingStore Store, Dictionary<long, byte[]> Model)> ImageAsync()
    {
        var (store, model) = await s_image.Value;
        return (store.Clone(), model);
    }

    [Fact]
    public async Task Fresh_image_checks_clean()
    {
        var store = await FormatAsync(200 * MiB, s_format);
        var report = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.Empty(report.Problems);
        Assert.True(report.IsClean);
        Assert.Equal(0, report.LblksUsed);
        Assert.Equal(0, report.PblksUsed);
        Assert.Equal(2, report.ZonePblksUsed.Count);
    }

    [Fact]
    public async Task Used_image_checks_clean_and_counts_what_the_device_counts()
    {
        var (store, _) = await ImageAsync();
        DeviceStats stats;
        await using (var device = await OpenAsync(store, new DeviceOptions { ReadOnly = true }))
            stats = device.GetStats();
        var progress = new List<double>();
        var report = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true }, new SyncProgress<double>(p => { lock (progress) progress.Add(p); }));
        Assert.Empty(report.Problems);
        Assert.True(report.IsClean && report.DataChecked);
        Assert.Equal(40, report.LblksUsed);
        Assert.Equal(stats.LblksUsed, report.LblksUsed);
        Assert.Equal(stats.PblksUsed, report.PblksUsed);
        Assert.Equal(report.PblksUsed, report.ZonePblksUsed.Sum());
        Assert.True(report.ZonePblksUsed[1] > 0, "lblks 4800.. live in zone 1");
        Assert.Equal(1.0, progress[^1]);
    }

    [Fact]
    public async Task Check_never_writes()
    {
        var (store, _) = await ImageAsync();
        await CorruptAsync("shared-pblk", store);
        var noWrites = new CrashingStore(store, changesBeforeCrash: 0);
        var report = await DeviceChecker.CheckAsync(noWrites, new CheckOptions { Data = true });
        Assert.True(report.HasErrors);
        Assert.False(noWrites.Crashed);
    }

    public static TheoryData<string> Damages => [.. s_damages.Keys];

    /// <summary>
    /// Each damage is found where it is, repair fixes it losing at most the lblks it hit, the image
    /// then checks clean (data included), and every other lblk reads back what was written.
    /// </summary>
    [Theory]
    [MemberData(nameof(Damages))]
    public async Task Damage_is_reported_where_it_is_and_repair_loses_only_the_damaged_lblks(string damage)
    {
        var (store, model) = await ImageAsync();
        var expected = await CorruptAsync(damage, store);

        var check = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = expected.Data });
        Assert.True(check.HasErrors);
        Assert.Contains(check.Problems, p => p.Kind == expected.Kind && p.Severity == CheckSeverity.Error &&
            (expected.Lblk is null || p.Lblk == expected.Lblk) &&
            (expected.Zone is null || p.Zone == expected.Zone) &&
            (expected.Pblk is null || p.Pblk == expected.Pblk));

        var repair = await DeviceRepairer.RepairAsync(store, new RepairOptions { Data = expected.Data });
        Assert.True(repair.Repaired, repair.CannotRepairReason);
        Assert.True(repair.Wrote);
        Assert.Subset(new HashSet<ulong>(expected.MayLose), new HashSet<ulong>(repair.LostLblks));

        var after = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.Empty(after.Problems);
        await VerifyAsync(store, model, [.. repair.LostLblks, .. expected.Gone]);

        var again = await DeviceRepairer.RepairAsync(store, new RepairOptions { Data = true });
        Assert.True(again.Repaired);
        Assert.False(again.Wrote);
    }

    private sealed record Damage(CheckProblemKind Kind, ulong? Lblk = null, uint? Zone = null, ulong? Pblk = null, bool Data = false)
    {
        /// <summary>lblks that repair may report lost.</summary>
        public ulong[] MayLose { get; init; } = [];

        /// <summary>lblks whose entries the damage destroyed outright: nothing can report them, they read as zeros.</summary>
        public ulong[] Gone { get; init; } = [];
    }

    private static readonly Dictionary<string, Func<MemoryBackingStore, Geometry, Task<Damage>>> s_damages = new()
    {
        ["pbat-bit-set"] = async (s, g) =>
        {
            await SetPbatBitAsync(s, g, 0, 30000, true);
            return new Damage(CheckProblemKind.PbatMarksUnused, Zone: 0, Pblk: g.DataStart(0) + 30000);
        },
        ["pbat-bit-cleared"] = async (s, g) =>
        {
            ulong pblk = (await ReadEntryAsync(s, g, 0)).Slots[0];
            Assert.True(g.TryLocateDataPblk(pblk, out uint zone, out int bit));
            await SetPbatBitAsync(s, g, zone, bit, false);
            return new Damage(CheckProblemKind.PbatMissesUsed, Zone: zone, Pblk: pblk);
        },
        ["pbat-bit-past-data"] = async (s, g) =>
        {
            await SetPbatBitAsync(s, g, 1, g.DataPblks(1) + 3, true);
            return new Damage(CheckProblemKind.PbatBitsPastData, Zone: 1);
        },
        ["stats-wrong"] = async (s, g) =>
        {
            await WriteHeaderAsync(s, g.Header with { PblkUsed = g.Header.PblkUsed + 5 });
            return new Damage(CheckProblemKind.StatsMismatch);
        },
        ["pblk-outside-device"] = (s, g) => PatchAsync(s, g, 3, e => e.Slots[0] = 60000,
            new Damage(CheckProblemKind.PblkOutsideDevice, Lblk: 3, Pblk: 60000) { MayLose = [3] }),
        ["pblk-in-lbat"] = (s, g) => PatchAsync(s, g, 4, e => e.Slots[0] = g.LbatStart(0) + 1,
            new Damage(CheckProblemKind.PblkInMetadata, Lblk: 4, Pblk: g.LbatStart(0) + 1) { MayLose = [4] }),
        ["pblk-in-header"] = (s, g) => PatchAsync(s, g, 11, e => e.Slots[0] = 0,
            new Damage(CheckProblemKind.PblkInMetadata, Lblk: 11, Pblk: 0) { MayLose = [11] }),
        ["pblk-in-pbat"] = (s, g) => PatchAsync(s, g, 12, e => e.Slots[1] = g.ZoneStart(1),
            new Damage(CheckProblemKind.PblkInMetadata, Lblk: 12, Pblk: g.ZoneStart(1)) { MayLose = [12] }),
        ["shared-pblk"] = async (s, g) =>
        {
            ulong pblk = (await ReadEntryAsync(s, g, 5)).Slots[0];
            // lblk 5 keeps its data and passes its CRC: it must survive; lblk 6 now points at 5's bytes.
            return await PatchAsync(s, g, 6, e => e.Slots[0] = pblk,
                new Damage(CheckProblemKind.PblkClaimedTwice, Lblk: 5, Pblk: pblk) { MayLose = [6] });
        },
        ["pblk-twice-in-one-entry"] = (s, g) => PatchAsync(s, g, 10, e => e.Slots[1] = e.Slots[0],
            new Damage(CheckProblemKind.PblkClaimedTwice, Lblk: 10) { MayLose = [10] }),
        ["length-1"] = (s, g) => PatchAsync(s, g, 7, e => e with { Length = 1 },
            new Damage(CheckProblemKind.BadLength, Lblk: 7) { MayLose = [7] }),
        ["length-too-large"] = (s, g) => PatchAsync(s, g, 13, e => e with { Length = (uint)g.Alloc.MaxCompressedLength + 1 },
            new Damage(CheckProblemKind.BadLength, Lblk: 13) { MayLose = [13] }),
        ["unused-slot-not-zero"] = (s, g) => PatchAsync(s, g, 8, e => e.Slots[^1] = 12345,
            new Damage(CheckProblemKind.UnusedSlotNotZero, Lblk: 8, Pblk: 12345)),
        ["unallocated-entry-with-crc"] = (s, g) => PatchAsync(s, g, 100, e => e with { Crc = 5 },
            new Damage(CheckProblemKind.UnallocatedEntryNotZero, Lblk: 100)),
        ["entry-past-logical-end"] = (s, g) => PatchAsync(s, g, 9599, e => e.Slots[0] = 7,
            new Damage(CheckProblemKind.EntryPastLogicalEnd, Lblk: 9599)),
        ["flipped-bit-compressed"] = (s, g) => FlipAsync(s, g, 9),
        ["flipped-bit-uncompressed"] = (s, g) => FlipAsync(s, g, 25),
        ["undecodable-with-good-crc"] = async (s, g) =>
        {
            var e = await ReadEntryAsync(s, g, 14);
            var stored = new byte[e.Used(g) * Layout.PblkSize];
            await s.ReadAsync((long)e.Slots[0] * Layout.PblkSize, stored);
            Assert.Equal(e.Slots[0] + (ulong)e.Used(g) - 1, e.Slots[e.Used(g) - 1]);
            MaintenanceKit.Random((int)e.Length - 1, 14).CopyTo(stored, 1);
            await s.WriteAsync((long)e.Slots[0] * Layout.PblkSize, stored);
            await WriteEntryAsync(s, g, 14, e with { Crc = Checksums.LblkCrc(14, stored.AsSpan(0, (int)e.Length)) });
            return new Damage(CheckProblemKind.LblkUndecodable, Lblk: 14, Data: true) { MayLose = [14] };
        },
        ["truncated-store"] = async (s, g) =>
        {
            await s.SetLengthAsync((long)(g.DataStart(1) + 20) * Layout.PblkSize);
            return new Damage(CheckProblemKind.StoreTruncated) { MayLose = [.. Enumerable.Range(4800, 10).Select(l => (ulong)l)] };
        },
        ["truncated-into-zone-metadata"] = async (s, g) =>
        {
            await s.SetLengthAsync((long)(g.ZoneStart(1) + 1) * Layout.PblkSize - 1000);
            return new Damage(CheckProblemKind.MetadataPastStoreEnd, Zone: 1, Pblk: g.ZoneStart(1))
            {
                Gone = [.. Enumerable.Range(4800, 10).Select(l => (ulong)l)],
            };
        },
    };

    private static async Task<Damage> PatchAsync(IBackingStore store, Geometry g, ulong lblk, Func<RawEntry, RawEntry> patch, Damage damage)
    {
        var entry = await ReadEntryAsync(store, g, lblk);
        await WriteEntryAsync(store, g, lblk, patch(entry));
        return damage;
    }

    private static Task<Damage> PatchAsync(IBackingStore store, Geometry g, ulong lblk, Action<RawEntry> patch, Damage damage) =>
        PatchAsync(store, g, lblk, e =>
        {
            patch(e);
            return e;
        }, damage);

    private static async Task<Damage> FlipAsync(IBackingStore store, Geometry g, ulong lblk)
    {
        var entry = await ReadEntryAsync(store, g, lblk);
        long offset = (long)entry.Slots[0] * Layout.PblkSize + 100;
        var b = new byte[1];
        await store.ReadAsync(offset, b);
        b[0] ^= 0x10;
        await store.WriteAsync(offset, b);
        return new Damage(CheckProblemKind.LblkChecksumMismatch, Lblk: lblk, Data: true) { MayLose = [lblk] };
    }

    private static async Task<Damage> CorruptAsync(string damage, MemoryBackingStore store)
    {
        var (_, g) = await ReadGeometryAsync(store);
        return await s_damages[damage](store, g);
    }

    [Fact]
    public async Task Flipped_bit_is_found_only_by_a_data_check()
    {
        var (store, _) = await ImageAsync();
        await FlipAsync(store, (await ReadGeometryAsync(store)).Geometry, 9);
        Assert.Empty((await DeviceChecker.CheckAsync(store)).Problems);
        var repair = await DeviceRepairer.RepairAsync(store);
        Assert.False(repair.Wrote);
        Assert.Contains((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems,
            p => p.Kind == CheckProblemKind.LblkChecksumMismatch && p.Lblk == 9);
    }

    [Fact]
    public async Task Without_checksums_every_claimant_of_a_shared_pblk_is_lost()
    {
        var store = await FormatAsync(64 * MiB, new FormatOptions { LblkChecksums = false });
        var model = Enumerable.Range(0, 8).ToDictionary(l => (long)l, l => Compressible(65536, l));
        await WriteAsync(store, model);
        var (_, g) = await ReadGeometryAsync(store);
        ulong pblk = (await ReadEntryAsync(store, g, 2)).Slots[0];
        await PatchAsync(store, g, 3, e => e.Slots[0] = pblk, new Damage(CheckProblemKind.PblkClaimedTwice));

        var repair = await DeviceRepairer.RepairAsync(store, new RepairOptions { Data = true });
        Assert.Equal([2UL, 3UL], repair.LostLblks);
        Assert.Empty((await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true })).Problems);
        await VerifyAsync(store, model, repair.LostLblks);
    }

    [Fact]
    public async Task Corrupt_header_is_reported_and_not_repaired()
    {
        var (store, _) = await ImageAsync();
        var b = new byte[1];
        await store.ReadAsync(0x10, b);
        b[0] ^= 1;
        await store.WriteAsync(0x10, b);
        var before = store.Clone();

        var check = await DeviceChecker.CheckAsync(store);
        Assert.True(check.IsFatal);
        var problem = Assert.Single(check.Problems);
        Assert.Equal(CheckProblemKind.HeaderCorrupt, problem.Kind);
        Assert.Contains("checksum", problem.Message);

        var repair = await DeviceRepairer.RepairAsync(store);
        Assert.False(repair.Repaired);
        Assert.False(repair.Wrote);
        Assert.Contains("checksum", repair.CannotRepairReason);
        Assert.True(await SameAsync(before, store));
    }

    [Fact]
    public async Task Not_a_cbd_image_is_reported()
    {
        var store = new MemoryBackingStore(1 * MiB);
        var check = await DeviceChecker.CheckAsync(store);
        Assert.Equal(CheckProblemKind.NotCbdImage, Assert.Single(check.Problems).Kind);
        Assert.Equal(CheckProblemKind.StoreTooShort, Assert.Single((await DeviceChecker.CheckAsync(new MemoryBackingStore(100))).Problems).Kind);
    }

    [Fact]
    public async Task Dirty_image_reports_a_rebuild_not_errors_and_repair_makes_it_clean()
    {
        var store = await FormatAsync(64 * MiB);
        var model = Enumerable.Range(0, 12).ToDictionary(l => (long)l, l => Compressible(65536, l));
        MemoryBackingStore crashed;
        await using (var device = await OpenAsync(store))
        {
            foreach (var (lblk, data) in model)
                await device.WriteAsync(lblk * 65536, data);
            await device.FlushAsync();
            crashed = store.Clone(); // as if the power went now: dirty flag set, pbats never written
        }

        var check = await DeviceChecker.CheckAsync(crashed, new CheckOptions { Data = true });
        Assert.False(check.IsClean);
        Assert.False(check.HasErrors);
        var info = Assert.Single(check.Problems);
        Assert.Equal(CheckProblemKind.ImageDirty, info.Kind);
        Assert.Equal(CheckSeverity.Info, info.Severity);
        Assert.Equal(12, check.LblksUsed);

        var repair = await DeviceRepairer.RepairAsync(crashed);
        Assert.True(repair.Repaired && repair.Wrote);
        Assert.Empty(repair.LostLblks);
        var after = await DeviceChecker.CheckAsync(crashed, new CheckOptions { Data = true });
        Assert.Empty(after.Problems);
        Assert.True(after.IsClean);
        await using (var device = await OpenAsync(crashed, new DeviceOptions { ReadOnly = true }))
            Assert.False(device.Recovered);
        await VerifyAsync(crashed, model);
    }

    /// <summary>
    /// A repair cut short at every point leaves an image that opens with every intact lblk readable,
    /// and running repair again finishes the job.
    /// </summary>
    [Fact]
    public async Task Interrupted_repair_leaves_an_image_that_opens_and_a_second_repair_finishes()
    {
        var (image, model) = await ImageAsync();
        var (_, g) = await ReadGeometryAsync(image);
        await s_damages["pbat-bit-cleared"](image, g);
        await s_damages["pbat-bit-set"](image, g);
        await s_damages["stats-wrong"](image, g);
        await s_damages["unallocated-entry-with-crc"](image, g);
        await s_damages["pblk-in-lbat"](image, g);

        var full = new CrashingStore(image, int.MaxValue);
        await DeviceRepairer.RepairAsync(full);
        Assert.True(full.Changes >= 4);
        for (int cut = 0; cut < full.Changes; cut++)
        {
            for (int seed = 0; seed < 2; seed++)
            {
                var crashing = new CrashingStore(image, cut);
                await Assert.ThrowsAsync<IOException>(() => DeviceRepairer.RepairAsync(crashing));
                var after = crashing.AfterCrash(new Random(seed));
                var intact = model.Where(m => m.Key != 4).ToDictionary();
                await VerifyAsync(after, intact);
                var repair = await DeviceRepairer.RepairAsync(after);
                Assert.True(repair.Repaired);
                Assert.Empty((await DeviceChecker.CheckAsync(after, new CheckOptions { Data = true })).Problems);
                await VerifyAsync(after, intact);
            }
        }
    }

    private static async Task<bool> SameAsync(MemoryBackingStore a, MemoryBackingStore b)
    {
        if (a.Length != b.Length)
            return false;
        var x = new byte[1 << 20];
        var y = new byte[1 << 20];
        for (long at = 0; at < a.Length; at += x.Length)
        {
            int n = (int)Math.Min(x.Length, a.Length - at);
            await a.ReadAsync(at, x.AsMemory(0, n));
            await b.ReadAsync(at, y.AsMemory(0, n));
            if (!x.AsSpan(0, n).SequenceEqual(y.AsSpan(0, n)))
                return false;
        }
        return true;
    }
}

/// <summary>Reports on the caller's thread, unlike <see cref="Progress{T}"/>, so a test sees every value at once.</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
