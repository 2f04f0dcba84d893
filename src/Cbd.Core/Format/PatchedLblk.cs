using System.Buffers.Binary;
using Cbd.Core.Compression;

namespace Cbd.Core.Format;

/// <summary>
/// One change a patched lblk applies over its base (docs/FORMAT.md, "Patched lblks"): the bytes of
/// [<see cref="Offset"/>, <see cref="Offset"/> + <see cref="Length"/>), raw or compressed, or zeros. The same fields as a log
/// record's, so a merge moves a record's payload into a patch as it is, without decompressing it.
/// </summary>
public readonly record struct LblkPatch(LogRecordKind Kind, byte Algorithm, int Offset, int Length, ReadOnlyMemory<byte> Payload)
{
    /// <summary>True when this patch leaves nothing of <paramref name="older"/> visible.</summary>
    public bool Covers(in LblkPatch older) => Offset <= older.Offset && older.Offset + older.Length <= Offset + Length;
}

/// <summary>
/// The patched stored form (algorithm id 4, format version 1.2): a patch area naming changes, then, from the next pblk
/// boundary, the stored form the lblk had before them (its base, compressed or itself patched), in the very pblks it was
/// in. A merge of log records under pressure writes only the patch area, instead of decompressing and recompressing the
/// whole lblk, and reads nothing of the base; the lblk is recompressed whole once the device is idle. Encoder and decoder,
/// on the caller's buffers.
/// </summary>
public static class PatchedLblk
{
    /// <summary>The stored form's first byte, where a compressed lblk names its algorithm.</summary>
    public const byte AlgorithmId = 4;

    /// <summary>Bytes of the patch area's head; the patches follow it.</summary>
    public const int HeadSize = 16;

    /// <summary>Bytes of each patch's head; its payload follows it.</summary>
    public const int PatchHeadSize = 16;

    /// <summary>Byte offsets of the head's fields.</summary>
    internal static class Offsets
    {
        internal const int Algorithm = 0x00;    // u8: 4
        internal const int Reserved01 = 0x01;   // u8, zero
        internal const int PatchCount = 0x02;   // u16, at least 1
        internal const int PatchBytes = 0x04;   // u32: the head and the patches
        internal const int BaseLength = 0x08;   // u32: the base's length field (0: zeros)
        internal const int BaseCrc = 0x0C;      // u32: the base's crc field (0 without LBLK_CRC)

        internal const int PatchOffset = 0x00;  // u32
        internal const int PatchLength = 0x04;  // u32
        internal const int PatchKind = 0x08;    // u8: 1 data, 2 zero
        internal const int PatchAlgorithm = 0x09; // u8: 0 raw, 1 lz4
        internal const int PatchReserved = 0x0A;  // u16, zero
        internal const int PayloadLength = 0x0C;  // u32
    }

    /// <summary>Bytes a patch takes in the patch area.</summary>
    public static int PatchBytes(in LblkPatch patch) => PatchHeadSize + patch.Payload.Length;

    /// <summary>Bytes of the patch area of <paramref name="patches"/>, rounded up to whole pblks: what <see cref="Encode"/> writes.</summary>
    public static long AreaBytes(IReadOnlyList<LblkPatch> patches)
    {
        long bytes = HeadSize;
        foreach (var patch in patches)
            bytes += PatchBytes(patch);
        return (bytes + Layout.PblkSize - 1) / Layout.PblkSize * Layout.PblkSize;
    }

    /// <summary>Where the base starts: the patch area rounded up to whole pblks.</summary>
    public static int BaseStart(int patchBytes) => (patchBytes + Layout.PblkSize - 1) / Layout.PblkSize * Layout.PblkSize;

    /// <summary>True when the stored bytes of a compressed entry are a patched form.</summary>
    public static bool IsPatched(ReadOnlySpan<byte> stored) => stored.Length > 0 && stored[0] == AlgorithmId;

    /// <summary>The base a patched form keeps: its entry's length and crc fields, and how many of its pblks it is.</summary>
    public readonly record struct Base(uint Length, uint Crc, int Pblks)
    {
        public static Base None => default;
    }

