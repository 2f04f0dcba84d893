using Cbd.Core.Compression;
using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>
/// Where everything lives on a device: zones of [pbat | lbat | data] after the header
/// (docs/FORMAT.md, "Geometry"). Built only from a header that passed <see cref="FromHeader"/>.
/// </summary>
public sealed class Geometry
{
    private Geometry(Header header)
    {
        Header = header;
        NrPblks = header.NrPhysicalSectors / Layout.SectorsPerPblk;
        LogPblks = header.LogPblks;
        ZonesEnd = NrPblks - Math.Min(LogPblks, NrPblks);
        Alloc = new LblkAllocFormat(header.LblkShift, NrPblks, header.Flags.HasFlag(HeaderFlags.LblkCrc));
        NrLblks = header.NrLogicalSectors * Layout.SectorSize / (ulong)header.LblkSize;
        NrZones = header.NrZones;
        LblkPerZone = header.LblkPerZone;
        LbatPblks = (ulong)Alloc.LbatPblks(LblkPerZone);
        ZoneStride = 1 + LbatPblks + Layout.PblksPerZoneData;
    }

    public Header Header { get; }

    /// <summary>pblks of the device, header included; pblk n is at byte n * 4096.</summary>
    public ulong NrPblks { get; }
    public ulong NrLblks { get; }
    public uint NrZones { get; }
    public uint LblkPerZone { get; }
    public LblkAllocFormat Alloc { get; }
    public ulong LbatPblks { get; }

    /// <summary>pblks of the write log, the last pblks of the device (docs/FORMAT.md, "The write log"); 0 without one.</summary>
    public ulong LogPblks { get; }

    /// <summary>The first pblk past the zones: the log's first pblk, or the device's end without a log.</summary>
    public ulong ZonesEnd { get; }

    /// <summary>Byte offset of the write log on the backing store.</summary>
    public long LogStartByte => (long)ZonesEnd * Layout.PblkSize;

    /// <summary>Bytes of the write log.</summary>
    public long LogBytes => (long)LogPblks * Layout.PblkSize;

    /// <summary>pblks from one zone's start to the next's: pbat, lbat, 32768 data pblks.</summary>
    public ulong ZoneStride { get; }
    public int LblkSize => Alloc.LblkSize;
    public long LogicalBytes => (long)NrLblks * LblkSize;

    /// <summary>The zone's pbat pblk.</summary>
    public ulong ZoneStart(uint zone) => 1 + zone * ZoneStride;
    public ulong LbatStart(uint zone) => ZoneStart(zone) + 1;
    public ulong DataStart(uint zone) => ZoneStart(zone) + 1 + LbatPblks;

    /// <summary>Data pblks of the zone: 32768, fewer in a last, partial zone.</summary>
    public int DataPblks(uint zone) => (int)Math.Min(Layout.PblksPerZoneData, ZonesEnd - DataStart(zone));

    public ulong TotalDataPblks => (NrZones - 1UL) * Layout.PblksPerZoneData + (ulong)DataPblks(NrZones - 1);

    /// <summary>The zone and pbat bit of a data pblk; false for header, pbat and lbat pblks and pblks past the end.</summary>
    public bool TryLocateDataPblk(ulong pblk, out uint zone, out int bit)
    {
        zone = 0;
        bit = 0;
        if (pblk == 0 || pblk >= ZonesEnd)
            return false;
        ulong z = (pblk - 1) / ZoneStride;
        if (z >= NrZones)
            return false;
        ulong offset = pblk - DataStart((uint)z);
        if (pblk < DataStart((uint)z) || offset >= (ulong)DataPblks((uint)z))
            return false;
        zone = (uint)z;
        bit = (int)offset;
        return true;
    }

    public uint HomeZone(ulong lblk) => (uint)(lblk / LblkPerZone);

    /// <summary>Byte offset on the backing store of lblk's lblk_alloc entry.</summary>
    public long EntryByteOffset(ulong lblk)
    {
        uint zone = HomeZone(lblk);
        return (long)LbatStart(zone) * Layout.PblkSize + Alloc.EntryOffset((long)(lblk % LblkPerZone));
    }

