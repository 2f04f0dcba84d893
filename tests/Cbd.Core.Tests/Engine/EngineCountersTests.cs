using System.Diagnostics;
using Cbd.Core.Engine;

namespace Cbd.Core.Tests.Engine;

/// <summary>The totals a monitoring scrape reads from the engine: cache hits and misses, checkpoints and their durations.</summary>
public class EngineCountersTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Cache_hits_misses_dirty_lblks_and_checkpoints_are_counted()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB);
        await using var device = await DeviceTestKit.OpenAsync(store);
        EngineCounters counters = device.Counters;
        var buffer = new byte[4096];

        await device.ReadAsync(0, buffer);
        Assert.Equal((0L, 1L), (counters.CacheHits, counters.CacheMisses));
        await device.ReadAsync(8192, buffer);
        Assert.Equal((1L, 1L), (counters.CacheHits, counters.CacheMisses));

        // A partial write loads the rest of its lblk first: a miss, then a read of it hits.
        await device.WriteAsync(2 * device.BlockSize + 100, DeviceTestKit.Compressible(100, 1));
        Assert.Equal((1L, 2L), (counters.CacheHits, counters.CacheMisses));
        await device.ReadAsync(2 * device.BlockSize, buffer);
        Assert.Equal((2L, 2L), (counters.CacheHits, counters.CacheMisses));
        Assert.Equal(1, device.GetStats().DirtyLblks);
        Assert.Equal(0, counters.Checkpoints.Snapshot().Count);

        await device.FlushAsync();
        HistogramSnapshot checkpoints = counters.Checkpoints.Snapshot();
        Assert.Equal(1, checkpoints.Count);
        Assert.True(checkpoints.SumSeconds > 0, $"checkpoint duration {checkpoints.SumSeconds} s");
        Assert.Equal(0, device.GetStats().DirtyLblks);
    }

    [Fact]
    public async Task Merges_of_write_log_records_are_counted_per_lblk()
    {
        var store = await DeviceTestKit.FormatAsync(64 * MiB, new Cbd.Core.Format.FormatOptions { LogSize = 4 * MiB });
        var device = await DeviceTestKit.OpenAsync(store);
        EngineCounters counters = device.Counters;
        // Three lblks, one with two records: a merge loads each lblk once, with all its records.
        await device.WriteAsync(0, DeviceTestKit.Compressible(4096, 1));
        await device.WriteAsync(8192, DeviceTestKit.Compressible(4096, 2));
        await device.WriteAsync(device.BlockSize, DeviceTestKit.Compressible(4096, 3));
        await device.WriteAsync(5L * device.BlockSize, DeviceTestKit.Compressible(4096, 4));
        await device.FlushAsync();
        Assert.Equal(0, counters.LogMerges);
        await device.DisposeAsync();
        Assert.Equal(3, counters.LogMerges);
    }

    [Fact]
    public void Histogram_buckets_are_cumulative_and_inclusive_of_their_bound()
    {
        var histogram = new DurationHistogram([0.001, 0.01]);
        long Ticks(double seconds) => (long)(seconds * Stopwatch.Frequency);
        histogram.Observe(Ticks(0.0005));
        histogram.Observe(Ticks(0.001));
        histogram.Observe(Ticks(0.005));
        histogram.Observe(Ticks(2));

        HistogramSnapshot snapshot = histogram.Snapshot();
        Assert.Equal([0.001, 0.01], snapshot.UpperBounds);
        Assert.Equal([2L, 3L, 4L], snapshot.CumulativeCounts);
        Assert.Equal(4, snapshot.Count);
        Assert.Equal(2.0065, snapshot.SumSeconds, 6);
    }

    [Theory]
    [InlineData(new double[0])]
    [InlineData(new[] { 0.0, 1 })]
    [InlineData(new[] { 0.5, 0.5 })]
    [InlineData(new[] { 1, 0.5 })]
    public void Histogram_bounds_must_be_positive_and_ascending(double[] bounds)
        => Assert.Throws<ArgumentException>(() => new DurationHistogram(bounds));
}
