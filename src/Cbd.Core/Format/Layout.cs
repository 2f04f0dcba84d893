namespace Cbd.Core.Format;

/// <summary>Fixed sizes of the on-disk format (docs/FORMAT.md, "Terms" and "Limits").</summary>
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

    /// <summary>The header's bound on lblk_shift (128 MiB lblks); the one-sector entry limit is far lower (docs/FORMAT.md, "Limits").</summary>
    public const int MaxHeaderLblkShift = 15;

    /// <summary>Bits of the widest pblk number: a device holds at most 2^48 pblks (1 EiB).</summary>
    public const int MaxPblkBits = 48;

    /// <summary>The most pblks a device may have, header included.</summary>
    public const ulong MaxPblks = 1UL << MaxPblkBits;
}
