using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>Where the figures of a <see cref="UsageReport"/> come from.</summary>
public enum UsageSource
{
    /// <summary>The image was closed clean: the header's stats and the pbats are exact.</summary>
    Header,

    /// <summary>The image is dirty (open elsewhere, or not closed clean): the figures were counted from the lbats.</summary>
    Scan,
}

/// <summary>How much of an image is in use.</summary>
public sealed class UsageReport
{
    public required Geometry Geometry { get; init; }
    public UsageSource Source { get; init; }

    /// <summary>Allocated lblks.</summary>
    public long LblksUsed { get; init; }

    /// <summary>Data pblks referred to by lblk_alloc entries.</summary>
    public long PblksUsed { get; init; }

    /// <summary>Used data pblks per zone: from the pbats of a clean image, from the lbats of a dirty one.</summary>
    public required IReadOnlyList<int> ZonePblksUsed { get; init; }

    /// <summary>Errors a scan ran into (always 0 for <see cref="UsageSource.Header"/>): the counts leave out invalid entries.</summary>
    public long ScanErrors { get; init; }
}

/// <summary>Reads the usage figures of a closed image, exact whether or not it was closed clean.</summary>
public static class DeviceUsage
{
    /// <summary>
    /// A clean image costs one read of the header and one of each pbat. A dirty image's stats and pbats
    /// are not trusted (docs/FORMAT.md, "Consistency"), so every lbat is read instead, as a check does.
    /// </summary>
    /// <exception cref="InvalidDataException">The header cannot be read or gives no valid geometry.</exception>
    public static async Task<UsageReport> ReadAsync(IBackingStore store, IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        var geometry = await Geometry.ReadAsync(store, cancellationToken).ConfigureAwait(false);
        var header = geometry.Header;
        if (header.Flags.HasFlag(HeaderFlags.Dirty))
        {
            var check = await DeviceChecker.CheckAsync(store, new CheckOptions { MaxProblems = 100 }, progress, cancellationToken).ConfigureAwait(false);
            return new UsageReport
            {
                Geometry = geometry,
                Source = UsageSource.Scan,
                LblksUsed = check.LblksUsed,
                PblksUsed = check.PblksUsed,
                ZonePblksUsed = check.ZonePblksUsed,
                ScanErrors = check.Problems.Count(p => p.Severity == CheckSeverity.Error) + check.ProblemsOmitted,
            };
        }

        var zones = new int[geometry.NrZones];
        byte[] page = new byte[PbatLayout.Bytes];
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            await PbatLayout.ReadAsync(store, geometry, zone, page, cancellationToken).ConfigureAwait(false);
            zones[zone] = PbatLayout.CountSet(page, geometry.DataPblks(zone));
            progress?.Report((zone + 1.0) / geometry.NrZones);
        }
        return new UsageReport
        {
            Geometry = geometry,
            Source = UsageSource.Header,
            LblksUsed = (long)header.LblkUsed,
            PblksUsed = (long)header.PblkUsed,
            ZonePblksUsed = zones,
        };
    }
}