    /// <summary>The head's fields, checked against each other and the format.</summary>
    private static bool TryReadHead(LblkAllocFormat format, ReadOnlySpan<byte> area, out int count, out int patchBytes, out Base basis)
    {
        count = patchBytes = 0;
        basis = default;
        if (area.Length < HeadSize || area[Offsets.Algorithm] != AlgorithmId || area[Offsets.Reserved01] != 0)
            return false;
        count = BinaryPrimitives.ReadUInt16LittleEndian(area[Offsets.PatchCount..]);
        uint bytes = BinaryPrimitives.ReadUInt32LittleEndian(area[Offsets.PatchBytes..]);
        uint baseLength = BinaryPrimitives.ReadUInt32LittleEndian(area[Offsets.BaseLength..]);
        uint baseCrc = BinaryPrimitives.ReadUInt32LittleEndian(area[Offsets.BaseCrc..]);
        if (count == 0 || bytes < HeadSize || bytes > (uint)area.Length)
            return false;
        if (baseLength != 0 && (baseLength < 2 || baseLength > format.MaxCompressedLength))
            return false;
        patchBytes = (int)bytes;
        basis = new Base(baseLength, baseCrc, baseLength == 0 ? 0 : format.PblksFor(baseLength));
        return true;
    }

    /// <summary>Reads the patch at <paramref name="position"/> of <paramref name="area"/> (the patch area) and moves past it; false when malformed.</summary>
    private static bool TryReadPatch(LblkAllocFormat format, ReadOnlySpan<byte> area, ref int position, out LogRecordKind kind, out byte algorithm,
        out int offset, out int length, out int payloadLength)
    {
        kind = default;
        algorithm = 0;
        offset = length = payloadLength = 0;
        if (position + PatchHeadSize > area.Length)
            return false;
        var head = area.Slice(position, PatchHeadSize);
        uint start = BinaryPrimitives.ReadUInt32LittleEndian(head[Offsets.PatchOffset..]);
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(head[Offsets.PatchLength..]);
        kind = (LogRecordKind)head[Offsets.PatchKind];
        algorithm = head[Offsets.PatchAlgorithm];
        ushort reserved = BinaryPrimitives.ReadUInt16LittleEndian(head[Offsets.PatchReserved..]);
        uint payload = BinaryPrimitives.ReadUInt32LittleEndian(head[Offsets.PayloadLength..]);
        if (reserved != 0 || count == 0 || start >= (uint)format.LblkSize || count > (uint)format.LblkSize - start)
            return false;
        bool valid = kind switch
        {
            LogRecordKind.Data when algorithm == LogRecord.Raw => payload == count,
            LogRecordKind.Data => payload < count && Codec.ForReading(algorithm) is not null,
            LogRecordKind.Zero => algorithm == LogRecord.Raw && payload == 0,
            _ => false,
        };
        if (!valid || payload > (uint)(area.Length - position - PatchHeadSize))
            return false;
        (offset, length, payloadLength) = ((int)start, (int)count, (int)payload);
        position += PatchHeadSize + payloadLength;
        return true;
    }

