namespace Cbd.Core.Format;

/// <summary>Fixed sizes of the on-disk format (docs/FORMAT.md, "Units").</summary>
public static class Layout
{
    /// <summary>Sector: the unit of sizes in the header and the unit the backing store writes atomically.</summary>
    public const int SectorSize = 512;

    /// <summary>Physical block (pblk): the unit of allocation on the backing store.</summary>
    public const int PblkSize = 4096;

    public const int SectorsPerPblk = PblkSize / SectorSize;

    /// <summary>The header occupies pblk 0.</summary>
    public const int HeaderSize = PblkSize;

    /// <summary>Data pblks in a full zone: one bit each in the zone's 4 KiB pbat.</summary>
    public const int PblksPerZoneData = PblkSize * 8;

    /// <summary>Smallest lblk: one pblk (shift 0).</summary>
    public const int MinLblkShift = 0;

    /// <summary>The largest shift that 16-bit lblk_alloc lengths allow (64 KiB lblks).</summary>
    public const int MaxShiftForLength16 = 4;
}
