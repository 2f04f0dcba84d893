using System.Buffers.Binary;
using Cbd.Core.Compression;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Format;

/// <summary>A header field as docs/FORMAT.md places it: written out here, not taken from the code under test.</summary>
internal readonly record struct HeaderField(string Name, int Offset, int Size)
{
    public static readonly HeaderField VersionMajor = new("version_major", 0x04, 2);
    public static readonly HeaderField VersionMinor = new("version_minor", 0x06, 2);
    public static readonly HeaderField NrPhysicalSectors = new("nr_physical_sectors", 0x08, 8);
    public static readonly HeaderField NrLogicalSectors = new("nr_logical_sectors", 0x10, 8);
    public static readonly HeaderField LblkShift = new("lblk_shift", 0x18, 2);
    public static readonly HeaderField Flags = new("flags", 0x1A, 2);
    public static readonly HeaderField Algorithm = new("algorithm", 0x1C, 1);
    public static readonly HeaderField Level = new("level", 0x1D, 1);
    public static readonly HeaderField NrZones = new("nr_zones", 0x20, 4);
    public static readonly HeaderField LblkPerZone = new("lblk_per_zone", 0x24, 4);
    public static readonly HeaderField PblkUsed = new("pblk_used", 0x28, 8);
    public static readonly HeaderField LblkUsed = new("lblk_used", 0x30, 8);

    public static IReadOnlyList<HeaderField> All { get; } =
        [VersionMajor, VersionMinor, NrPhysicalSectors, NrLogicalSectors, LblkShift, Flags, Algorithm, Level, NrZones, LblkPerZone, PblkUsed, LblkUsed];

    public override string ToString() => Name;
}

/// <summary>
/// Edits a serialized header and re-seals it with a correct CRC32C, so that a test reaches the checks
/// that sit behind the checksum (version, flags, geometry...).
/// </summary>
internal static class HeaderImage
{
    public const int ChecksumOffset = 0x1FC;

    public static ulong Get(ReadOnlySpan<byte> header, HeaderField field) => field.Size switch
    {
        1 => header[field.Offset],
        2 => BinaryPrimitives.ReadUInt16LittleEndian(header[field.Offset..]),
        4 => BinaryPrimitives.ReadUInt32LittleEndian(header[field.Offset..]),
        _ => BinaryPrimitives.ReadUInt64LittleEndian(header[field.Offset..]),
    };

    /// <summary>Sets a field (truncated to its width) and fixes the checksum.</summary>
    public static void Set(Span<byte> header, HeaderField field, ulong value)
    {
        switch (field.Size)
        {
            case 1: header[field.Offset] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(header[field.Offset..], (ushort)value); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(header[field.Offset..], (uint)value); break;
            default: BinaryPrimitives.WriteUInt64LittleEndian(header[field.Offset..], value); break;
        }
        Seal(header);
    }

    /// <summary>Sets one raw byte and fixes the checksum.</summary>
    public static void SetByte(Span<byte> header, int offset, byte value)
    {
        header[offset] = value;
        Seal(header);
    }

    public static void Seal(Span<byte> header) =>
        BinaryPrimitives.WriteUInt32LittleEndian(header[ChecksumOffset..], Checksums.Crc32C(header[..ChecksumOffset]));

    public static byte[] ReadSector(MemoryBackingStore store)
    {
        var sector = new byte[512];
        store.Read(0, sector);
        return sector;
    }

    /// <summary>Rewrites a field of the header in pblk 0 of <paramref name="store"/>, checksum fixed up.</summary>
    public static void Rewrite(MemoryBackingStore store, HeaderField field, ulong value)
    {
        var sector = ReadSector(store);
        Set(sector, field, value);
        store.Write(0, sector);
    }

    public static ulong Read(MemoryBackingStore store, HeaderField field) => Get(ReadSector(store), field);
}
