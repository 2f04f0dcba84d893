using System.Buffers.Binary;
using System.IO.Hashing;
using Cbd.Core.Compression;
using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>Header flag bits (docs/FORMAT.md, "Header").</summary>
[Flags]
public enum HeaderFlags : ushort
{
    None = 0,

    /// <summary>Set while the image is open for writing; set at open means the last close was not clean.</summary>
    Dirty = 1 << 0,

    /// <summary>All-zero lblks are stored as unallocated.</summary>
    ZeroDetect = 1 << 1,

    /// <summary>Every lblk_alloc entry carries a CRC32C of the lblk's stored bytes.</summary>
    LblkCrc = 1 << 2,

    Known = Dirty | ZeroDetect | LblkCrc,
}

/// <summary>
/// The 4096-byte header in pblk 0. Every field lives in the first 512-byte sector, which is covered by
/// a CRC32C, so that one sector write updates it atomically; bytes 512..4095 are reserved and zero.
/// </summary>
public sealed record Header
{
    /// <summary>Byte offsets of the header fields.</summary>
    internal static class Offsets
    {
        internal const int Magic = 0x00;                                  // 0x00-0x03 byte[4]
        internal const int VersionMajor = Magic + 4;                      // 0x04-0x05 u16
        internal const int VersionMinor = VersionMajor + sizeof(ushort);  // 0x06-0x07 u16
        internal const int NrPhysicalSectors = VersionMinor + sizeof(ushort); // 0x08-0x0F u64
        internal const int NrLogicalSectors = NrPhysicalSectors + sizeof(ulong); // 0x10-0x17 u64
        internal const int LblkShift = NrLogicalSectors + sizeof(ulong);  // 0x18-0x19 u16
        internal const int Flags = LblkShift + sizeof(ushort);            // 0x1A-0x1B u16
        internal const int Algorithm = Flags + sizeof(ushort);            // 0x1C u8
        internal const int Level = Algorithm + sizeof(byte);              // 0x1D u8
        internal const int Reserved1E = Level + sizeof(byte);             // 0x1E-0x1F u16, zero
        internal const int NrZones = Reserved1E + sizeof(ushort);         // 0x20-0x23 u32
        internal const int LblkPerZone = NrZones + sizeof(uint);          // 0x24-0x27 u32
        internal const int PblkUsed = LblkPerZone + sizeof(uint);         // 0x28-0x2F u64
        internal const int LblkUsed = PblkUsed + sizeof(ulong);           // 0x30-0x37 u64
        internal const int LogPblks = LblkUsed + sizeof(ulong);           // 0x38-0x3F u64, version 1.1
        internal const int LogId = LogPblks + sizeof(ulong);              // 0x40-0x47 u64, version 1.1
        internal const int LogTail = LogId + sizeof(ulong);               // 0x48-0x4F u64, version 1.1
        internal const int LogSeq = LogTail + sizeof(ulong);              // 0x50-0x57 u64, version 1.1
        internal const int LogEpoch = LogSeq + sizeof(ulong);             // 0x58-0x5B u32, version 1.1
        internal const int LogTailEpoch = LogEpoch + sizeof(uint);        // 0x5C-0x5F u32, version 1.1
        internal const int ReservedEnd = LogTailEpoch + sizeof(uint);     // 0x60-0x1FB zero
        /// <summary>Where version 1.0's reserved bytes start: the log fields are reserved there.</summary>
        internal const int ReservedEnd10 = LogPblks;
        internal const int Checksum = Layout.SectorSize - sizeof(uint);   // 0x1FC-0x1FF u32 CRC32C of 0x000-0x1FB
    }

    /// <summary>The magic bytes: 'C' 'B' 'D' 0x1A.</summary>
    public static ReadOnlySpan<byte> Magic => [0x43, 0x42, 0x44, 0x1A];

    public const ushort CurrentVersionMajor = 1;
    public const ushort CurrentVersionMinor = 2;

    /// <summary>The minor version of an image without a write log; one with a log is <see cref="LogVersionMinor"/>.</summary>
    public const ushort NoLogVersionMinor = 0;

    /// <summary>The minor version that added the write log (docs/FORMAT.md, "The write log").</summary>
    public const ushort LogVersionMinor = 1;

    /// <summary>The minor version that added patched lblks (docs/FORMAT.md, "Patched lblks"): an image with a log is formatted so.</summary>
    public const ushort PatchedVersionMinor = 2;

