using System.Buffers.Binary;

namespace Cbd.Core.Format;

/// <summary>
/// The encoding of lblk_alloc entries of one device, <c>lblk_alloc_X_Y</c>: X bits of length, then
/// <see cref="PblksPerLblk"/> pblk numbers of Y bits each, then (when the header has
/// <see cref="HeaderFlags.LblkCrc"/>) a u32 CRC32C. All little-endian.
/// </summary>
/// <remarks>
/// Length field: 0 = unallocated (every other byte of the entry is zero; the lblk reads as zeros);
/// all ones (0xFFFF / 0xFFFFFFFF) = stored uncompressed in all <see cref="PblksPerLblk"/> pblks;
/// otherwise the stored byte count of a compressed lblk, 2 .. lblk size - 4096, whose first stored
/// byte is the <see cref="Compression.CompressionAlgorithm"/> id; it fills the first ceil(length / 4096) pblk
/// slots and the rest are zero. Entries never straddle a 512-byte sector of the lbat (see
/// <see cref="EntriesPerSector"/>), so a torn lbat write leaves each entry old or new.
/// </remarks>
public sealed class LblkAllocFormat
{
    // Shifts up to this keep 1 << shift an int; the format's own bound (Layout.MaxHeaderLblkShift) is far lower,
    // but MaxLblkShift and the checker build encodings for any header value to find out.
    private const int MaxShiftInArithmetic = 30;

    public LblkAllocFormat(int lblkShift, ulong nrPblks, bool withCrc)
    {
        if (lblkShift < 0 || lblkShift > MaxShiftInArithmetic)
            throw new ArgumentOutOfRangeException(nameof(lblkShift));
        LblkShift = lblkShift;
        LengthBits = lblkShift <= Layout.MaxShiftForLength16 ? 16 : 32;
        PblkBits = PblkBitsFor(nrPblks);
        WithCrc = withCrc;
        long size = LengthBits / 8 + (long)(PblkBits / 8) * PblksPerLblk + (withCrc ? sizeof(uint) : 0);
        EntrySize = (int)Math.Min(size, int.MaxValue);
        EntriesPerSector = EntrySize <= Layout.SectorSize ? Layout.SectorSize / EntrySize : 0;
    }

    public int LblkShift { get; }
    public int PblksPerLblk => 1 << LblkShift;
    public int LblkSize => Layout.PblkSize << LblkShift;

    /// <summary>X: 16 when lblks are at most 64 KiB, else 32.</summary>
    public int LengthBits { get; }

    /// <summary>Y: 16, 32 or 48, the fewest bits that number every pblk of the device.</summary>
    public int PblkBits { get; }
    public bool WithCrc { get; }
    public int EntrySize { get; }

    /// <summary>floor(512 / EntrySize); 0 when an entry does not fit in a sector (not a valid geometry).</summary>
    public int EntriesPerSector { get; }

    /// <summary>The length value that marks an lblk stored uncompressed.</summary>
    public uint UncompressedLength => LengthBits == 16 ? ushort.MaxValue : uint.MaxValue;

    /// <summary>Largest stored length of a compressed lblk: it must save at least one pblk.</summary>
    public int MaxCompressedLength => LblkSize - Layout.PblkSize;

    public string Name => $"lblk_alloc_{LengthBits}_{PblkBits}";

    public static int PblkBitsFor(ulong nrPblks) => nrPblks <= 1UL << 16 ? 16 : nrPblks <= 1UL << 32 ? 32 : Layout.MaxPblkBits;

    /// <summary>The largest lblk shift the format allows for a device of <paramref name="nrPblks"/> pblks.</summary>
    public static int MaxLblkShift(ulong nrPblks, bool withCrc)
    {
        int max = -1;
        for (int shift = Layout.MinLblkShift; shift <= Layout.MaxHeaderLblkShift; shift++)
        {
            if (new LblkAllocFormat(shift, nrPblks, withCrc).EntriesPerSector > 0)
                max = shift;
        }
        return max;
    }

    /// <summary>Byte offset of entry <paramref name="index"/> within the zone's lbat.</summary>
    public long EntryOffset(long index) =>
        index / EntriesPerSector * Layout.SectorSize + index % EntriesPerSector * EntrySize;

