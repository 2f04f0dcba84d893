using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// The write log as the engine uses it (FORMAT.md, "The write log"): small writes appended and read back through it,
/// merged when the log fills and at close, replayed after a crash; whole-lblk writes and trims over records.
/// </summary>
public class WriteLogTests
{
    private const long MiB = 1 << 20;
    private const int LblkSize = 65536;

    private static Task<MemoryBackingStore> FormatAsync(long logSize = 4 * MiB, long physical = 64 * MiB) =>
        DeviceTestKit.FormatAsync(physical, new FormatOptions { LogSize = logSize });

    private static async Task<byte[]> ReadAsync(CompressedDevice device, long offset, int length)
    {
        var buffer = new byte[length];
        await device.ReadAsync(offset, buffer);
        return buffer;
    }

    [Fact]
    public async Task A_small_write_goes_to_the_log_and_reads_back_before_any_merge()
    {
        var store = await FormatAsync();
        await using var device = await DeviceTestKit.OpenAsync(store);
        var data = DeviceTestKit.Compressible(4096, 1);
        await device.WriteAsync(3 * LblkSize + 8192, data);
        await device.FlushAsync();
        var stats = device.GetStats();
        Assert.True(stats.LogUsedBytes > 0, "the write did not reach the log");
        Assert.Equal(1, stats.LogPendingLblks);
        Assert.Equal(0, stats.LblksUsed); // the lblk itself was not rewritten
        Assert.Equal(0, stats.DirtyLblks);
        Assert.Equal(data, await ReadAsync(device, 3 * LblkSize + 8192, 4096));
        Assert.Equal(new byte[8192], await ReadAsync(device, 3 * LblkSize, 8192));
        var extents = await device.GetBlockStatusAsync(3 * LblkSize, LblkSize);
        Assert.False(extents[0].IsHole);
    }

