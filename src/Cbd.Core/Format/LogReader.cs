using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>One record found by <see cref="LogReader"/>: its header, where it starts within the log, and its bytes.</summary>
public readonly record struct LoggedRecord(LogRecordHeader Header, long Position, ReadOnlyMemory<byte> Bytes);

/// <summary>
/// Where a scan of the log stopped: the position and seq the next record would have, why the record there was not
/// taken, and how many records (pads included) were taken.
/// </summary>
public readonly record struct LogEnd(long Position, ulong Seq, uint Epoch, LogRecordFault Stop, long Records, long Bytes);

/// <summary>
/// The one scan of the write log (docs/FORMAT.md, "The write log"): from the header's tail, every record that is the
/// one expected next (this log's id, the next seq, no older session, fields valid, crc good, payload decodable), to the
/// first that is not. Used by the engine's replay and by check and info alike.
/// </summary>
public static class LogReader
{
    public static async ValueTask<LogEnd> ScanAsync(IBackingStore store, Geometry geometry, Func<LoggedRecord, ValueTask>? onRecord,
        CancellationToken cancellationToken = default)
    {
        var header = geometry.Header;
        if (!header.HasLog)
            return new LogEnd(0, 0, 0, LogRecordFault.None, 0, 0);
        long logBytes = geometry.LogBytes;
        long start = geometry.LogStartByte;
        long position = (long)header.LogTail;
        ulong seq = header.LogSeq;
        // The record at the tail may be no older than the header says: one an earlier session left at a tail that had
        // reached the head is not the continuation of the log.
        uint epoch = header.LogTailEpoch;
        long records = 0, scanned = 0;
        int lblkSize = geometry.LblkSize;
        byte[] buffer = new byte[LogRecord.MaxBytes(lblkSize)];
        byte[] decoded = new byte[lblkSize];
        while (true)
        {
            if (position == logBytes)
                position = 0;
            // The log holds at most its own size: a scan that went all the way round stops.
            long room = Math.Min(logBytes - position, logBytes - scanned);
            if (room < Layout.SectorSize)
                return new LogEnd(position, seq, epoch, LogRecordFault.None, records, scanned);
            await store.ReadAsync(start + position, buffer.AsMemory(0, Layout.SectorSize), cancellationToken).ConfigureAwait(false);
            var fault = LogRecord.TryReadHeader(buffer.AsSpan(0, Layout.SectorSize), header.LogId, seq, epoch, lblkSize, geometry.NrLblks, room, out var record);
            if (fault == LogRecordFault.None && record.Epoch > header.LogEpoch)
                fault = LogRecordFault.BadFields; // a session the header has not yet counted never wrote here
            if (fault == LogRecordFault.None)
            {
                int bytes = record.Kind == LogRecordKind.Pad ? Layout.SectorSize : record.Bytes;
                if (bytes > Layout.SectorSize)
                    await store.ReadAsync(start + position + Layout.SectorSize, buffer.AsMemory(Layout.SectorSize, bytes - Layout.SectorSize), cancellationToken).ConfigureAwait(false);
                if (!LogRecord.Verify(buffer, record))
                    fault = LogRecordFault.ChecksumMismatch;
                else if (record.Kind == LogRecordKind.Data && record.PayloadAlgorithm != LogRecord.Raw &&
                         !LogRecord.TryDecodePayload(buffer, record, decoded))
                    fault = LogRecordFault.PayloadDoesNotDecode;
            }
            if (fault != LogRecordFault.None)
                return new LogEnd(position, seq, epoch, fault, records, scanned);
            if (onRecord is not null)
                await onRecord(new LoggedRecord(record, position, buffer.AsMemory(0, record.Kind == LogRecordKind.Pad ? Layout.SectorSize : record.Bytes))).ConfigureAwait(false);
            records++;
            seq++;
            epoch = record.Epoch;
            scanned += record.Bytes;
            position += record.Bytes;
        }
    }
}