    /// <summary>
    /// Encodes a patched form of <paramref name="patches"/> (applied in order) over <paramref name="basis"/> into
    /// <paramref name="destination"/>: the patch area, zero-padded to whole pblks; the caller appends the base's pblks to
    /// the entry after the patch area's. Null when it would not save a pblk against storing the lblk as it is (then the
    /// lblk is recompressed whole instead).
    /// </summary>
    public static PatchedForm? Encode(LblkAllocFormat format, ulong lblk, Base basis, IReadOnlyList<LblkPatch> patches, Span<byte> destination)
    {
        if (patches.Count is 0 or > ushort.MaxValue)
            return null;
        long patchBytes = HeadSize;
        foreach (var patch in patches)
            patchBytes += PatchBytes(patch);
        if (patchBytes > format.MaxCompressedLength)
            return null;
        int patchPblks = BaseStart((int)patchBytes) / Layout.PblkSize;
        if (patchPblks + basis.Pblks > format.PblksPerLblk - 1 || destination.Length < patchPblks * Layout.PblkSize)
            return null;
        var area = destination[..(patchPblks * Layout.PblkSize)];
        area.Clear();
        area[Offsets.Algorithm] = AlgorithmId;
        BinaryPrimitives.WriteUInt16LittleEndian(area[Offsets.PatchCount..], (ushort)patches.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(area[Offsets.PatchBytes..], (uint)patchBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(area[Offsets.BaseLength..], basis.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(area[Offsets.BaseCrc..], basis.Crc);
        int position = HeadSize;
        foreach (var patch in patches)
        {
            var head = area.Slice(position, PatchHeadSize);
            BinaryPrimitives.WriteUInt32LittleEndian(head[Offsets.PatchOffset..], (uint)patch.Offset);
            BinaryPrimitives.WriteUInt32LittleEndian(head[Offsets.PatchLength..], (uint)patch.Length);
            head[Offsets.PatchKind] = (byte)patch.Kind;
            head[Offsets.PatchAlgorithm] = patch.Algorithm;
            BinaryPrimitives.WriteUInt32LittleEndian(head[Offsets.PayloadLength..], (uint)patch.Payload.Length);
            patch.Payload.Span.CopyTo(area[(position + PatchHeadSize)..]);
            position += PatchBytes(patch);
        }
        uint length = basis.Length == 0 ? (uint)patchBytes : (uint)(patchPblks * Layout.PblkSize) + basis.Length;
        uint crc = format.WithCrc ? Checksums.LblkCrc(lblk, area[..(int)patchBytes]) : 0;
        return new PatchedForm(length, crc, (int)patchBytes, patchPblks);
    }

    /// <summary>
    /// Decodes a patched form (<paramref name="bytes"/>: its <c>length</c> stored bytes) into <paramref name="data"/>: the
    /// crc of the patch area, then the base's, are verified before anything is decompressed; a patched base is decoded the
    /// same way, before the patches over it are applied.
    /// </summary>
    internal static StoredLblkResult Decode(LblkAllocFormat format, ulong lblk, uint crc, ReadOnlySpan<byte> bytes, Span<byte> data, int prefix)
    {
        int storedBytes = bytes.Length;
        StoredLblkResult Fail(StoredLblkFault fault, uint computed = 0) => new(fault, storedBytes, computed, AlgorithmId);
        if (bytes.Length < HeadSize)
            return Fail(StoredLblkFault.Undecodable);
        uint patchBytes = BinaryPrimitives.ReadUInt32LittleEndian(bytes[Offsets.PatchBytes..]);
        if (patchBytes < HeadSize || patchBytes > bytes.Length)
            return Fail(StoredLblkFault.Undecodable);
        var area = bytes[..(int)patchBytes];
        if (format.WithCrc)
        {
            uint actual = Checksums.LblkCrc(lblk, area);
            if (actual != crc)
                return Fail(StoredLblkFault.ChecksumMismatch, actual);
        }
        if (!TryReadHead(format, area, out int count, out _, out var basis))
            return Fail(StoredLblkFault.Undecodable);
        var lblkData = data[..format.LblkSize];
        if (basis.Length == 0)
        {
            if (bytes.Length != patchBytes)
                return Fail(StoredLblkFault.Undecodable);
            lblkData.Clear();
        }
        else
        {
            // The base is shorter than the whole by at least the patch area's pblk, so the nesting ends.
            int start = BaseStart((int)patchBytes);
            if (bytes.Length != start + basis.Length)
                return Fail(StoredLblkFault.Undecodable);
            // The base is a stored form of its own, plain or patched, with the length and crc its entry had.
            var inner = StoredLblk.Decode(format, lblk, new LblkAlloc(basis.Length, basis.Crc, ReadOnlyMemory<ulong>.Empty), bytes[start..], lblkData, prefix);
            if (!inner.Ok)
                return inner with { StoredBytes = storedBytes };
        }
        int position = HeadSize;
        for (int i = 0; i < count; i++)
        {
            int at = position;
            if (!TryReadPatch(format, area, ref position, out var kind, out byte algorithm, out int offset, out int length, out int payloadLength))
                return Fail(StoredLblkFault.Undecodable);
            // A prefix read skips what lies past it.
            if ((prefix == 0 || offset < prefix) &&
                !TryApply(kind, algorithm, area.Slice(at + PatchHeadSize, payloadLength), lblkData.Slice(offset, length)))
                return Fail(StoredLblkFault.Undecodable);
        }
        if (position != patchBytes)
            return Fail(StoredLblkFault.Undecodable);
        return new StoredLblkResult(StoredLblkFault.None, storedBytes, crc, AlgorithmId);
    }

    /// <summary>Applies one patch to an lblk's bytes; false when its payload does not decode to its length.</summary>
    public static bool TryApply(in LblkPatch patch, Span<byte> lblkData) =>
        TryApply(patch.Kind, patch.Algorithm, patch.Payload.Span, lblkData.Slice(patch.Offset, patch.Length));

    private static bool TryApply(LogRecordKind kind, byte algorithm, ReadOnlySpan<byte> payload, Span<byte> target)
    {
        if (kind == LogRecordKind.Zero)
        {
            target.Clear();
            return true;
        }
        if (algorithm == LogRecord.Raw)
        {
            payload.CopyTo(target);
            return true;
        }
        var codec = Codec.ForReading(algorithm);
        return codec is not null && codec.TryDecompress(payload, target);
    }
}

/// <summary>An encoded patch area: the entry's length and crc fields, the area's bytes and the pblks it fills (before the base's).</summary>
public readonly record struct PatchedForm(uint Length, uint Crc, int PatchBytes, int PatchPblks);
