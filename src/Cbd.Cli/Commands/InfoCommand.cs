using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Spectre.Console;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd info IMAGE</c>: header fields, geometry and usage of a closed image, as text or JSON.</summary>
public static class InfoCommand
{
    /// <summary>More zones than this are summed up in text; JSON always lists every zone.</summary>
    private const int ZonesListed = 32;

    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image file or block device.");
        var json = CliOptions.Json("everything");
        var quiet = CliOptions.Quiet();
        var command = new Command("info",
            "Show an image's header, geometry and usage. Usage figures are exact: from the header and pbats of an image closed clean, " +
            "counted from the lbats of a dirty one (open elsewhere, or not closed clean). An image in use by cbd serve is read without its lock, " +
            "never written: its figures are as the server last wrote its lbats back. " + ExitCodes.GeneralHelp)
        {
            image, json, quiet,
        };
        CliOptions.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetValue(json), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string path, bool json, bool quiet, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.OpenForReading(path, out bool inUse);
        await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        UsageReport usage;
        LogSummary? log;
        try
        {
            usage = await Terminal.WithProgressAsync(quiet, $"reading {Path.GetFileName(path)}", store.Length,
                progress => DeviceUsage.ReadAsync(store, progress, cancellationToken)).ConfigureAwait(false);
            log = await LogSummary.ReadAsync(store, usage.Geometry, cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidDataException e) when (inUse)
        {
            // The writer changed the header (a close, a resize) between two reads: nothing here is wrong with the image.
            throw new CliException($"{path}: changed while it was read (it is in use by another process): {e.Message}; run cbd info again");
        }
        var info = ToJson(path, store.Length, usage) with { InUse = inUse, StoreAllocatedBytes = store.AllocatedBytes, Log = LogText.ToJson(log) };
        if (json)
        {
            CliJsonContext.Print(info, CliJsonContext.Default.InfoJson);
        }
        else
        {
            PrintText(info, usage);
        }
        return ExitCodes.Success;
    }

    public static InfoJson ToJson(string path, long storeBytes, UsageReport usage)
    {
        var g = usage.Geometry;
        var h = g.Header;
        long physicalUsed = usage.PblksUsed * Layout.PblkSize;
        long logicalUsed = usage.LblksUsed * g.LblkSize;
        var zones = new ZoneJson[g.NrZones];
        for (uint zone = 0; zone < g.NrZones; zone++)
        {
            int data = g.DataPblks(zone);
            int used = usage.ZonePblksUsed[(int)zone];
            zones[zone] = new ZoneJson(zone, g.ZoneStart(zone), g.DataStart(zone), data, used, GeometryText.Percent(used, data));
        }
        return new InfoJson(
            CliJsonContext.Version,
            path,
            storeBytes,
            new HeaderJson(h.VersionMajor, h.VersionMinor, h.NrPhysicalSectors, h.NrLogicalSectors, h.LblkShift, (int)h.Flags,
                h.Flags.HasFlag(HeaderFlags.Dirty), h.Flags.HasFlag(HeaderFlags.ZeroDetect), h.Flags.HasFlag(HeaderFlags.LblkCrc),
                CompressionChoice.Name(h.Algorithm), h.Level, h.NrZones, h.LblkPerZone, h.PblkUsed, h.LblkUsed),
            new GeometryJson((long)g.NrPblks * Layout.PblkSize, g.LogicalBytes, Layout.PblkSize, g.LblkSize, g.NrPblks, g.NrLblks, g.NrZones,
                g.LblkPerZone, g.LbatPblks, g.Alloc.Name, g.Alloc.EntrySize, g.TotalDataPblks, GeometryText.MetadataPblks(g),
                GeometryText.MetadataPercent(g)),
            new UsageJson(CliJsonContext.EnumName(usage.Source), usage.LblksUsed, g.NrLblks, usage.PblksUsed, g.TotalDataPblks, logicalUsed, physicalUsed,
                physicalUsed == 0 ? 1.0 : Math.Round((double)logicalUsed / physicalUsed, 3),
                GeometryText.Percent(usage.PblksUsed, g.TotalDataPblks), usage.ScanErrors),
            zones);
    }

    private static void PrintText(InfoJson info, UsageReport report)
    {
        var g = report.Geometry;
        var h = info.Header;
        var u = info.Usage;
        string state = info.InUse ? "in use by another process (cbd serve?)" : h.Dirty ? "dirty: open elsewhere, or not closed clean" : "closed clean";

        var fields = new Fields();
        GeometryText.AddGeometry(fields, g);
        fields.Add("usage", info.InUse
            ? "counted from the lbats as the server last wrote them back, read without its lock: what it still holds in its cache " +
              "(written within its --flush-delay) is not counted yet, so the figures are approximate"
            : report.Source == UsageSource.Header
            ? "from the header's stats and the pbats (exact: the image was closed clean)"
            : "counted from the lbats (the header's stats are not kept up to date while the image is dirty)");
        fields.Add("lblks used", $"{u.LblksUsed} of {u.LblksTotal} ({GeometryText.Percent(u.LblksUsed, u.LblksTotal):0.###} %), " +
            $"{SizeParser.FormatApproximate(u.LogicalBytesUsed)} of logical data");
        fields.Add("pblks used", $"{u.PblksUsed} of {u.PblksTotal} ({u.FillPercent:0.###} %), " +
            $"{SizeParser.FormatApproximate(u.PhysicalBytesUsed)} stored");
        fields.Add("store allocated", info.StoreAllocatedBytes is { } allocated
            ? $"{SizeParser.FormatApproximate(allocated)} of the file's {SizeParser.FormatApproximate(info.StoreBytes)} (what it takes on its filesystem)"
            : "n/a (a block device: every byte is its own)");
        fields.Add("compression ratio", $"{u.CompressionRatio:0.000} (logical bytes in use / bytes stored)");
        if (info.Log is { } log)
        {
            fields.Add("write log", LogText.Size(log));
            fields.Add("log in use", LogText.Contents(log) + (log.Records == 0 ? "" : info.InUse
                ? " (the server merges them into their lblks)"
                : h.Dirty ? " (the next open replays them)" : " (left by a close that lacked the space to merge them; merged when next served)"));
        }
        else
        {
            fields.Add("write log", LogText.None);
        }
        if (u.ScanErrors > 0 && info.InUse)
        {
            fields.Add("not counted", $"{u.ScanErrors} entries that were changing while read (normal on an image in use; cbd check tells lasting damage apart)");
        }
        else if (u.ScanErrors > 0)
        {
            fields.Add("problems", $"{u.ScanErrors} errors found while counting; invalid entries are not counted. Run cbd check");
        }
        fields.Write($"{info.Image}: cbd image, format version {h.VersionMajor}.{h.VersionMinor}, {state}");

        if (info.Zones.Count <= ZonesListed)
        {
            Terminal.WriteRows(["zone", "first pblk", "data pblks", "pblks used", "fill"],
                info.Zones.Select(z => new[] { z.Zone.ToString(), z.FirstPblk.ToString(), z.DataPblks.ToString(), z.PblksUsed.ToString(), $"{z.FillPercent:0.###} %" })
                    .ToList(),
                new HashSet<int> { 0, 1, 2, 3, 4 });
        }
        else
        {
            var fills = info.Zones.Select(z => z.FillPercent).Order().ToArray();
            Console.Out.WriteLine($"zone fill over {fills.Length} zones: least {fills[0]:0.###} %, median {fills[fills.Length / 2]:0.###} %, " +
                $"most {fills[^1]:0.###} % (--json lists every zone)");
        }
    }
}
