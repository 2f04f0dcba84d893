using System.Buffers.Binary;
using Cbd.Core.Compression;

namespace Cbd.Core.Format;

/// <summary>What a write log record does (docs/FORMAT.md, "The write log").</summary>
public enum LogRecordKind : byte
{
    /// <summary>Bytes written to a range of one lblk; the payload holds them, raw or compressed.</summary>
    Data = 1,

    /// <summary>A range of one lblk made zero (trim, write-zeroes); no payload.</summary>
    Zero = 2,

    /// <summary>Fills the end of the log that the next record did not fit in; the record after it starts at offset 0.</summary>
    Pad = 3,
}

/// <summary>The fields of a log record's header (docs/FORMAT.md, "The write log").</summary>
public readonly record struct LogRecordHeader(
    LogRecordKind Kind, byte PayloadAlgorithm, ulong LogId, ulong Seq, uint Epoch, uint Sectors,
    ulong Lblk, uint Offset, uint Length, uint PayloadLength)
{
    /// <summary>Bytes the record takes in the log: whole sectors.</summary>
    public int Bytes => (int)Sectors * Layout.SectorSize;

    /// <summary>True for a record that covers its whole lblk, so that nothing older of the lblk matters.</summary>
    public bool IsWhole(int lblkSize) => Kind != LogRecordKind.Pad && Offset == 0 && Length == lblkSize;
}

/// <summary>Why a log record is not taken (docs/FORMAT.md, "The write log": the end of the log).</summary>
public enum LogRecordFault : byte
{
    None,
    BadMagic,
    OtherLog,
    UnexpectedSeq,
    OlderEpoch,
    BadFields,
    ChecksumMismatch,
    PayloadDoesNotDecode,
}

/// <summary>
/// A record of the write log: a 64-byte header at the start of its first sector, then its payload, padded to
/// whole sectors (docs/FORMAT.md, "The write log"). The one encoder and decoder of records, used by the engine's
/// appends and replay and by check and info.
/// </summary>
public static class LogRecord
{
    /// <summary>Byte offsets of the record header's fields.</summary>
    internal static class Offsets
    {
        internal const int Magic = 0x00;          // u32
        internal const int Kind = 0x04;           // u8
        internal const int Algorithm = 0x05;      // u8: 0 raw, else the compression algorithm id
        internal const int Reserved06 = 0x06;     // u16, zero
        internal const int LogId = 0x08;          // u64
        internal const int Seq = 0x10;            // u64
        internal const int Epoch = 0x18;          // u32
        internal const int Sectors = 0x1C;        // u32
        internal const int Lblk = 0x20;           // u64
        internal const int Offset = 0x28;         // u32
        internal const int Length = 0x2C;         // u32
        internal const int PayloadLength = 0x30;  // u32
        internal const int Reserved34 = 0x34;     // 8 bytes, zero
        internal const int Crc = 0x3C;            // u32: CRC32C of 0x00-0x3B, then the payload
    }

    /// <summary>The record header's size; the payload follows it.</summary>
    public const int HeaderSize = 64;

    /// <summary>"CBDL" read as a little-endian u32.</summary>
    public const uint Magic = 0x4C444243;

    /// <summary>The payload algorithm byte of a payload stored as it is.</summary>
    public const byte Raw = 0;

    /// <summary>Sectors a record with a payload of <paramref name="payloadLength"/> bytes takes.</summary>
    public static int SectorsFor(int payloadLength) => (HeaderSize + payloadLength + Layout.SectorSize - 1) / Layout.SectorSize;

    /// <summary>The largest record an lblk of <paramref name="lblkSize"/> can need: a whole lblk stored raw.</summary>
    public static int MaxBytes(int lblkSize) => SectorsFor(lblkSize) * Layout.SectorSize;