    /// <summary>
    /// Validates a header's geometry against itself and the backing store; throws
    /// <see cref="InvalidDataException"/> naming the field, its value and what was expected.
    /// </summary>
    public static Geometry FromHeader(Header header, long backingLength)
    {
        if (header.NrPhysicalSectors % Layout.SectorsPerPblk != 0)
            throw new InvalidDataException($"nr_physical_sectors: {header.NrPhysicalSectors}, expected a multiple of {Layout.SectorsPerPblk} (whole 4 KiB pblks)");
        if (header.LblkShift > Layout.MaxHeaderLblkShift)
            throw new InvalidDataException($"lblk_shift: {header.LblkShift}, expected 0..{Layout.MaxHeaderLblkShift}");
        ulong nrPblks = header.NrPhysicalSectors / Layout.SectorsPerPblk;
        if (nrPblks > Layout.MaxPblks)
            throw new InvalidDataException($"nr_physical_sectors: {header.NrPhysicalSectors}, expected at most 2^48 pblks");
        bool crc = header.Flags.HasFlag(HeaderFlags.LblkCrc);
        int maxShift = LblkAllocFormat.MaxLblkShift(nrPblks, crc);
        if (header.LblkShift > maxShift)
            throw new InvalidDataException(
                $"lblk_shift: {header.LblkShift}, expected 0..{maxShift} for a device of {nrPblks} pblks (an lblk_alloc entry must fit in one 512-byte sector)");
        if ((ulong)backingLength < header.NrPhysicalSectors * Layout.SectorSize)
            throw new InvalidDataException(
                $"nr_physical_sectors: {header.NrPhysicalSectors} ({header.NrPhysicalSectors * Layout.SectorSize} bytes), but the backing store holds only {backingLength} bytes");
        ulong lblkSize = (ulong)header.LblkSize;
        if (header.NrLogicalSectors == 0 || header.NrLogicalSectors * Layout.SectorSize % lblkSize != 0 ||
            header.NrLogicalSectors > ulong.MaxValue / Layout.SectorSize)
            throw new InvalidDataException($"nr_logical_sectors: {header.NrLogicalSectors}, expected a non-zero multiple of the lblk size ({lblkSize / Layout.SectorSize} sectors)");
        if (header.NrZones == 0)
            throw new InvalidDataException("nr_zones: 0, expected at least 1");
        if (header.LblkPerZone == 0)
            throw new InvalidDataException("lblk_per_zone: 0, expected at least 1");

        if (header.HasLog)
            CheckLog(header, nrPblks);

        var g = new Geometry(header);
        if ((ulong)header.NrZones * header.LblkPerZone < g.NrLblks)
            throw new InvalidDataException(
                $"lblk_per_zone: {header.LblkPerZone} x nr_zones {header.NrZones} = {(ulong)header.NrZones * header.LblkPerZone} lblks, but nr_logical_sectors needs {g.NrLblks}");
        // The last zone must start inside the device and hold at least one data pblk.
        ulong lastDataStart = 1 + (header.NrZones - 1UL) * g.ZoneStride + 1 + g.LbatPblks;
        if (lastDataStart >= g.ZonesEnd)
            throw new InvalidDataException(
                $"nr_zones: {header.NrZones}, but {g.ZonesEnd} pblks hold at most {MaxZones(g.ZonesEnd, g.LbatPblks)} zones of {g.LbatPblks} lbat pblks" +
                (header.HasLog ? $" (the device's {nrPblks} pblks less the log's {header.LogPblks})" : ""));
        if (g.TotalDataPblks < 2UL * (ulong)g.Alloc.PblksPerLblk)
            throw new InvalidDataException(
                $"nr_physical_sectors: {header.NrPhysicalSectors}, leaves {g.TotalDataPblks} data pblks; at least {2 * g.Alloc.PblksPerLblk} (two lblks) are needed");
        return g;
    }

