using System.Globalization;
using System.Text;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Nbd;
using Cbd.Nbd.Protocol;

namespace Cbd.Cli.Serve;

/// <summary>
/// The figures of a served device in the Prometheus text format 0.0.4: <c># HELP</c> and <c># TYPE</c> before each
/// family, counters ending in <c>_total</c>, histograms as cumulative <c>_bucket{le=...}</c> with <c>_sum</c> and
/// <c>_count</c>, seconds and bytes as units. docs/CLI.md lists every name.
/// </summary>
public static class MetricsText
{
    public const string ContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>Renders everything as of now: the device's usage and totals, and the server's connections and requests.</summary>
    public static string Render(DeviceStats stats, EngineCounters engine, NbdMetrics nbd)
    {
        var text = new StringBuilder(16 << 10);
        Family(text, "cbd_nbd_requests_total", "counter", "NBD requests that reached the device, failed or not, by command.");
        foreach (NbdCommand command in NbdMetrics.Commands)
        {
            Sample(text, "cbd_nbd_requests_total", CommandLabel(command), nbd[command].Requests);
        }
        Family(text, "cbd_nbd_request_errors_total", "counter", "NBD requests the device failed (I/O error, no space), answered with an error, by command.");
        foreach (NbdCommand command in NbdMetrics.Commands)
        {
            Sample(text, "cbd_nbd_request_errors_total", CommandLabel(command), nbd[command].Errors);
        }
        Family(text, "cbd_nbd_request_bytes_total", "counter", "Lengths of the NBD requests that succeeded, by command: bytes read, written, trimmed, zeroed, described or prefetched.");
        foreach (NbdCommand command in NbdMetrics.Commands)
        {
            Sample(text, "cbd_nbd_request_bytes_total", CommandLabel(command), nbd[command].Bytes);
        }
        Family(text, "cbd_nbd_request_duration_seconds", "histogram", "Time from an NBD request read whole to its reply sent, by command.");
        foreach (NbdCommand command in NbdMetrics.Commands)
        {
            Histogram(text, "cbd_nbd_request_duration_seconds", CommandLabel(command), nbd[command].Latency.Snapshot());
        }
        Counter(text, "cbd_nbd_requests_refused_total", "NBD requests answered with an error before reaching the device (out of range, read-only, malformed).", nbd.RequestsRefused);
        Gauge(text, "cbd_nbd_connections", "NBD connections being served.", nbd.Connections);
        Counter(text, "cbd_nbd_connections_opened_total", "NBD connections accepted and served.", nbd.ConnectionsOpened);
        Counter(text, "cbd_nbd_connections_closed_total", "Served NBD connections that have ended.", nbd.ConnectionsClosed);
        Counter(text, "cbd_nbd_connections_refused_total", "NBD connections closed on accept because --max-connections were being served.", nbd.ConnectionsRefused);
        Counter(text, "cbd_nbd_disconnects_total", "NBD_CMD_DISC requests: connections their client ended cleanly.", nbd.Disconnects);

        Counter(text, "cbd_cache_hits_total", "lblk accesses served from the cache.", engine.CacheHits);
        Counter(text, "cbd_cache_misses_total", "lblk accesses that looked up the lbat and, for an allocated lblk, read and decompressed it.", engine.CacheMisses);
        Counter(text, "cbd_log_merges_total", "lblks loaded with their write log records to be written back with them.", engine.LogMerges);
        Counter(text, "cbd_fast_write_backs_total", "lblks written back with the fast codec, merged while the write log was under pressure.", engine.FastWriteBacks);
        Counter(text, "cbd_patched_write_backs_total", "Of the fast write-backs, lblks stored patched: their merged records written as patches over the stored form they had.", engine.Patches);
        Counter(text, "cbd_recompressions_total", "lblks stored with the fast codec taken to be recompressed with the device's once it was idle.", engine.Recompressions);
        Gauge(text, "cbd_fast_stored_lblks", "lblks stored with the fast codec, waiting for the device to be idle to be recompressed.", stats.FastStoredLblks);
        Gauge(text, "cbd_dirty_lblks", "lblks in the cache whose newest data is not yet written back.", stats.DirtyLblks);
        Gauge(text, "cbd_log_bytes", "Bytes of the image's write log (0 without one).", stats.LogBytes);
        Gauge(text, "cbd_log_used_bytes", "Bytes of the write log from its tail to its head: records not yet merged, or merged and not yet passed by the tail.", stats.LogUsedBytes);
        Gauge(text, "cbd_log_pending_lblks", "lblks with write log records not yet merged into them.", stats.LogPendingLblks);
        Family(text, "cbd_checkpoint_duration_seconds", "histogram", "Checkpoints committed (write-back of the dirty lblks, made durable), from start to commit.");
        Histogram(text, "cbd_checkpoint_duration_seconds", "", engine.Checkpoints.Snapshot());

        Gauge(text, "cbd_logical_size_bytes", "Logical size of the device.", stats.LogicalBytes);
        Gauge(text, "cbd_lblks", "lblks of the device.", stats.LblksTotal);
        Gauge(text, "cbd_lblks_used", "lblks that hold data, as last written back.", stats.LblksUsed);
        Gauge(text, "cbd_pblks", "Data pblks of the image.", stats.PblksTotal);
        Gauge(text, "cbd_pblks_used", "Data pblks in use, as last written back.", stats.PblksUsed);
        Gauge(text, "cbd_free_bytes", "Bytes of data pblks free for new data.", (stats.PblksTotal - stats.PblksUsed) * Layout.PblkSize);
        Gauge(text, "cbd_compression_ratio", "Uncompressed bytes of the lblks used divided by the bytes of their pblks (1 when empty).", stats.CompressionRatio);
        return text.ToString();
    }