    [Fact]
    public async Task A_clean_close_merges_every_record_and_leaves_the_log_empty()
    {
        var store = await FormatAsync();
        var expected = new byte[8 * LblkSize];
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            var random = new Random(3);
            for (int i = 0; i < 200; i++)
            {
                int offset = random.Next(expected.Length / 512 - 16) * 512;
                var data = DeviceTestKit.Compressible(512 * random.Next(1, 16), i);
                await device.WriteAsync(offset, data);
                data.CopyTo(expected, offset);
            }
        }
        var geometry = await Geometry.ReadAsync(store);
        Assert.False(geometry.Header.Flags.HasFlag(HeaderFlags.Dirty));
        var end = await LogReader.ScanAsync(store, geometry, null);
        Assert.Equal(0, end.Records);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            Assert.Equal(0, device.GetStats().LogPendingLblks);
            Assert.Equal(8, device.GetStats().LblksUsed);
            Assert.Equal(expected, await ReadAsync(device, 0, expected.Length));
        }
    }

    [Fact]
    public async Task After_a_crash_the_log_is_replayed_and_the_device_works_on()
    {
        var store = await FormatAsync();
        var expected = new byte[4 * LblkSize];
        MemoryBackingStore crashed;
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            var whole = DeviceTestKit.Compressible(LblkSize, 1);
            await device.WriteAsync(0, whole);
            whole.CopyTo(expected, 0);
            await device.FlushAsync();
            for (int i = 0; i < 20; i++)
            {
                var data = DeviceTestKit.Random(1000, i);
                int offset = (i * 7919) % (expected.Length - 1000);
                await device.WriteAsync(offset, data);
                data.CopyTo(expected, offset);
            }
            await device.FlushAsync();
            crashed = store.Clone();
        }
        await using (var device = await DeviceTestKit.OpenAsync(crashed))
        {
            Assert.True(device.Recovered);
            Assert.True(device.GetStats().LogPendingLblks > 0);
            Assert.Equal(expected, await ReadAsync(device, 0, expected.Length));
            var more = DeviceTestKit.Random(3000, 99);
            await device.WriteAsync(5000, more);
            more.CopyTo(expected, 5000);
        }
        await using (var device = await DeviceTestKit.OpenAsync(crashed))
            Assert.Equal(expected, await ReadAsync(device, 0, expected.Length));
    }

    [Fact]
    public async Task A_whole_lblk_write_and_a_trim_over_records_win_after_a_crash()
    {
        var store = await FormatAsync();
        MemoryBackingStore crashed;
        var whole = DeviceTestKit.Compressible(LblkSize, 5);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await device.WriteAsync(100, DeviceTestKit.Random(4096, 1));          // lblk 0: a record
            await device.WriteAsync(0, whole);                                     // then the whole lblk
            await device.WriteAsync(LblkSize + 100, DeviceTestKit.Random(4096, 2)); // lblk 1: a record
            await device.TrimAsync(LblkSize, LblkSize);                            // then trimmed whole
            await device.FlushAsync();
            crashed = store.Clone();
        }
        await using var reopened = await DeviceTestKit.OpenAsync(crashed);
        Assert.Equal(whole, await ReadAsync(reopened, 0, LblkSize));
        Assert.Equal(new byte[LblkSize], await ReadAsync(reopened, LblkSize, LblkSize));
    }

    [Fact]
    public async Task A_small_log_wraps_and_merges_many_times_without_losing_a_write()
    {
        // The least log for 64 KiB lblks: a record of a whole lblk twice.
        var store = await FormatAsync(logSize: (long)Geometry.MinLogPblks(LblkSize) * Layout.PblkSize);
        var expected = new byte[32 * LblkSize];
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            var random = new Random(11);
            var writes = new List<Task>();
            for (int i = 0; i < 600; i++)
            {
                int lane = i % 4;
                int offset = lane * 8 * LblkSize + random.Next(8 * LblkSize / 512 - 24) * 512;
                var data = DeviceTestKit.Random(512 * random.Next(1, 24), i);
                data.CopyTo(expected, offset);
                await device.WriteAsync(offset, data);
            }
            Assert.Equal(expected, await ReadAsync(device, 0, expected.Length));
            await device.FlushAsync();
            Assert.True(device.GetStats().LblksUsed > 0, "nothing was merged although the log filled many times");
        }
        await using (var device = await DeviceTestKit.OpenAsync(store))
            Assert.Equal(expected, await ReadAsync(device, 0, expected.Length));
    }

    [Fact]
    public async Task Concurrent_small_writes_to_one_lblk_apply_in_the_order_they_were_logged()
    {
        var store = await FormatAsync();
        MemoryBackingStore crashed;
        byte[] seen;
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            // Overlapping writes racing on one lblk: whatever order they land in, a read now and a replay later agree.
            await Task.WhenAll(Enumerable.Range(0, 64).Select(i =>
                device.WriteAsync(4096 + (i % 5) * 512, DeviceTestKit.Random(2048, i)).AsTask()));
            await device.FlushAsync();
            seen = await ReadAsync(device, 0, LblkSize);
            crashed = store.Clone();
        }
        await using var reopened = await DeviceTestKit.OpenAsync(crashed);
        Assert.Equal(seen, await ReadAsync(reopened, 0, LblkSize));
    }

    [Fact]
    public async Task A_version_1_0_image_has_no_log_and_works_as_before()
    {
        var store = await FormatAsync(logSize: 0);
        await using var device = await DeviceTestKit.OpenAsync(store);
        Assert.Equal(0, device.GetStats().LogBytes);
        await device.WriteAsync(100, DeviceTestKit.Random(4096, 1));
        await device.FlushAsync();
        Assert.Equal(1, device.GetStats().LblksUsed);
        Assert.Equal(0, (await Geometry.ReadAsync(store)).Header.VersionMinor);
    }

    [Fact]
    public async Task A_read_only_open_of_a_crashed_image_reads_its_log_and_writes_nothing()
    {
        var store = await FormatAsync();
        var data = DeviceTestKit.Random(5000, 4);
        MemoryBackingStore crashed;
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await device.WriteAsync(70000, data);
            await device.FlushAsync();
            crashed = store.Clone();
        }
        var before = crashed.Clone();
        await using (var device = await DeviceTestKit.OpenAsync(crashed, new DeviceOptions { ReadOnly = true }))
            Assert.Equal(data, await ReadAsync(device, 70000, data.Length));
        var a = new byte[crashed.Length];
        var b = new byte[before.Length];
        await crashed.ReadAsync(0, a);
        await before.ReadAsync(0, b);
        Assert.True(a.AsSpan().SequenceEqual(b), "a read-only open wrote to the image");
    }

    /// <summary>
    /// Merge rounds overlap (<see cref="LogMerger"/>): an lblk merged by a round whose checkpoint has not published it yet
    /// still has its records pending, and must not be chosen again for them; once published it is chosen again for the
    /// records written after the merge.
    /// </summary>
    [Fact]
    public async Task The_merger_leaves_out_an_lblk_merged_and_not_yet_published()
    {
        var store = await FormatAsync();
        var log = await WriteLog.OpenAsync(store, await Geometry.ReadAsync(store), 1, CancellationToken.None);
        ulong[] lblks = [5, 2, 9];
        foreach (ulong lblk in lblks)
            await AppendAsync(log, lblk);
        var oldest = log.OldestLblks(10);
        Assert.Equal(lblks, oldest.Select(p => p.Lblk));

        var merging = new Dictionary<ulong, ulong> { [5] = oldest[0].Seq };
        Assert.Equal([2UL, 9UL], log.OldestLblks(10, merging).Select(p => p.Lblk));
        ulong newer = await AppendAsync(log, 5);
        Assert.Equal([2UL, 9UL], log.OldestLblks(10, merging).Select(p => p.Lblk));
        Assert.Empty(log.LblksWithRecords(2, 10, merging));

        // Published: the merged record is off the lblk, which is a candidate again for the newer one.
        var merged = new List<ulong>();
        log.TakeMerged(5, oldest[0].Seq + 1, merged);
        Assert.Equal([oldest[0].Seq], merged);
        Assert.Equal(newer, log.OldestPending(5));
        Assert.Equal([2UL, 9UL, 5UL], log.OldestLblks(10, merging).Select(p => p.Lblk));
    }

    /// <summary>The oldest lblks come in the order of their oldest pending records, each once, at most as many as asked.</summary>
    [Fact]
    public async Task The_oldest_lblks_are_those_of_the_oldest_records_each_once()
    {
        var store = await FormatAsync();
        var log = await WriteLog.OpenAsync(store, await Geometry.ReadAsync(store), 1, CancellationToken.None);
        foreach (ulong lblk in new ulong[] { 5, 2, 5, 9, 2, 7 })
            await AppendAsync(log, lblk);
        Assert.Equal([5UL, 2UL, 9UL, 7UL], log.OldestLblks(10).Select(p => p.Lblk));
        Assert.Equal([5UL, 2UL], log.OldestLblks(2).Select(p => p.Lblk));
        Assert.Equal(log.OldestPending(9), log.OldestLblks(3)[2].Seq);
    }

    private static async Task<ulong> AppendAsync(WriteLog log, ulong lblk)
    {
        var record = new byte[LogRecord.MaxBytes(LblkSize)];
        var header = LogRecord.EncodeData(record, null, 0, lblk, 4096, DeviceTestKit.Compressible(4096, (int)lblk));
        int reserved = await log.ReserveAsync(header.Bytes, () => { }, () => null, CancellationToken.None);
        var appended = await log.AppendAsync(record, header, reserved, CancellationToken.None);
        log.AddPending(appended);
        return appended.Seq;
    }
}