    public ushort VersionMajor { get; init; } = CurrentVersionMajor;
    public ushort VersionMinor { get; init; } = NoLogVersionMinor;
    public ulong NrPhysicalSectors { get; init; }
    public ulong NrLogicalSectors { get; init; }

    /// <summary>pblks per lblk = 1 &lt;&lt; LblkShift.</summary>
    public ushort LblkShift { get; init; }
    public HeaderFlags Flags { get; init; }
    public CompressionAlgorithm Algorithm { get; init; }
    public byte Level { get; init; }
    public uint NrZones { get; init; }
    public uint LblkPerZone { get; init; }

    /// <summary>Data pblks in use; trusted only when the image was closed clean.</summary>
    public ulong PblkUsed { get; init; }

    /// <summary>Allocated lblks; trusted only when the image was closed clean.</summary>
    public ulong LblkUsed { get; init; }

    /// <summary>pblks of the write log at the end of the device; 0 when the image has none (version 1.0).</summary>
    public ulong LogPblks { get; init; }

    /// <summary>A random number chosen at format that every log record carries, so that no record of another image is ever replayed.</summary>
    public ulong LogId { get; init; }

    /// <summary>Byte offset, within the log, of the oldest record still needed (a multiple of 512).</summary>
    public ulong LogTail { get; init; }

    /// <summary>The sequence number of the record at <see cref="LogTail"/>.</summary>
    public ulong LogSeq { get; init; }

    /// <summary>Sessions that opened the image for writing; records carry the number of the one that wrote them.</summary>
    public uint LogEpoch { get; init; }

    /// <summary>
    /// The least epoch the record at <see cref="LogTail"/> may have: its own when the tail is at a record, else the epoch of
    /// the session that moved the tail to the head. A record an earlier session left there is then never taken.
    /// </summary>
    public uint LogTailEpoch { get; init; }

    public bool HasLog => LogPblks != 0;

    public int LblkSize => Layout.PblkSize << LblkShift;