    /// <summary>The command's label: its NBD name in lower case, e.g. <c>write_zeroes</c>.</summary>
    public static string Label(NbdCommand command) => command switch
    {
        NbdCommand.Read => "read",
        NbdCommand.Write => "write",
        NbdCommand.Flush => "flush",
        NbdCommand.Trim => "trim",
        NbdCommand.WriteZeroes => "write_zeroes",
        NbdCommand.BlockStatus => "block_status",
        NbdCommand.Cache => "cache",
        _ => command.ToString().ToLowerInvariant(),
    };

    private static string CommandLabel(NbdCommand command) => $"command=\"{Label(command)}\"";

    private static void Counter(StringBuilder text, string name, string help, long value)
    {
        Family(text, name, "counter", help);
        Sample(text, name, "", value);
    }

    private static void Gauge(StringBuilder text, string name, string help, long value)
    {
        Family(text, name, "gauge", help);
        Sample(text, name, "", value);
    }

    private static void Gauge(StringBuilder text, string name, string help, double value)
    {
        Family(text, name, "gauge", help);
        Sample(text, name, "", value);
    }

    private static void Family(StringBuilder text, string name, string type, string help)
        => text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n')
            .Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    /// <summary>One histogram's series; <paramref name="labels"/> is empty for a histogram without labels.</summary>
    private static void Histogram(StringBuilder text, string name, string labels, HistogramSnapshot histogram)
    {
        string prefix = labels.Length == 0 ? "" : labels + ",";
        for (int i = 0; i < histogram.UpperBounds.Count; i++)
        {
            Sample(text, $"{name}_bucket", $"{prefix}le=\"{Number(histogram.UpperBounds[i])}\"", histogram.CumulativeCounts[i]);
        }
        Sample(text, $"{name}_bucket", $"{prefix}le=\"+Inf\"", histogram.Count);
        Sample(text, $"{name}_sum", labels, histogram.SumSeconds);
        Sample(text, $"{name}_count", labels, histogram.Count);
    }

    private static void Sample(StringBuilder text, string name, string labels, long value)
        => Name(text, name, labels).Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');

    private static void Sample(StringBuilder text, string name, string labels, double value)
        => Name(text, name, labels).Append(Number(value)).Append('\n');

    private static StringBuilder Name(StringBuilder text, string name, string labels)
    {
        text.Append(name);
        if (labels.Length > 0)
        {
            text.Append('{').Append(labels).Append('}');
        }
        return text.Append(' ');
    }

    private static string Number(double value) => double.IsPositiveInfinity(value) ? "+Inf" : value.ToString("R", CultureInfo.InvariantCulture).Replace('E', 'e');
}
