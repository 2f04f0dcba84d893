using Cbd.Core.Compression;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>Header settings to change; null leaves a setting as it is.</summary>
public sealed record TuneOptions
{
    /// <summary>Algorithm for lblks written from now on. Without <see cref="Level"/>, a new algorithm gets its default level.</summary>
    public CompressionAlgorithm? Algorithm { get; init; }
    public int? Level { get; init; }
    public bool? ZeroDetect { get; init; }

    /// <summary>New logical size in bytes, rounded down to whole lblks.</summary>
    public long? LogicalBytes { get; init; }
}

public sealed record TuneReport(Header Before, Header After)
{
    public bool Changed => Before != After;
}

/// <summary>
/// Changes header settings of a closed image without rewriting data: compression algorithm and level,
/// zero detection, and the logical size within what the lbats hold.
/// </summary>
/// <remarks>
/// Existing lblks keep the algorithm they were written with: a compressed lblk's first stored byte
/// names its algorithm and readers decode by it, whatever the header says. The header is one sector
/// written at once, so an interrupted tune leaves the old settings or the new ones. The dirty flag and
/// the stats are kept as they are: a tune changes no allocation.
/// </remarks>
public static class DeviceTuner
{
    /// <exception cref="ArgumentException">An algorithm, level or size that no image can have.</exception>
    /// <exception cref="MaintenanceRefusedException">A logical size this image cannot take; the message says the limit or what is in the way.</exception>
    /// <exception cref="InvalidDataException">The header cannot be read.</exception>
    public static async Task<TuneReport> TuneAsync(IBackingStore store, TuneOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        var (header, geometry) = await StoreIo.ReadHeaderAsync(store, cancellationToken).ConfigureAwait(false);

        var algorithm = options.Algorithm ?? header.Algorithm;
        int level;
        try
        {
            level = options.Level ?? (algorithm == header.Algorithm ? header.Level : CodecLimits.Levels(algorithm).Default);
            CodecLimits.Validate(algorithm, level, "requested");
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException(e.Message, nameof(options), e);
        }
        var flags = options.ZeroDetect switch
        {
            true => header.Flags | HeaderFlags.ZeroDetect,
            false => header.Flags & ~HeaderFlags.ZeroDetect,
            null => header.Flags,
        };
        ulong nrLblks = geometry.NrLblks;
        if (options.LogicalBytes is { } logical)
        {
            nrLblks = await CheckLogicalSizeAsync(store, geometry, geometry.NrZones, logical, cancellationToken).ConfigureAwait(false);
        }

        var tuned = header with
        {
            Algorithm = algorithm,
            Level = (byte)level,
            Flags = flags,
            NrLogicalSectors = nrLblks * (ulong)geometry.LblkSize / Layout.SectorSize,
        };
        if (tuned == header)
            return new TuneReport(header, header);
        Geometry.FromHeader(tuned, store.Length);
        await tuned.WriteAsync(store, cancellationToken).ConfigureAwait(false);
        return new TuneReport(header, tuned);
    }

    /// <summary>
    /// The lblk count for <paramref name="logicalBytes"/> on <paramref name="nrZones"/> zones of this
    /// image's lbats; refuses a size the lbats cannot hold, a shrink that would cut off data, and a
    /// grow over entries that are not zero.
    /// </summary>
    internal static async ValueTask<ulong> CheckLogicalSizeAsync(IBackingStore store, Geometry geometry, ulong nrZones, long logicalBytes,
        CancellationToken cancellationToken)
    {
        long lblkSize = geometry.LblkSize;
        if (logicalBytes < lblkSize)
            throw new ArgumentException($"logical size {DeviceResizer.Human(logicalBytes)}: less than one lblk of {DeviceResizer.Human(lblkSize)}", nameof(logicalBytes));
        ulong nrLblks = (ulong)(logicalBytes / lblkSize);
        ulong capacity = nrZones * geometry.LblkPerZone;
        if (nrLblks > capacity)
        {
            throw new MaintenanceRefusedException(
                $"logical size {DeviceResizer.Human(logicalBytes)}: at most {DeviceResizer.Human((long)capacity * lblkSize)} ({capacity} lblks), what the lbats of " +
                $"{nrZones} zones of {geometry.LblkPerZone} lblk_alloc entries hold; that ceiling was set at format (cbd format --max-logical-size). " +
                "More entries per zone would make every lbat larger and move every zone; a larger physical size (cbd resize) adds zones, and with them logical space");
        }
        ulong current = geometry.NrLblks;
        // lblks past the old end (on a grow) or the new end (on a shrink): all must be zero entries.
        ulong low = Math.Min(nrLblks, current), high = Math.Max(nrLblks, current);
        var summary = await StoreIo.SummarizeEntriesAsync(store, geometry, low, Math.Min(high, (ulong)geometry.NrZones * geometry.LblkPerZone),
            cancellationToken).ConfigureAwait(false);
        if (nrLblks < current && summary.Allocated > 0)
        {
            throw new MaintenanceRefusedException(
                $"logical size {DeviceResizer.Human(logicalBytes)}: {summary.Allocated} lblks past the new end hold data ({DeviceResizer.Human(summary.Allocated * lblkSize)} " +
                $"of logical space, the first lblk {summary.FirstAllocated} at byte {summary.FirstAllocated * (ulong)lblkSize}); trim them first");
        }
        if (nrLblks < current && await LogSummary.ReadAsync(store, geometry, cancellationToken).ConfigureAwait(false) is { Records: > 0 } log)
        {
            // A record of an lblk past the end would end every scan there, losing the records after it.
            throw new MaintenanceRefusedException(
                $"logical size {DeviceResizer.Human(logicalBytes)}: the write log holds {log.Records} records for {log.Lblks} lblks, which a smaller logical size " +
                "may cut off; serve the image (cbd serve) and stop it, so that they are merged into their lblks, then shrink it");
        }
        if (summary.NotZero > 0)
        {
            throw new MaintenanceRefusedException(
                $"lblk_alloc entries of lblks {low}..{high - 1} must be zero for this size change, but {summary.NotZero} are not (the first: lblk {summary.FirstNotZero}); " +
                "run check and repair first");
        }
        return nrLblks;
    }
}
