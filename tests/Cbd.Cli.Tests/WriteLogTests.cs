using System.Text.Json;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Cli.Tests;

/// <summary>
/// What info, check, resize, tune and import do with the write log (docs/FORMAT.md, "The write log"). Records are put in
/// the log with the format's own encoder, as the engine appends them, so that what the log holds is known exactly.
/// </summary>
public class WriteLogTests
{
    /// <summary>Appends data records at the log's tail, in seq order, as a session of the header's epoch writes them; returns where each starts.</summary>
    private static long[] AppendRecords(string image, params (ulong Lblk, int Offset, byte[] Data)[] records)
    {
        var g = ImageFile.ReadGeometry(image);
        var h = g.Header;
        Assert.True(h.HasLog, $"{image} has no write log");
        long position = (long)h.LogTail;
        ulong seq = h.LogSeq;
        var starts = new long[records.Length];
        for (int i = 0; i < records.Length; i++)
        {
            var (lblk, offset, data) = records[i];
            byte[] buffer = new byte[LogRecord.MaxBytes(data.Length)];
            var header = LogRecord.EncodeData(buffer, null, h.LogId, lblk, offset, data) with { Seq = seq++, Epoch = h.LogEpoch };
            LogRecord.Seal(buffer.AsSpan(0, header.Bytes), header);
            ImageFile.Write(image, g.LogStartByte + position, buffer[..header.Bytes]);
            starts[i] = position;
            position += header.Bytes;
        }
        return starts;
    }

    private static byte[] Pattern(int length, int seed)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static async Task<JsonElement> JsonAsync(int exitCode, params string[] arguments)
    {
        var result = await CbdTool.RunAsync(exitCode, [.. arguments, "--json"]);
        using var document = JsonDocument.Parse(result.StandardOutput);
        return document.RootElement.Clone();
    }

    [Fact]
    public async Task Info_shows_an_empty_log_of_a_new_image_and_none_for_a_1_0_image()
    {
        using var scratch = new Scratch();
        string image = scratch.File("log.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        var g = ImageFile.ReadGeometry(image);
        var log = (await JsonAsync(0, "info", image)).GetProperty("log");
        Assert.Equal(8L << 20, log.GetProperty("bytes").GetInt64());
        Assert.Equal(2048UL, log.GetProperty("pblks").GetUInt64());
        Assert.Equal(g.ZonesEnd, log.GetProperty("first_pblk").GetUInt64());
        Assert.Equal(0UL, log.GetProperty("tail").GetUInt64());
        Assert.Equal(g.Header.LogSeq, log.GetProperty("seq").GetUInt64());
        Assert.Equal(g.Header.LogEpoch, log.GetProperty("epoch").GetUInt32());
        Assert.Equal(0, log.GetProperty("records").GetInt64());
        Assert.Equal(0, log.GetProperty("lblks").GetInt64());
        Assert.Equal(0, log.GetProperty("used_bytes").GetInt64());
        Assert.Equal("bad_magic", log.GetProperty("end_reason").GetString());
        var text = await CbdTool.RunAsync(0, "info", image);
        Assert.Contains($"write log          8 MiB (2048 pblks from pblk {g.ZonesEnd}); tail 0", text.StandardOutput);
        Assert.Contains("log in use         empty; the scan ended at offset 0", text.StandardOutput);

        string old = scratch.File("old.cbd");
        await CbdTool.RunAsync(0, "format", old, "--size", "64M", "--log-size", "0");
        Assert.Equal(JsonValueKind.Null, (await JsonAsync(0, "info", old)).GetProperty("log").ValueKind);
        var oldText = await CbdTool.RunAsync(0, "info", old);
        Assert.Contains("format version 1.0", oldText.StandardOutput);
        Assert.Contains("write log          none (format version 1.0); cbd format --log-size makes an image with one (format version 1.2)",
            oldText.StandardOutput);
    }

    [Fact]
    public async Task Info_counts_the_records_in_the_log_their_lblks_and_bytes()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        long[] starts = AppendRecords(image, (3, 4096, Pattern(4096, 1)), (7, 0, Pattern(512, 2)), (3, 8192, Pattern(1000, 3)));
        var log = (await JsonAsync(0, "info", image)).GetProperty("log");
        Assert.Equal(3, log.GetProperty("records").GetInt64());
        Assert.Equal(2, log.GetProperty("lblks").GetInt64());
        // 4096 + 64 bytes take 9 sectors, 512 + 64 take 2, 1000 + 64 take 3.
        Assert.Equal(new long[] { 0, 9 * 512, 11 * 512 }, starts);
        Assert.Equal(14 * 512, log.GetProperty("used_bytes").GetInt64());
        Assert.Equal(14 * 512, log.GetProperty("end_offset").GetInt64());
        Assert.Equal(ImageFile.ReadGeometry(image).Header.LogSeq + 3, log.GetProperty("end_seq").GetUInt64());
        var text = await CbdTool.RunAsync(0, "info", image);
        Assert.Contains("3 records for 2 lblks, 7 KiB", text.StandardOutput);
        Assert.Contains("left by a close that lacked the space to merge them", text.StandardOutput);
    }

