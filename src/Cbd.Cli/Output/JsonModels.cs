using System.Text.Json;
using System.Text.Json.Serialization;

namespace Cbd.Cli.Output;

// The JSON that `cbd info --json`, `cbd check --json` and `cbd trim --json` print. docs/CLI.md documents every key;
// keys are snake_case, numbers are JSON numbers, and a key whose value is unknown is present as null.
// Adding a key keeps JsonVersion; renaming or removing one, or changing its meaning, raises it.

public sealed record InfoJson(
    int JsonVersion,
    string Image,
    long StoreBytes,
    HeaderJson Header,
    GeometryJson Geometry,
    UsageJson Usage,
    IReadOnlyList<ZoneJson> Zones,
    bool InUse = false,
    long? StoreAllocatedBytes = null,
    LogJson? Log = null);

/// <summary>The write log as one scan from its tail finds it; null for an image without one (format version 1.0).</summary>
public sealed record LogJson(
    long Bytes,
    ulong Pblks,
    ulong FirstPblk,
    ulong Tail,
    ulong Seq,
    uint Epoch,
    long Records,
    long Lblks,
    long UsedBytes,
    double UsedPercent,
    long EndOffset,
    ulong EndSeq,
    string EndReason);

public sealed record HeaderJson(
    int VersionMajor,
    int VersionMinor,
    ulong NrPhysicalSectors,
    ulong NrLogicalSectors,
    int LblkShift,
    int Flags,
    bool Dirty,
    bool ZeroDetect,
    bool LblkCrc,
    string Algorithm,
    int Level,
    uint NrZones,
    uint LblkPerZone,
    ulong PblkUsed,
    ulong LblkUsed);

public sealed record GeometryJson(
    long PhysicalBytes,
    long LogicalBytes,
    int PblkSize,
    int LblkSize,
    ulong NrPblks,
    ulong NrLblks,
    uint NrZones,
    uint LblkPerZone,
    ulong LbatPblksPerZone,
    string LblkAlloc,
    int LblkAllocEntrySize,
    ulong DataPblks,
    ulong MetadataPblks,
    double MetadataPercent);

public sealed record UsageJson(
    string Source,
    long LblksUsed,
    ulong LblksTotal,
    long PblksUsed,
    ulong PblksTotal,
    long LogicalBytesUsed,
    long PhysicalBytesUsed,
    double CompressionRatio,
    double FillPercent,
    long ScanErrors);

public sealed record ZoneJson(uint Zone, ulong FirstPblk, ulong FirstDataPblk, int DataPblks, int PblksUsed, double FillPercent);

public sealed record CheckJson(
    int JsonVersion,
    string Image,
    string Result,
    int ExitCode,
    bool HeaderValid,
    bool? Dirty,
    bool DataChecked,
    long Errors,
    long Notes,
    long ProblemsOmitted,
    long LblksUsed,
    long PblksUsed,
    long PblksTotal,
    IReadOnlyList<ProblemJson> Problems,
    RepairJson? Repair,
    bool InUse = false,
    long TransientProblems = 0,
    LogJson? Log = null);

public sealed record ProblemJson(string Kind, string Severity, ulong? Lblk, uint? Zone, ulong? Pblk, string Message);

public sealed record RepairJson(bool Repaired, bool Wrote, string? CannotRepairReason, IReadOnlyList<ulong> LostLblks, IReadOnlyList<string> Actions);

public sealed record TrimJson(
    int JsonVersion,
    string Image,
    string Source,
    long FreePblks,
    long FreeBytes,
    long Runs,
    long? AllocatedBytesBefore,
    long? AllocatedBytesAfter,
    long? ReleasedBytes);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, WriteIndented = true)]
[JsonSerializable(typeof(InfoJson))]
[JsonSerializable(typeof(CheckJson))]
[JsonSerializable(typeof(TrimJson))]
public sealed partial class CliJsonContext : JsonSerializerContext
{
    public const int Version = 1;

    /// <summary>An enum member's JSON name: <c>PblkOutsideDevice</c> becomes <c>pblk_outside_device</c>.</summary>
    public static string EnumName<T>(T value) where T : struct, Enum => JsonNamingPolicy.SnakeCaseLower.ConvertName(value.ToString());

    public static void Print<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> typeInfo)
    {
        Console.Out.WriteLine(JsonSerializer.Serialize(value, typeInfo));
        Console.Out.Flush();
    }
}