    /// <summary>Serializes into the first 4096 bytes of <paramref name="destination"/>, checksum included.</summary>
    public void Write(Span<byte> destination)
    {
        var b = destination[..Layout.HeaderSize];
        b.Clear();
        Magic.CopyTo(b[Offsets.Magic..]);
        BinaryPrimitives.WriteUInt16LittleEndian(b[Offsets.VersionMajor..], VersionMajor);
        BinaryPrimitives.WriteUInt16LittleEndian(b[Offsets.VersionMinor..], VersionMinor);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.NrPhysicalSectors..], NrPhysicalSectors);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.NrLogicalSectors..], NrLogicalSectors);
        BinaryPrimitives.WriteUInt16LittleEndian(b[Offsets.LblkShift..], LblkShift);
        BinaryPrimitives.WriteUInt16LittleEndian(b[Offsets.Flags..], (ushort)Flags);
        b[Offsets.Algorithm] = (byte)Algorithm;
        b[Offsets.Level] = Level;
        BinaryPrimitives.WriteUInt32LittleEndian(b[Offsets.NrZones..], NrZones);
        BinaryPrimitives.WriteUInt32LittleEndian(b[Offsets.LblkPerZone..], LblkPerZone);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.PblkUsed..], PblkUsed);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.LblkUsed..], LblkUsed);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.LogPblks..], LogPblks);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.LogId..], LogId);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.LogTail..], LogTail);
        BinaryPrimitives.WriteUInt64LittleEndian(b[Offsets.LogSeq..], LogSeq);
        BinaryPrimitives.WriteUInt32LittleEndian(b[Offsets.LogEpoch..], LogEpoch);
        BinaryPrimitives.WriteUInt32LittleEndian(b[Offsets.LogTailEpoch..], LogTailEpoch);
        BinaryPrimitives.WriteUInt32LittleEndian(b[Offsets.Checksum..], Crc32C(b[..Offsets.Checksum]));
    }

    /// <summary>
    /// Writes the header to pblk 0 of <paramref name="store"/> and makes it durable before returning.
    /// Only the first sector holds fields, so this is one atomic sector write; the rest of pblk 0 stays zero.
    /// </summary>
    public async ValueTask WriteAsync(IBackingStore store, CancellationToken cancellationToken = default)
    {
        byte[] page = new byte[Layout.HeaderSize];
        Write(page);
        await store.WriteAsync(0, page.AsMemory(0, Layout.SectorSize), cancellationToken).ConfigureAwait(false);
        await store.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Parses a header. Returns false when <paramref name="source"/> is shorter than a sector or the magic
    /// is not cbd's (not a cbd image at all). Throws <see cref="InvalidDataException"/> naming the field for
    /// a cbd header that is corrupt or of an unsupported version. Geometry is checked by <see cref="Geometry"/>.
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out Header header)
    {
        header = null!;
        if (source.Length < Layout.SectorSize || !source[..4].SequenceEqual(Magic))
            return false;

        // The checksum first: no other field is trusted before it matches.
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(source[Offsets.Checksum..]);
        uint actual = Crc32C(source[..Offsets.Checksum]);
        if (stored != actual)
            throw new InvalidDataException($"header checksum: stored 0x{stored:x8}, computed 0x{actual:x8} over bytes 0x000-0x1FB");

        ushort major = BinaryPrimitives.ReadUInt16LittleEndian(source[Offsets.VersionMajor..]);
        ushort minor = BinaryPrimitives.ReadUInt16LittleEndian(source[Offsets.VersionMinor..]);
        if (major != CurrentVersionMajor || minor > CurrentVersionMinor)
            throw new InvalidDataException($"version: {major}.{minor}, expected {CurrentVersionMajor}.0 to {CurrentVersionMajor}.{CurrentVersionMinor}");

        var flags = (HeaderFlags)BinaryPrimitives.ReadUInt16LittleEndian(source[Offsets.Flags..]);
        if ((flags & ~HeaderFlags.Known) != 0)
            throw new InvalidDataException($"flags: 0x{(ushort)flags:x4} has unknown bits 0x{(ushort)(flags & ~HeaderFlags.Known):x4}");

        var algorithm = (CompressionAlgorithm)source[Offsets.Algorithm];
        byte level = source[Offsets.Level];
        CodecLimits.Validate(algorithm, level, "header");

        // Version 1.0 reserves the log fields too: a 1.0 image has no log.
        int reservedEnd = minor >= LogVersionMinor ? Offsets.ReservedEnd : Offsets.ReservedEnd10;
        int reserved = source[Offsets.Reserved1E..Offsets.NrZones].IndexOfAnyExcept((byte)0);
        if (reserved >= 0)
            reserved += Offsets.Reserved1E;
        else if ((reserved = source[reservedEnd..Offsets.Checksum].IndexOfAnyExcept((byte)0)) >= 0)
            reserved += reservedEnd;
        if (reserved >= 0)
            throw new InvalidDataException(
                $"header reserved byte 0x{reserved:X}: 0x{source[reserved]:x2}, expected 0 (bytes 0x1E-0x1F and 0x{reservedEnd:X}-0x1FB are reserved in version {major}.{minor})");
        ulong logPblks = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.LogPblks..]);
        if (minor >= LogVersionMinor && logPblks == 0)
            throw new InvalidDataException($"log_pblks: 0, expected a write log in a version {major}.{minor} image (an image without one is version {major}.{NoLogVersionMinor})");

        header = new Header
        {
            VersionMajor = major,
            VersionMinor = minor,
            NrPhysicalSectors = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.NrPhysicalSectors..]),
            NrLogicalSectors = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.NrLogicalSectors..]),
            LblkShift = BinaryPrimitives.ReadUInt16LittleEndian(source[Offsets.LblkShift..]),
            Flags = flags,
            Algorithm = algorithm,
            Level = level,
            NrZones = BinaryPrimitives.ReadUInt32LittleEndian(source[Offsets.NrZones..]),
            LblkPerZone = BinaryPrimitives.ReadUInt32LittleEndian(source[Offsets.LblkPerZone..]),
            PblkUsed = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.PblkUsed..]),
            LblkUsed = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.LblkUsed..]),
            LogPblks = logPblks,
            LogId = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.LogId..]),
            LogTail = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.LogTail..]),
            LogSeq = BinaryPrimitives.ReadUInt64LittleEndian(source[Offsets.LogSeq..]),
            LogEpoch = BinaryPrimitives.ReadUInt32LittleEndian(source[Offsets.LogEpoch..]),
            LogTailEpoch = BinaryPrimitives.ReadUInt32LittleEndian(source[Offsets.LogTailEpoch..]),
        };
        return true;
    }

    private static uint Crc32C(ReadOnlySpan<byte> data) => Checksums.Crc32C(data);
}