    [Fact]
    public async Task Check_reports_the_records_of_a_dirty_image_as_a_note_and_a_torn_last_record_is_no_error()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        long[] starts = AppendRecords(image, (3, 4096, Pattern(4096, 1)), (9, 512, Pattern(512, 2)), (12, 0, Pattern(2048, 3)));
        // The last append was cut short: its payload's end never reached the disk.
        var g = ImageFile.ReadGeometry(image);
        ImageFile.Write(image, g.LogStartByte + starts[2] + 1024, new byte[1024]);
        ImageFile.MarkDirty(image);

        var json = await JsonAsync(0, "check", image);
        Assert.Equal("clean", json.GetProperty("result").GetString());
        Assert.Equal(0, json.GetProperty("errors").GetInt64());
        var note = Assert.Single(json.GetProperty("problems").EnumerateArray(), p => p.GetProperty("kind").GetString() == "log_records");
        Assert.Equal("info", note.GetProperty("severity").GetString());
        Assert.Contains("the write log holds 2 records for 2 lblks", note.GetProperty("message").GetString());
        Assert.Contains("the next open replays them", note.GetProperty("message").GetString());
        var log = json.GetProperty("log");
        Assert.Equal(2, log.GetProperty("records").GetInt64());
        Assert.Equal(starts[2], log.GetProperty("end_offset").GetInt64());
        Assert.Equal("checksum_mismatch", log.GetProperty("end_reason").GetString());