    /// <summary>The smallest write log for an lblk size: two records of a whole lblk stored raw, each with its header sector.</summary>
    public static ulong MinLogPblks(int lblkSize) => 2UL * ((ulong)lblkSize + Layout.PblkSize) / Layout.PblkSize;

    private static void CheckLog(Header header, ulong nrPblks)
    {
        ulong min = MinLogPblks(header.LblkSize);
        if (header.LogPblks < min || header.LogPblks >= nrPblks)
            throw new InvalidDataException($"log_pblks: {header.LogPblks}, expected {min} (two whole-lblk records) to fewer than the device's {nrPblks} pblks");
        ulong logBytes = header.LogPblks * Layout.PblkSize;
        if (header.LogTail % Layout.SectorSize != 0 || header.LogTail >= logBytes)
            throw new InvalidDataException($"log_tail: {header.LogTail}, expected a multiple of {Layout.SectorSize} below the log's {logBytes} bytes");
    }

    /// <summary>
    /// Reads and validates the header and geometry of the image on <paramref name="store"/>; throws
    /// <see cref="InvalidDataException"/> naming the field, its value and what was expected.
    /// </summary>
    public static async ValueTask<Geometry> ReadAsync(IBackingStore store, CancellationToken cancellationToken = default)
    {
        if (store.Length < Layout.HeaderSize)
            throw new InvalidDataException($"backing store: {store.Length} bytes, shorter than the {Layout.HeaderSize}-byte header");
        byte[] page = new byte[Layout.HeaderSize];
        await store.ReadAsync(0, page, cancellationToken).ConfigureAwait(false);
        if (!Header.TryRead(page, out var header))
            throw new InvalidDataException($"magic: {Convert.ToHexString(page, 0, 4)}, expected {Convert.ToHexString(Header.Magic)} (not a cbd image)");
        return FromHeader(header, store.Length);
    }

    /// <summary>How many zones with <paramref name="lbatPblks"/>-pblk lbats fit in <paramref name="nrPblks"/> pblks (each needs its pbat, lbat and one data pblk).</summary>
    internal static ulong MaxZones(ulong nrPblks, ulong lbatPblks)
    {
        ulong stride = 1 + lbatPblks + Layout.PblksPerZoneData;
        return nrPblks < 3 + lbatPblks ? 0 : (nrPblks - 3 - lbatPblks) / stride + 1;
    }

