using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>A full device and a failing backing store: clear errors, nothing else harmed.</summary>
public class FailureTests
{
    private const int LblkSize = 16 * 1024;

    [Fact]
    public async Task Full_device_fails_the_write_that_does_not_fit_and_recovers_after_trim()
    {
        var store = await DeviceTestKit.FormatAsync(2 << 20, new FormatOptions { LblkSize = LblkSize });
        var options = new DeviceOptions { CacheBytes = 16 * LblkSize, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 2 };
        await using var device = await DeviceTestKit.OpenAsync(store, options);
        var written = new List<byte[]>();
        OutOfSpaceException? full = null;
        for (int lblk = 0; lblk < device.Size / LblkSize; lblk++)
        {
            var data = DeviceTestKit.Random(LblkSize, lblk);
            try
            {
                await device.WriteAsync((long)lblk * LblkSize, data);
            }
            catch (OutOfSpaceException e)
            {
                full = e;
                break;
            }
            written.Add(data);
        }
        Assert.NotNull(full);
        Assert.Contains("no space left", full.Message);
        int failedLblk = written.Count;
        Assert.True(failedLblk > 100, $"only {failedLblk} lblks fit");

        // Nothing else harmed: the device flushes, everything acknowledged reads back, the failed lblk reads its old contents.
        await device.FlushAsync();
        var back = new byte[LblkSize];
        for (int lblk = 0; lblk < written.Count; lblk++)
        {
            await device.ReadAsync((long)lblk * LblkSize, back);
            Assert.True(back.AsSpan().SequenceEqual(written[lblk]), $"lblk {lblk} damaged by the full device");
        }
        await device.ReadAsync((long)failedLblk * LblkSize, back);
        Assert.DoesNotContain(back, b => b != 0);

        // A trim makes room again.
        await device.TrimAsync(0, 4L * LblkSize);
        await device.FlushAsync();
        var again = DeviceTestKit.Random(LblkSize, 999);
        await device.WriteAsync((long)failedLblk * LblkSize, again);
        await device.FlushAsync();
        await device.ReadAsync((long)failedLblk * LblkSize, back);
        Assert.True(back.AsSpan().SequenceEqual(again));

        // So does an overwrite that compresses better.
        await Assert.ThrowsAsync<OutOfSpaceException>(async () =>
        {
            for (int lblk = failedLblk + 1; lblk < device.Size / LblkSize; lblk++)
                await device.WriteAsync((long)lblk * LblkSize, DeviceTestKit.Random(LblkSize, lblk));
        });
        await device.FlushAsync();
        for (int lblk = 4; lblk < 12; lblk++)
            await device.WriteAsync((long)lblk * LblkSize, new byte[LblkSize].AsMemory());
        await device.FlushAsync();
        await device.WriteAsync(0, again);
        await device.FlushAsync();
    }

    /// <summary>
    /// Writers held back by a full cache wait for a checkpoint's progress. When the checkpoint's write-back fails,
    /// that failure is their news: they must get it, not wait for a progress that will never come.
    /// </summary>
    [Fact]
    public async Task Writers_held_back_by_a_full_cache_get_the_write_back_failure_instead_of_waiting_for_ever()
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize });
        var faulty = new FaultInjectingStore(memory);
        var options = new DeviceOptions { CacheBytes = 8 * LblkSize, ExactCacheSize = true, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 1 };
        await using var device = await DeviceTestKit.OpenAsync(faulty, options);
        faulty.FailWritesAfter = faulty.Writes;

        var writes = Enumerable.Range(0, 32)
            .Select(lblk => Task.Run(async () => await device.WriteAsync((long)lblk * LblkSize, DeviceTestKit.Random(LblkSize, lblk))))
            .ToArray();
        var all = Task.WhenAll(writes);
        var finished = await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(60)));
        Assert.True(finished == all, $"{writes.Count(w => !w.IsCompleted)} of {writes.Length} writes still waiting a minute after write-back failed");
        Assert.Contains(writes, w => w.IsFaulted);
        faulty.FailWritesAfter = null;
    }

    [Fact]
    public async Task Write_error_fails_the_flush_then_every_write_while_reads_go_on_and_the_image_stays_consistent()
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize });
        var faulty = new FaultInjectingStore(memory);
        var first = DeviceTestKit.Compressible(4 * LblkSize, 1);
        var device = await DeviceTestKit.OpenAsync(faulty);
        await device.WriteAsync(0, first);
        await device.FlushAsync();

        faulty.FailWritesAfter = faulty.Writes + 1;
        var second = DeviceTestKit.Compressible(4 * LblkSize, 2);
        await device.WriteAsync(0, second);
        var error = await Assert.ThrowsAnyAsync<IOException>(async () => await device.FlushAsync());
        Assert.Contains("injected", error.ToString());
        await Assert.ThrowsAnyAsync<IOException>(async () => await device.WriteAsync(0, first));
        await Assert.ThrowsAnyAsync<IOException>(async () => await device.FlushAsync());
        var back = new byte[second.Length];
        await device.ReadAsync(0, back);
        Assert.Equal(second, back); // still served from the cache
        await device.DisposeAsync();

        // The image on disk holds the last flushed state and opens after recovery.
        faulty.FailWritesAfter = null;
        await using var reopened = await DeviceTestKit.OpenAsync(memory);
        Assert.True(reopened.Recovered);
        await reopened.ReadAsync(0, back);
        Assert.Equal(first, back);
    }

    [Fact]
    public async Task Read_error_fails_that_read_only()
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize });
        var faulty = new FaultInjectingStore(memory);
        await using (var device = await DeviceTestKit.OpenAsync(faulty))
            await device.WriteAsync(0, DeviceTestKit.Compressible(8 * LblkSize, 3));
        await using (var device = await DeviceTestKit.OpenAsync(faulty, new DeviceOptions { CacheBytes = 1 }))
        {
            // Fail every data pblk: lblks read from disk fail, unallocated ones read as zeros.
            faulty.FailReadsIn = ((long)device.Geometry.DataStart(0) * 4096, 32768L * 4096);
            var back = new byte[LblkSize];
            await Assert.ThrowsAnyAsync<IOException>(async () => await device.ReadAsync(0, back));
            await device.ReadAsync(20L * LblkSize, back);
            faulty.FailReadsIn = null;
            await device.ReadAsync(0, back);
            Assert.Equal(DeviceTestKit.Compressible(8 * LblkSize, 3).AsSpan(0, LblkSize).ToArray(), back);
        }
    }
}
