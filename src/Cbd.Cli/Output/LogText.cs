using Cbd.Core.Format;
using Cbd.Core.Maintenance;

namespace Cbd.Cli.Output;

/// <summary>The write log as info and check print it.</summary>
public static class LogText
{
    /// <summary>What info says of an image without a log, and how to get one.</summary>
    public const string None = "none (format version 1.0); cbd format --log-size makes an image with one (format version 1.2)";

    public static LogJson? ToJson(LogSummary? log) => log is null ? null : new LogJson(
        log.LogBytes,
        log.LogPblks,
        log.FirstPblk,
        log.Tail,
        log.Seq,
        log.Epoch,
        log.Records,
        log.Lblks,
        log.End.Bytes,
        GeometryText.Percent(log.End.Bytes, log.LogBytes),
        log.End.Position,
        log.End.Seq,
        EndReason(log.End.Stop));

    /// <summary>The JSON name of why the scan ended: the fault of the record not taken, or whole_ring.</summary>
    public static string EndReason(LogRecordFault stop) => stop == LogRecordFault.None ? "whole_ring" : CliJsonContext.EnumName(stop);

    /// <summary>The log's size and place.</summary>
    public static string Size(LogJson log) =>
        $"{SizeParser.FormatApproximate(log.Bytes)} ({log.Pblks} pblks from pblk {log.FirstPblk}); tail {log.Tail}, seq {log.Seq}, epoch {log.Epoch}";

    /// <summary>What the log holds, and where and why the scan ended.</summary>
    public static string Contents(LogJson log)
    {
        string held = log.Records == 0 && log.UsedBytes == 0
            ? "empty"
            : $"{log.Records} records for {log.Lblks} lblks, {SizeParser.FormatApproximate(log.UsedBytes)} ({log.UsedPercent:0.###} % of the log)";
        return $"{held}; the scan ended at offset {log.EndOffset} (seq {log.EndSeq}): {LogSummary.DescribeEnd(Fault(log.EndReason))}";
    }

    private static LogRecordFault Fault(string reason) =>
        Enum.GetValues<LogRecordFault>().FirstOrDefault(f => EndReason(f) == reason);
}