    /// <summary>pblks an lbat of <paramref name="entries"/> entries takes.</summary>
    public long LbatPblks(long entries)
    {
        long perPblk = (long)EntriesPerSector * Layout.SectorsPerPblk;
        return (entries + perPblk - 1) / perPblk;
    }

    /// <summary>Decodes the entry at the start of <paramref name="source"/>.</summary>
    /// <param name="pblks">Receives <see cref="PblksPerLblk"/> pblk numbers (0 for unused slots).</param>
    public void Read(ReadOnlySpan<byte> source, Span<ulong> pblks, out uint length, out uint crc)
    {
        var entry = source[..EntrySize];
        length = LengthBits == 16 ? BinaryPrimitives.ReadUInt16LittleEndian(entry) : BinaryPrimitives.ReadUInt32LittleEndian(entry);
        int pos = LengthBits / 8;
        int n = PblksPerLblk;
        switch (PblkBits)
        {
            case 16:
                for (int i = 0; i < n; i++, pos += 2) pblks[i] = BinaryPrimitives.ReadUInt16LittleEndian(entry[pos..]);
                break;
            case 32:
                for (int i = 0; i < n; i++, pos += 4) pblks[i] = BinaryPrimitives.ReadUInt32LittleEndian(entry[pos..]);
                break;
            default:
                for (int i = 0; i < n; i++, pos += 6)
                    pblks[i] = BinaryPrimitives.ReadUInt32LittleEndian(entry[pos..]) | (ulong)BinaryPrimitives.ReadUInt16LittleEndian(entry[(pos + 4)..]) << 32;
                break;
        }
        crc = WithCrc ? BinaryPrimitives.ReadUInt32LittleEndian(entry[pos..]) : 0;
    }

    /// <summary>Encodes an entry at the start of <paramref name="destination"/>.</summary>
    public void Write(Span<byte> destination, ReadOnlySpan<ulong> pblks, uint length, uint crc)
    {
        var entry = destination[..EntrySize];
        if (LengthBits == 16)
            BinaryPrimitives.WriteUInt16LittleEndian(entry, (ushort)length);
        else
            BinaryPrimitives.WriteUInt32LittleEndian(entry, length);
        int pos = LengthBits / 8;
        int n = PblksPerLblk;
        for (int i = 0; i < n; i++)
        {
            ulong p = i < pblks.Length ? pblks[i] : 0;
            switch (PblkBits)
            {
                case 16: BinaryPrimitives.WriteUInt16LittleEndian(entry[pos..], (ushort)p); pos += 2; break;
                case 32: BinaryPrimitives.WriteUInt32LittleEndian(entry[pos..], (uint)p); pos += 4; break;
                default:
                    BinaryPrimitives.WriteUInt32LittleEndian(entry[pos..], (uint)p);
                    BinaryPrimitives.WriteUInt16LittleEndian(entry[(pos + 4)..], (ushort)(p >> 32));
                    pos += 6;
                    break;
            }
        }
        if (WithCrc)
            BinaryPrimitives.WriteUInt32LittleEndian(entry[pos..], crc);
    }

    /// <summary>pblks an entry with this length field occupies.</summary>
    public int PblksFor(uint length) =>
        length == 0 ? 0 : length == UncompressedLength ? PblksPerLblk : (int)((length + Layout.PblkSize - 1) / Layout.PblkSize);

    /// <summary>Stored bytes for this length field.</summary>
    public int StoredBytes(uint length) => length == UncompressedLength ? LblkSize : (int)length;

    /// <summary>
    /// Null when the length field is one this format can hold, else why not: lengths 1, and lengths
    /// from lblk size - 4095 up to (but not including) the uncompressed marker, are invalid.
    /// </summary>
    public string? CheckLength(uint length)
    {
        if (length == 0 || length == UncompressedLength)
            return null;
        if (length < 2 || length > MaxCompressedLength)
            return $"length {length}: expected 0 (unallocated), 2..{MaxCompressedLength} (compressed) or 0x{UncompressedLength:X} (uncompressed)";
        return null;
    }
}
