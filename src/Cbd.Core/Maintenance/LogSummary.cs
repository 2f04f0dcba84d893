using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>
/// What the write log of an image holds from its tail, as the one scan (<see cref="LogReader"/>) finds it: the records,
/// the lblks they change, and where and why the scan ended. Info, check, resize and tune read the log through it.
/// </summary>
public sealed record LogSummary
{
    /// <summary>pblks of the log, the last of the device.</summary>
    public required ulong LogPblks { get; init; }

    /// <summary>The log's first pblk (Q in docs/FORMAT.md).</summary>
    public required ulong FirstPblk { get; init; }

    public long LogBytes => (long)LogPblks * Layout.PblkSize;

    /// <summary>The header's log_tail: the byte offset within the log where the scan starts.</summary>
    public required ulong Tail { get; init; }

    /// <summary>The header's log_seq: the seq of the record at the tail.</summary>
    public required ulong Seq { get; init; }

    /// <summary>The header's log_epoch.</summary>
    public required uint Epoch { get; init; }

    /// <summary>Data and zero records taken (pads not counted).</summary>
    public required long Records { get; init; }

    /// <summary>Distinct lblks the records change.</summary>
    public required long Lblks { get; init; }

    /// <summary>Where the scan stopped and why; its <see cref="LogEnd.Bytes"/> is the log space in use, pads included.</summary>
    public required LogEnd End { get; init; }

    /// <summary>No record at all from the tail, pads included: nothing is pending on any lblk.</summary>
    public bool IsEmpty => End.Records == 0;

    /// <summary>Scans the log of <paramref name="geometry"/>; null for an image without one (format version 1.0).</summary>
    public static async Task<LogSummary?> ReadAsync(IBackingStore store, Geometry geometry, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(geometry);
        var header = geometry.Header;
        if (!header.HasLog)
            return null;
        long records = 0;
        var lblks = new HashSet<ulong>();
        var end = await LogReader.ScanAsync(store, geometry, record =>
        {
            if (record.Header.Kind != LogRecordKind.Pad)
            {
                records++;
                lblks.Add(record.Header.Lblk);
            }
            return ValueTask.CompletedTask;
        }, cancellationToken).ConfigureAwait(false);
        return new LogSummary
        {
            LogPblks = geometry.LogPblks,
            FirstPblk = geometry.ZonesEnd,
            Tail = header.LogTail,
            Seq = header.LogSeq,
            Epoch = header.LogEpoch,
            Records = records,
            Lblks = lblks.Count,
            End = end,
        };
    }

    /// <summary>Why the scan ended, as a person reads it.</summary>
    public static string DescribeEnd(LogRecordFault stop) => stop switch
    {
        LogRecordFault.None => "the whole ring was scanned",
        LogRecordFault.BadMagic => "no record there (never written, or space the tail has passed)",
        LogRecordFault.OtherLog => "a record of another log (an earlier format of this image)",
        LogRecordFault.UnexpectedSeq => "a record of an earlier lap of the ring (not the seq expected)",
        LogRecordFault.OlderEpoch => "a record of an earlier session",
        LogRecordFault.BadFields => "a record whose fields are not valid",
        LogRecordFault.ChecksumMismatch => "a record whose checksum fails: an append cut short, as a crash leaves it",
        LogRecordFault.PayloadDoesNotDecode => "a record whose payload does not decompress",
        _ => stop.ToString(),
    };
}
