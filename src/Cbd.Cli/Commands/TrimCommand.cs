using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Maintenance;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd trim IMAGE</c>: gives every free pblk of a closed image back to the backing store, as fstrim does.</summary>
public static class TrimCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image file or block device.");
        var json = CliOptions.Json("what was released");
        var quiet = CliOptions.Quiet("and no summary");
        var command = new Command("trim",
            "Give every free pblk of an image back to the backing store: a hole punched in a file, a discard on a block device. " +
            "cbd serve does this itself as it frees pblks (unless --discard ignore); trim is for an image written without it. " +
            "A pblk is released only when no lblk_alloc entry names it. The image must be closed (not served). " + ExitCodes.GeneralHelp)
        {
            image, json, quiet,
        };
        CliOptions.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetValue(json), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string path, bool json, bool quiet, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: true);
        await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        TrimReport report;
        using (var interruption = Interruption.Catch(cancellationToken))
        {
            try
            {
                report = await Terminal.WithProgressAsync(quiet || json, $"trimming {Path.GetFileName(path)}", store.Length,
                    progress => ImageTrimmer.TrimAsync(store, progress, interruption.Token)).ConfigureAwait(false);
            }
            catch (MaintenanceRefusedException e)
            {
                throw new CliException($"{path}: cannot trim: {e.Message}");
            }
            catch (OperationCanceledException) when (interruption.Signalled)
            {
                // Trim writes nothing but holes in free pblks: the image is as it was, only less of it allocated.
                throw new CliException($"{path}: trim interrupted; the image is unchanged, some of its free pblks released");
            }
        }
        if (!report.Supported)
        {
            throw new CliException(store.IsBlockDevice
                ? $"{path}: the device does not support discard; nothing released"
                : $"{path}: its filesystem cannot punch holes in files; nothing released");
        }

        long? released = report.AllocatedBefore is { } b && report.AllocatedAfter is { } a ? b - a : null;
        if (json)
        {
            CliJsonContext.Print(new TrimJson(CliJsonContext.Version, path, report.PbatsUsed ? "pbats_and_lbats" : "lbats",
                report.FreePblks, report.FreePblks * Layout.PblkSize, report.Runs, report.AllocatedBefore, report.AllocatedAfter, released),
                CliJsonContext.Default.TrimJson);
        }
        else if (!quiet)
        {
            var fields = new Fields();
            fields.Add("free pblks", $"{report.FreePblks} ({SizeParser.FormatApproximate(report.FreePblks * Layout.PblkSize)}) in {report.Runs} run{(report.Runs == 1 ? "" : "s")}, " +
                (report.PbatsUsed ? "free in the pbats and named by no lblk" : "named by no lblk (the image is dirty: its pbats were not trusted)"));
            fields.Add("allocated", report.AllocatedBefore is { } before && report.AllocatedAfter is { } after
                ? $"{SizeParser.FormatApproximate(before)} -> {SizeParser.FormatApproximate(after)} ({SizeParser.FormatApproximate(before - after)} released)"
                : "n/a (a block device: discarded, but how much the device holds cannot be told)");
            fields.Write($"trimmed {path}");
        }
        return ExitCodes.Success;
    }
}
