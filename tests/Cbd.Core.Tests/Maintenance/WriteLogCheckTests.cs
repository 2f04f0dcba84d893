using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Maintenance;

/// <summary>Check, repair and resize on images with a write log (docs/FORMAT.md, "The write log").</summary>
public class WriteLogCheckTests
{
    private static readonly FormatOptions s_format = new() { LogSize = 8 * MiB };

    [Fact]
    public async Task An_entry_naming_a_log_pblk_is_reported_and_repair_clears_it_leaving_the_log_alone()
    {
        var store = await FormatAsync(64 * MiB, s_format);
        var model = new Dictionary<long, byte[]> { [1] = Compressible(65536, 1), [2] = Compressible(65536, 2) };
        await WriteAsync(store, model);
        var (_, g) = await ReadGeometryAsync(store);
        var entry = await ReadEntryAsync(store, g, 2);
        ulong inLog = g.ZonesEnd;
        entry.Slots[0] = inLog;
        await WriteEntryAsync(store, g, 2, entry);
        byte[] log = new byte[g.LogBytes];
        await store.ReadAsync(g.LogStartByte, log);

        var report = await DeviceChecker.CheckAsync(store);
        // The entry is invalid; the pbat and stats that counted it follow from that.
        var problem = Assert.Single(report.Problems, p => p.Kind == CheckProblemKind.PblkInMetadata);
        Assert.Equal(CheckSeverity.Error, problem.Severity);
        Assert.Equal((2UL, inLog), (problem.Lblk, problem.Pblk));
        Assert.Contains($"is in the write log (pblks {g.ZonesEnd}..{g.NrPblks - 1})", problem.Message);

        var repair = await DeviceRepairer.RepairAsync(store);
        Assert.Equal(new ulong[] { 2 }, repair.LostLblks);
        Assert.Empty((await DeviceChecker.CheckAsync(store)).Problems);
        byte[] after = new byte[g.LogBytes];
        await store.ReadAsync(g.LogStartByte, after);
        Assert.Equal(log, after);
        await VerifyAsync(store, model, lost: [2UL]);
    }

    [Fact]
    public async Task Records_the_engine_appended_before_a_crash_are_a_note_with_their_count_and_lblks()
    {
        var store = await FormatAsync(64 * MiB, s_format);
        await using var device = await OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromHours(1) });
        await device.WriteAsync(3 * 65536 + 4096, Compressible(4096, 1));
        await device.WriteAsync(7 * 65536, Compressible(512, 2));
        await device.WriteAsync(3 * 65536 + 8192, Compressible(1024, 3));
        await device.FlushAsync();
        // What the store holds now is what a power cut here leaves: dirty, the records in the log.
        var crashed = store.Clone();

        var report = await DeviceChecker.CheckAsync(crashed);
        Assert.False(report.IsClean);
        Assert.False(report.HasErrors);
        Assert.Equal((3L, 2L), (report.Log!.Records, report.Log.Lblks));
        var note = Assert.Single(report.Problems, p => p.Kind == CheckProblemKind.LogRecords);
        Assert.Equal(CheckSeverity.Info, note.Severity);
        Assert.Contains("the write log holds 3 records for 2 lblks", note.Message);
        Assert.Contains("the next open replays them", note.Message);
    }

    [Fact]
    public async Task Resize_refuses_a_log_with_records_and_moves_an_empty_one()
    {
        var store = await FormatAsync(64 * MiB, s_format);
        var crashed = store.Clone();
        await using (var device = await OpenAsync(crashed, new DeviceOptions { FlushDelay = TimeSpan.FromHours(1) }))
        {
            await device.WriteAsync(65536 + 512, Compressible(512, 1));
            await device.FlushAsync();
            crashed = crashed.Clone();
        }
        // A clean header over records, as a close that lacked the space to merge them leaves it.
        var (header, _) = await ReadGeometryAsync(crashed);
        await WriteHeaderAsync(crashed, header with { Flags = header.Flags & ~HeaderFlags.Dirty });
        var refused = await Assert.ThrowsAsync<MaintenanceRefusedException>(() => DeviceResizer.ResizeAsync(crashed, 96 * MiB));
        Assert.Contains("the write log holds 1 records for 1 lblks", refused.Message);

        var before = (await ReadGeometryAsync(store)).Geometry;
        var resized = await DeviceResizer.ResizeAsync(store, 96 * MiB);
        var g = (await ReadGeometryAsync(store)).Geometry;
        Assert.Equal(before.LogPblks, g.LogPblks);
        Assert.Equal(g.NrPblks - g.LogPblks, g.ZonesEnd);
        Assert.Equal(0UL, resized.After.LogTail);
        Assert.Equal(before.Header.LogSeq, resized.After.LogSeq);
        Assert.True((await LogSummary.ReadAsync(store, g))!.IsEmpty);
        Assert.Empty((await DeviceChecker.CheckAsync(store)).Problems);
    }
}