    /// <summary>
    /// Encodes a data record of <paramref name="data"/> at <paramref name="offset"/> of <paramref name="lblk"/> into
    /// <paramref name="destination"/> (at least <see cref="MaxBytes"/> of the data's length), its payload compressed with
    /// <paramref name="codec"/> when that saves a sector. The seq, epoch and crc are filled in by <see cref="Seal"/>.
    /// Returns the record's header as encoded so far.
    /// </summary>
    public static LogRecordHeader EncodeData(Span<byte> destination, Codec? codec, ulong logId, ulong lblk, int offset, ReadOnlySpan<byte> data)
    {
        int rawSectors = SectorsFor(data.Length);
        var payload = destination[HeaderSize..];
        byte algorithm = Raw;
        int payloadLength = data.Length;
        if (codec is not null && rawSectors > 1)
        {
            // Worth keeping only when it saves a sector.
            int limit = (rawSectors - 1) * Layout.SectorSize - HeaderSize;
            int compressed = limit > 0 ? codec.Compress(data, payload[..Math.Min(limit, payload.Length)]) : -1;
            if (compressed > 0 && compressed <= limit)
            {
                algorithm = (byte)codec.Algorithm;
                payloadLength = compressed;
            }
        }
        if (algorithm == Raw)
            data.CopyTo(payload);
        var header = new LogRecordHeader(LogRecordKind.Data, algorithm, logId, 0, 0, (uint)SectorsFor(payloadLength),
            lblk, (uint)offset, (uint)data.Length, (uint)payloadLength);
        return header;
    }

    /// <summary>A zero record of <paramref name="length"/> bytes at <paramref name="offset"/> of <paramref name="lblk"/>.</summary>
    public static LogRecordHeader Zero(ulong logId, ulong lblk, int offset, int length) =>
        new(LogRecordKind.Zero, Raw, logId, 0, 0, 1, lblk, (uint)offset, (uint)length, 0);

    /// <summary>A pad record of <paramref name="bytes"/> (whole sectors, the rest of the log).</summary>
    public static LogRecordHeader Pad(ulong logId, int bytes) =>
        new(LogRecordKind.Pad, Raw, logId, 0, 0, (uint)(bytes / Layout.SectorSize), 0, 0, 0, 0);

