using System.Diagnostics;

namespace Cbd.Core.Engine;

/// <summary>
/// Counts durations into fixed buckets, for monitoring. <see cref="Observe"/> takes no lock and allocates nothing
/// (two interlocked adds), so it can sit on a request's path; a <see cref="Snapshot"/> read while observations go
/// on may see a sum a few observations ahead of or behind the buckets, which monitoring tolerates.
/// </summary>
public sealed class DurationHistogram
{
    /// <summary>Request latencies: 50 µs (a cached 4 KiB read) to 10 s (a flush behind a slow disk).</summary>
    public static readonly double[] RequestBounds = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    /// <summary>Checkpoint durations: 1 ms (nothing to write back) to 60 s (a cache full of dirty lblks on a slow disk).</summary>
    public static readonly double[] CheckpointBounds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

    private readonly double[] _bounds;
    private readonly long[] _boundTicks;
    // One more than the bounds: the last counts what exceeds every bound (Prometheus' le="+Inf").
    private readonly long[] _counts;
    private long _sumTicks;

    /// <param name="upperBounds">Upper bounds of the buckets in seconds, ascending.</param>
    /// <exception cref="ArgumentException">The bounds are empty, not ascending or not positive.</exception>
    public DurationHistogram(double[] upperBounds)
    {
        ArgumentNullException.ThrowIfNull(upperBounds);
        if (upperBounds.Length == 0 || upperBounds[0] <= 0 || upperBounds.Zip(upperBounds.Skip(1)).Any(p => p.First >= p.Second))
        {
            throw new ArgumentException("bucket bounds must be positive and ascending", nameof(upperBounds));
        }
        _bounds = [.. upperBounds];
        _boundTicks = [.. upperBounds.Select(b => (long)Math.Ceiling(b * Stopwatch.Frequency))];
        _counts = new long[upperBounds.Length + 1];
    }

    /// <summary>Counts the time from <paramref name="startTimestamp"/> (a <see cref="Stopwatch.GetTimestamp"/>) to now.</summary>
    public void ObserveSince(long startTimestamp) => Observe(Stopwatch.GetTimestamp() - startTimestamp);

    /// <summary>Counts one duration of <paramref name="ticks"/> <see cref="Stopwatch"/> ticks.</summary>
    public void Observe(long ticks)
    {
        ticks = Math.Max(ticks, 0);
        int bucket = 0;
        long[] bounds = _boundTicks;
        while (bucket < bounds.Length && ticks > bounds[bucket])
        {
            bucket++;
        }
        Interlocked.Increment(ref _counts[bucket]);
        Interlocked.Add(ref _sumTicks, ticks);
    }

    /// <summary>The observations so far.</summary>
    public HistogramSnapshot Snapshot()
    {
        long[] cumulative = new long[_counts.Length];
        long total = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            total += Volatile.Read(ref _counts[i]);
            cumulative[i] = total;
        }
        return new HistogramSnapshot(_bounds, cumulative, (double)Volatile.Read(ref _sumTicks) / Stopwatch.Frequency);
    }
}

/// <summary>A histogram as read at one moment.</summary>
/// <param name="UpperBounds">Bucket bounds in seconds, ascending; shared, not to be modified.</param>
/// <param name="CumulativeCounts">Observations at most each bound, then (the last) all of them: one more than the bounds.</param>
/// <param name="SumSeconds">Sum of the observed durations.</param>
public sealed record HistogramSnapshot(IReadOnlyList<double> UpperBounds, IReadOnlyList<long> CumulativeCounts, double SumSeconds)
{
    public long Count => CumulativeCounts[^1];
}
