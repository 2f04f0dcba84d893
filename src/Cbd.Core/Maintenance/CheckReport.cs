using Cbd.Core.Format;

namespace Cbd.Core.Maintenance;

/// <summary>What <see cref="DeviceChecker"/> found wrong with an image, one value per kind of damage.</summary>
public enum CheckProblemKind
{
    /// <summary>The store is shorter than the 4096-byte header.</summary>
    StoreTooShort,

    /// <summary>The magic bytes are not cbd's: not a cbd image at all.</summary>
    NotCbdImage,

    /// <summary>The header fails its checksum or holds a value no version-1 header can hold.</summary>
    HeaderCorrupt,

    /// <summary>The header's sizes do not describe a valid geometry.</summary>
    GeometryInvalid,

    /// <summary>The store is shorter than nr_physical_sectors says.</summary>
    StoreTruncated,

    /// <summary>A zone's pbat or lbat lies (partly) past the end of a truncated store.</summary>
    MetadataPastStoreEnd,

    /// <summary>An lblk_alloc entry of an lblk past the logical size is not all zeros.</summary>
    EntryPastLogicalEnd,

    /// <summary>An entry with length 0 has non-zero pblk or crc fields.</summary>
    UnallocatedEntryNotZero,

    /// <summary>The length field is neither 0, a compressed length nor the uncompressed marker.</summary>
    BadLength,

    /// <summary>A pblk number is at or past the end of the device.</summary>
    PblkOutsideDevice,

    /// <summary>A pblk number names the header, a pbat or an lbat pblk instead of a data pblk.</summary>
    PblkInMetadata,

    /// <summary>A pblk lies past the end of a truncated store: its data is gone.</summary>
    PblkPastStoreEnd,

    /// <summary>A pblk slot past the pblks the length needs is not zero.</summary>
    UnusedSlotNotZero,

    /// <summary>A pblk is claimed by two lblks, or twice by one.</summary>
    PblkClaimedTwice,

    /// <summary>The stored bytes do not match the entry's CRC32C.</summary>
    LblkChecksumMismatch,

    /// <summary>The stored bytes do not decompress to exactly one lblk.</summary>
    LblkUndecodable,

    /// <summary>A pbat marks a pblk in use that no lblk refers to (space leaked).</summary>
    PbatMarksUnused,

    /// <summary>A pbat marks free a pblk an lblk refers to (it would be handed out again).</summary>
    PbatMissesUsed,

    /// <summary>A pbat has bits set past its zone's data pblks (the last, partial zone).</summary>
    PbatBitsPastData,

    /// <summary>The header's pblk_used or lblk_used disagrees with the lbats.</summary>
    StatsMismatch,

    /// <summary>The dirty flag is set: pbats and stats are untrusted and are rebuilt at next open (not an error).</summary>
    ImageDirty,

    /// <summary>
    /// The write log holds records (not an error): the next open replays them, or, on a clean image, a close that lacked
    /// the space to merge them left them there.
    /// </summary>
    LogRecords,
}

public enum CheckSeverity
{
    /// <summary>Worth knowing; the image is consistent as far as the format requires.</summary>
    Info,

    /// <summary>The image is inconsistent; <see cref="DeviceRepairer"/> can fix what the header allows.</summary>
    Error,
}

/// <summary>One finding, with where it is: whichever of lblk, zone and pblk apply.</summary>
public sealed record CheckProblem(CheckProblemKind Kind, CheckSeverity Severity, string Message)
{
    /// <summary>The lblk whose entry or data is at fault; for a shared pblk, its first claimant.</summary>
    public ulong? Lblk { get; init; }

    /// <summary>The zone concerned: whose lbat holds the faulty entry, whose pbat is wrong, or where a shared pblk lies.</summary>
    public uint? Zone { get; init; }

    /// <summary>The pblk at fault: the bad pblk number, the first of a run of wrong pbat bits, the shared pblk.</summary>
    public ulong? Pblk { get; init; }

    public override string ToString() => $"{Severity.ToString().ToLowerInvariant()}: {Kind}: {Message}";
}

public sealed record CheckOptions
{
    /// <summary>Also read every stored lblk, verify its CRC32C (when the image keeps them) and decompress it.</summary>
    public bool Data { get; init; }

    /// <summary>Problems listed in full; past this many they are only counted (<see cref="CheckReport.ProblemsOmitted"/>).</summary>
    public int MaxProblems { get; init; } = 10_000;

    /// <summary>Stored lblks read and verified at once by a data check.</summary>
    public int Parallelism { get; init; } = 8;
}

/// <summary>The result of a check. Counts come from the lbats, never from the header's stats.</summary>
public sealed class CheckReport
{
    /// <summary>The header, or null when it could not be read (then nothing else was checked).</summary>
    public Header? Header { get; init; }

    /// <summary>The geometry, or null when the header did not give a valid one.</summary>
    public Geometry? Geometry { get; init; }

    public required IReadOnlyList<CheckProblem> Problems { get; init; }

    /// <summary>Problems found beyond <see cref="CheckOptions.MaxProblems"/> and not listed.</summary>
    public long ProblemsOmitted { get; init; }

    /// <summary>The header was readable and its dirty flag clear: pbats and stats were checked too.</summary>
    public bool IsClean { get; init; }

    /// <summary>Stored lblks were read and verified (<see cref="CheckOptions.Data"/>).</summary>
    public bool DataChecked { get; init; }

    /// <summary>Valid allocated lblk_alloc entries.</summary>
    public long LblksUsed { get; init; }

    /// <summary>Distinct data pblks the valid entries refer to.</summary>
    public long PblksUsed { get; init; }

    /// <summary>Data pblks the device can allocate.</summary>
    public long PblksTotal { get; init; }

    /// <summary>What the write log holds from its tail; null without a log (format version 1.0) or a geometry.</summary>
    public LogSummary? Log { get; init; }

    /// <summary>Used data pblks per zone, from the lbats.</summary>
    public IReadOnlyList<int> ZonePblksUsed { get; init; } = [];

    public bool HasErrors => ProblemsOmitted > 0 || Problems.Any(p => p.Severity == CheckSeverity.Error);

    /// <summary>True when the header was unreadable or gave no valid geometry: nothing can be repaired.</summary>
    public bool IsFatal => Geometry is null;
}