    /// <summary>
    /// Writes <paramref name="header"/> with its seq and epoch into the start of <paramref name="record"/>, whose payload is
    /// already in place, zeroes the padding after the payload, and computes the crc.
    /// </summary>
    public static void Seal(Span<byte> record, LogRecordHeader header)
    {
        var h = record[..HeaderSize];
        h.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.Magic..], Magic);
        h[Offsets.Kind] = (byte)header.Kind;
        h[Offsets.Algorithm] = header.PayloadAlgorithm;
        BinaryPrimitives.WriteUInt64LittleEndian(h[Offsets.LogId..], header.LogId);
        BinaryPrimitives.WriteUInt64LittleEndian(h[Offsets.Seq..], header.Seq);
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.Epoch..], header.Epoch);
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.Sectors..], header.Sectors);
        BinaryPrimitives.WriteUInt64LittleEndian(h[Offsets.Lblk..], header.Lblk);
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.Offset..], header.Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.Length..], header.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.PayloadLength..], header.PayloadLength);
        int payloadEnd = HeaderSize + (int)header.PayloadLength;
        // Padding after the payload is written as zero, so that a record's bytes depend on it alone.
        int recordBytes = header.Kind == LogRecordKind.Pad ? Layout.SectorSize : header.Bytes;
        record[payloadEnd..recordBytes].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h[Offsets.Crc..], Crc(record, header.PayloadLength));
    }

    [ThreadStatic]
    private static System.IO.Hashing.Crc32? s_crc;

    private static uint Crc(ReadOnlySpan<byte> record, uint payloadLength)
    {
        var crc = s_crc ??= new System.IO.Hashing.Crc32(System.IO.Hashing.Crc32ParameterSet.Crc32C);
        crc.Reset();
        crc.Append(record[..Offsets.Crc]);
        crc.Append(record.Slice(HeaderSize, (int)payloadLength));
        return crc.GetCurrentHashAsUInt32();
    }

    /// <summary>
    /// Reads the header in <paramref name="sector"/> (a record's first sector) as the record expected next: of log
    /// <paramref name="logId"/>, numbered <paramref name="seq"/>, from a session no older than <paramref name="minEpoch"/>,
    /// inside an lblk of <paramref name="lblkSize"/> bytes of a device of <paramref name="nrLblks"/> lblks, and fitting
    /// in the <paramref name="room"/> bytes left before the end of the log. The crc is checked by <see cref="Verify"/>
    /// once the whole record is read.
    /// </summary>
    public static LogRecordFault TryReadHeader(ReadOnlySpan<byte> sector, ulong logId, ulong seq, uint minEpoch, int lblkSize, ulong nrLblks, long room,
        out LogRecordHeader header)
    {
        header = default;
        if (BinaryPrimitives.ReadUInt32LittleEndian(sector[Offsets.Magic..]) != Magic)
            return LogRecordFault.BadMagic;
        if (BinaryPrimitives.ReadUInt64LittleEndian(sector[Offsets.LogId..]) != logId)
            return LogRecordFault.OtherLog;
        header = new LogRecordHeader(
            (LogRecordKind)sector[Offsets.Kind], sector[Offsets.Algorithm], logId,
            BinaryPrimitives.ReadUInt64LittleEndian(sector[Offsets.Seq..]),
            BinaryPrimitives.ReadUInt32LittleEndian(sector[Offsets.Epoch..]),
            BinaryPrimitives.ReadUInt32LittleEndian(sector[Offsets.Sectors..]),
            BinaryPrimitives.ReadUInt64LittleEndian(sector[Offsets.Lblk..]),
            BinaryPrimitives.ReadUInt32LittleEndian(sector[Offsets.Offset..]),
            BinaryPrimitives.ReadUInt32LittleEndian(sector[Offsets.Length..]),
            BinaryPrimitives.ReadUInt32LittleEndian(sector[Offsets.PayloadLength..]));
        if (header.Seq != seq)
            return LogRecordFault.UnexpectedSeq;
        if (header.Epoch < minEpoch)
            return LogRecordFault.OlderEpoch;
        return FieldsValid(sector, header, lblkSize, nrLblks, room) ? LogRecordFault.None : LogRecordFault.BadFields;
    }

    private static bool FieldsValid(ReadOnlySpan<byte> sector, in LogRecordHeader h, int lblkSize, ulong nrLblks, long room)
    {
        if (BinaryPrimitives.ReadUInt16LittleEndian(sector[Offsets.Reserved06..]) != 0 ||
            sector.Slice(Offsets.Reserved34, Offsets.Crc - Offsets.Reserved34).IndexOfAnyExcept((byte)0) >= 0)
            return false;
        if (h.Sectors == 0 || (long)h.Sectors * Layout.SectorSize > room)
            return false;
        switch (h.Kind)
        {
            case LogRecordKind.Pad:
                return h.PayloadAlgorithm == Raw && h.Lblk == 0 && h.Offset == 0 && h.Length == 0 && h.PayloadLength == 0;
            case LogRecordKind.Zero:
                return h.PayloadAlgorithm == Raw && h.PayloadLength == 0 && h.Sectors == 1 && RangeValid(h, lblkSize, nrLblks);
            case LogRecordKind.Data:
                if (!RangeValid(h, lblkSize, nrLblks) || h.Sectors != SectorsFor((int)h.PayloadLength))
                    return false;
                return h.PayloadAlgorithm == Raw ? h.PayloadLength == h.Length : h.PayloadLength > 0 && h.PayloadLength < h.Length;
            default:
                return false;
        }
    }

    private static bool RangeValid(in LogRecordHeader h, int lblkSize, ulong nrLblks) =>
        h.Lblk < nrLblks && h.Length > 0 && h.Offset < lblkSize && h.Length <= lblkSize - h.Offset;

    /// <summary>Checks the crc of a whole record (its header first; the payload after it) read from the log.</summary>
    public static bool Verify(ReadOnlySpan<byte> record, in LogRecordHeader header) =>
        BinaryPrimitives.ReadUInt32LittleEndian(record[Offsets.Crc..]) == Crc(record, header.PayloadLength);

    /// <summary>Writes a data record's bytes into <paramref name="destination"/> (its length); false when a compressed payload does not decode to it.</summary>
    public static bool TryDecodePayload(ReadOnlySpan<byte> record, in LogRecordHeader header, Span<byte> destination)
    {
        var payload = record.Slice(HeaderSize, (int)header.PayloadLength);
        if (header.PayloadAlgorithm == Raw)
        {
            payload.CopyTo(destination);
            return true;
        }
        var codec = Codec.ForReading(header.PayloadAlgorithm);
        return codec is not null && codec.TryDecompress(payload, destination[..(int)header.Length]);
    }
}