        var text = await CbdTool.RunAsync(0, "check", image);
        Assert.Contains($"write log   2 records for 2 lblks, 5.5 KiB", text.StandardOutput);
        Assert.Contains($"the scan ended at offset {starts[2]} (seq {g.Header.LogSeq + 2}): a record whose checksum fails: an append cut short",
            text.StandardOutput);
        Assert.Contains("no errors", text.StandardOutput);
    }

    [Fact]
    public async Task Check_reports_records_left_in_a_clean_image_as_information()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        AppendRecords(image, (5, 0, Pattern(8192, 4)));
        var json = await JsonAsync(0, "check", image, "--data");
        Assert.Equal("clean", json.GetProperty("result").GetString());
        var note = Assert.Single(json.GetProperty("problems").EnumerateArray());
        Assert.Equal("log_records", note.GetProperty("kind").GetString());
        Assert.Equal("info", note.GetProperty("severity").GetString());
        Assert.Contains("a close that lacked the space to merge them left them", note.GetProperty("message").GetString());
        Assert.Equal(ImageFile.ReadGeometry(image).ZonesEnd, note.GetProperty("pblk").GetUInt64());
    }

    [Fact]
    public async Task Repair_leaves_the_log_as_it_is_and_says_so()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        AppendRecords(image, (3, 4096, Pattern(4096, 1)), (9, 512, Pattern(512, 2)));
        ImageFile.MarkDirty(image);
        var g = ImageFile.ReadGeometry(image);
        byte[] logBefore = ImageFile.Read(image, g.LogStartByte, (int)g.LogBytes);

        var json = await JsonAsync(1, "check", image, "--repair");
        Assert.Equal("corrected", json.GetProperty("result").GetString());
        var actions = json.GetProperty("repair").GetProperty("actions").EnumerateArray().Select(a => a.GetString()).ToList();
        Assert.Contains("left the write log as it is: its 2 records for 2 lblks are replayed into them at the next open", actions);

        var after = ImageFile.ReadGeometry(image);
        Assert.False(after.Header.Flags.HasFlag(HeaderFlags.Dirty));
        Assert.Equal((g.Header.LogTail, g.Header.LogSeq, g.Header.LogEpoch, g.Header.LogId),
            (after.Header.LogTail, after.Header.LogSeq, after.Header.LogEpoch, after.Header.LogId));
        Assert.Equal(logBefore, ImageFile.Read(image, g.LogStartByte, (int)g.LogBytes));
        Assert.Equal(2, (await JsonAsync(0, "info", image)).GetProperty("log").GetProperty("records").GetInt64());
    }

    [Fact]
    public async Task An_lblk_alloc_entry_naming_a_log_pblk_is_an_error()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        var g = ImageFile.ReadGeometry(image);
        var entry = ImageFile.ReadEntry(image, g, 3);
        Assert.NotEqual(0u, entry.Length);
        ulong inLog = g.ZonesEnd + 5;
        Assert.True(inLog < g.NrPblks);
        entry.Slots[0] = inLog;
        ImageFile.WriteEntry(image, g, 3, entry);

        var json = await JsonAsync(4, "check", image);
        var problem = Assert.Single(json.GetProperty("problems").EnumerateArray(), p => p.GetProperty("kind").GetString() == "pblk_in_metadata");
        Assert.Equal("error", problem.GetProperty("severity").GetString());
        Assert.Equal(3UL, problem.GetProperty("lblk").GetUInt64());
        Assert.Equal(inLog, problem.GetProperty("pblk").GetUInt64());
        Assert.Equal($"lblk 3: pblk[0] = {inLog} is in the write log (pblks {g.ZonesEnd}..{g.NrPblks - 1}), not a data pblk",
            problem.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Resize_moves_an_empty_log_to_the_new_end_with_its_tail_at_0_and_its_seq_kept()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        var before = ImageFile.ReadGeometry(image);
        // A log that went round: its tail is past offset 0, where a resize starts it over.
        await using (var store = FileBackingStore.Open(image, writable: true))
        {
            await (before.Header with { LogTail = 4096, LogSeq = 77 }).WriteAsync(store);
        }

        // Growing by less than the log's size moves it over part of where it was.
        foreach (string size in new[] { "48M", "24M", "+1M" })
        {
            await CbdTool.RunAsync(0, "resize", image, "--size", size);
            var g = ImageFile.ReadGeometry(image);
            Assert.Equal(before.LogPblks, g.LogPblks);
            Assert.Equal(g.NrPblks - g.LogPblks, g.ZonesEnd);
            Assert.Equal((0UL, 77UL, before.Header.LogId), (g.Header.LogTail, g.Header.LogSeq, g.Header.LogId));
            var log = (await JsonAsync(0, "check", image, "--data")).GetProperty("log");
            Assert.Equal(g.ZonesEnd, log.GetProperty("first_pblk").GetUInt64());
            Assert.Equal(0, log.GetProperty("records").GetInt64());
            string exported = scratch.File($"back-{g.NrPblks}.raw");
            await CbdTool.RunAsync(0, "export", image, exported);
            Assert.Equal(bytes, File.ReadAllBytes(exported));
        }

        // The moved log takes records: a write smaller than an lblk goes there, and info finds it while the device is open.
        byte[] small = Pattern(4096, 9);
        await using (var device = await CompressedDevice.OpenAsync(FileBackingStore.Open(image, writable: true),
            new DeviceOptions { FlushDelay = TimeSpan.FromHours(1) }))
        {
            await device.WriteAsync(5 * TestData.LblkSize + 4096, small);
            await device.FlushAsync();
            var log = (await JsonAsync(0, "info", image)).GetProperty("log");
            Assert.Equal(1, log.GetProperty("records").GetInt64());
            Assert.Equal(0UL, log.GetProperty("tail").GetUInt64());
        }
        byte[] expected = [.. bytes]; // the shared test data stays as it is
        small.CopyTo(expected, 5 * TestData.LblkSize + 4096);
        string final = scratch.File("final.raw");
        await CbdTool.RunAsync(0, "export", image, final);
        Assert.Equal(expected, File.ReadAllBytes(final));
    }

    [Fact]
    public async Task Resize_refuses_a_log_with_records_and_a_dirty_image_with_a_log_and_changes_nothing()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        AppendRecords(image, (3, 4096, Pattern(4096, 1)), (9, 512, Pattern(512, 2)));
        byte[] before = File.ReadAllBytes(image);
        await CbdTool.FailsAsync(1,
            "the write log holds 2 records for 2 lblks, and it moves with the end of the device; serve the image (cbd serve) and stop it, " +
            "so that its records are merged into their lblks and the log is left empty, then resize",
            "resize", image, "--size", "48M");
        Assert.Equal(before, File.ReadAllBytes(image));

        ImageFile.MarkDirty(image);
        before = File.ReadAllBytes(image);
        await CbdTool.FailsAsync(1, "the image was not closed clean, and the records of its write log are replayed only when it is next opened",
            "resize", image, "--size", "48M");
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [Fact]
    public async Task Tune_log_size_is_refused_with_the_commands_that_give_a_log()
    {
        using var scratch = new Scratch();
        string old = scratch.File("old.cbd");
        await CbdTool.RunAsync(0, "format", old, "--size", "64M", "--log-size", "0");
        byte[] before = File.ReadAllBytes(old);
        await CbdTool.FailsAsync(1,
            $"{old}: cannot tune --log-size: the image has no write log (format version 1.0) and one cannot be added in place; copy the data into a new image " +
            $"that has one: cbd export {old} {old}.raw, then cbd format NEW --size 64MiB --logical-size 192MiB --log-size 8MiB, then cbd import {old}.raw NEW",
            "tune", old, "--log-size", "8M");
        Assert.Equal(before, File.ReadAllBytes(old));

        string image = scratch.File("log.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        await CbdTool.FailsAsync(1, $"{image}: cannot tune --log-size: the write log's size (8 MiB) is fixed at format; for another, copy the data into a new image: " +
            $"cbd export {image} {image}.raw, then cbd format NEW --size 64MiB --logical-size 192MiB --log-size 16MiB, then cbd import {image}.raw NEW",
            "tune", image, "--log-size", "16M");
    }

    [Fact]
    public async Task Tune_refuses_a_logical_shrink_while_the_log_holds_records()
    {
        using var scratch = new Scratch();
        string image = scratch.File("log.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        AppendRecords(image, (2, 0, Pattern(512, 1)));
        await CbdTool.FailsAsync(1, "the write log holds 1 records for 1 lblks, which a smaller logical size may cut off",
            "tune", image, "--logical-size", "1M");
        Assert.Equal(64L << 20, new FileInfo(image).Length);
        Assert.Equal(192L << 20, ImageFile.ReadGeometry(image).LogicalBytes);
    }

    [Fact]
    public async Task Import_creates_an_image_with_the_default_log_and_room_for_every_lblk_uncompressed()
    {
        using var scratch = new Scratch();
        var (raw, _) = await TestData.RawAsync();
        string image = scratch.File("new.cbd");
        await CbdTool.RunAsync(0, "import", raw, image);
        var g = ImageFile.ReadGeometry(image);
        long physical = (long)g.NrPblks * Layout.PblkSize;
        Assert.Equal((ulong)(ImageFormatter.DefaultLogBytes(physical, TestData.LblkSize) / Layout.PblkSize), g.LogPblks);
        Assert.True(g.LogPblks > 0);
        ulong need = (ulong)(TestData.RawLength / Layout.PblkSize) + 2 * (TestData.LblkSize / Layout.PblkSize);
        Assert.True(g.TotalDataPblks >= need, $"{g.TotalDataPblks} data pblks, {need} needed");
        // The least such size: a pblk less would not hold them.
        var smaller = ImageFormatter.Plan(physical - Layout.PblkSize, new FormatOptions
        {
            LogicalSize = TestData.RawLength,
            LogSize = ImageFormatter.DefaultLogBytes(physical - Layout.PblkSize, TestData.LblkSize),
        });
        Assert.True(Geometry.FromHeader(smaller, physical).TotalDataPblks < need);
    }
}