    /// <summary>
    /// Plans a new device: picks nr_zones and lblk_per_zone for the sizes given. Throws
    /// <see cref="ArgumentException"/> with the limit when the sizes cannot be formatted.
    /// </summary>
    /// <param name="maxLogicalBytes">
    /// The largest logical size the image can later be given without a new format (tune, resize): the
    /// lbats get an entry for each of its lblks. Null, or less than <paramref name="logicalBytes"/>: the logical size.
    /// </param>
    /// <param name="logPblks">pblks of the write log at the end of the device (docs/FORMAT.md, "The write log"); 0 for none (a version 1.0 image).</param>
    /// <param name="logId">The log's random id, with a log.</param>
    public static Header Plan(long physicalBytes, long logicalBytes, int lblkSize, CompressionAlgorithm algorithm, int level, HeaderFlags flags,
        long? maxLogicalBytes = null, ulong logPblks = 0, ulong logId = 0)
    {
        if (lblkSize < Layout.PblkSize || !int.IsPow2(lblkSize))
            throw new ArgumentException($"lblk size {lblkSize}: must be a power of two of at least {Layout.PblkSize}");
        if ((flags & ~HeaderFlags.Known) != 0)
            throw new ArgumentException($"flags: 0x{(ushort)flags:x4} has unknown bits 0x{(ushort)(flags & ~HeaderFlags.Known):x4}");
        try
        {
            CodecLimits.Validate(algorithm, level, "requested");
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException(e.Message, e);
        }
        int shift = int.Log2(lblkSize / Layout.PblkSize);
        ulong devicePblks = (ulong)(physicalBytes / Layout.PblkSize);
        if (devicePblks > Layout.MaxPblks)
            throw new ArgumentException($"physical size {physicalBytes}: the format holds at most 2^48 pblks (1 EiB)");
        if (logPblks != 0 && logPblks < MinLogPblks(lblkSize))
            throw new ArgumentException($"log size {logPblks * Layout.PblkSize}: at least {MinLogPblks(lblkSize) * Layout.PblkSize} bytes (two records of a whole {lblkSize}-byte lblk)");
        if (logPblks != 0 && logPblks >= devicePblks)
            throw new ArgumentException($"log size {logPblks * Layout.PblkSize}: must leave room for the zones in a physical size of {physicalBytes}");
        // The zones fill what the log leaves; the lblk_alloc encoding still follows the whole device's size.
        ulong nrPblks = devicePblks - logPblks;
        bool crc = flags.HasFlag(HeaderFlags.LblkCrc);
        int maxShift = LblkAllocFormat.MaxLblkShift(devicePblks, crc);
        if (shift > maxShift)
            throw new ArgumentException(
                $"lblk size {lblkSize}: at most {Layout.PblkSize << maxShift} bytes on a device of this size (an lblk_alloc entry must fit in one 512-byte sector)");
        long nrLblks = logicalBytes / lblkSize;
        if (nrLblks < 1)
            throw new ArgumentException($"logical size {logicalBytes}: must hold at least one lblk of {lblkSize} bytes");
        // Every zone gets entries for its share of the ceiling, so that the logical size can grow to it in place.
        long entries = Math.Max(nrLblks, (maxLogicalBytes ?? 0) / lblkSize);

        var alloc = new LblkAllocFormat(shift, devicePblks, crc);
        // Every lblk needs an entry in an lbat on the device. One zone holds the most: header, pbat, the
        // lbat, and the 2n data pblks that let one lblk be rewritten (more zones only add pbats).
        ulong minData = 2UL * (ulong)alloc.PblksPerLblk;
        if (nrPblks > 2 + minData)
        {
            ulong maxLblks = (nrPblks - 2 - minData) * (ulong)alloc.EntriesPerSector * Layout.SectorsPerPblk;
            if ((ulong)nrLblks > maxLblks)
                throw new ArgumentException(
                    $"logical size {logicalBytes}: at most {maxLblks * (ulong)lblkSize} bytes ({maxLblks} lblks of {lblkSize} bytes) on a physical size of {physicalBytes}, " +
                    $"as each lblk needs a {alloc.EntrySize}-byte lblk_alloc entry on the device");
        }
        // Zones and lblks per zone depend on each other through the lbat size: start from the most
        // zones that could fit and shrink until the lbat that lblk_per_zone needs fits too.
        ulong zones = Math.Max(1, MaxZones(nrPblks, 1));
        ulong perZone;
        while (true)
        {
            if (zones == 0 || nrPblks < 4)
                throw new ArgumentException($"physical size {physicalBytes}: too small for the header and one zone");
            perZone = ((ulong)entries + zones - 1) / zones;
            ulong lbat = (ulong)alloc.LbatPblks((long)perZone);
            ulong fit = MaxZones(nrPblks, lbat);
            if (fit >= zones)
                break;
            zones = fit;
        }
        if (zones > uint.MaxValue || perZone > uint.MaxValue)
            throw new ArgumentException($"sizes: {zones} zones of {perZone} lblks exceed the u32 fields of the header");

        var header = new Header
        {
            VersionMinor = logPblks != 0 ? Header.PatchedVersionMinor : Header.NoLogVersionMinor,
            LogPblks = logPblks,
            LogId = logPblks != 0 ? logId : 0,
            NrPhysicalSectors = devicePblks * Layout.SectorsPerPblk,
            NrLogicalSectors = (ulong)nrLblks * (ulong)lblkSize / Layout.SectorSize,
            LblkShift = (ushort)shift,
            Flags = flags & ~HeaderFlags.Dirty,
            Algorithm = algorithm,
            Level = (byte)level,
            NrZones = (uint)zones,
            LblkPerZone = (uint)perZone,
        };
        try
        {
            FromHeader(header, physicalBytes);
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException($"sizes cannot be formatted: {e.Message}", e);
        }
        return header;
    }
}
