using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Maintenance;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd resize IMAGE --size SIZE</c>: grows or shrinks a closed image in place.</summary>
public static class ResizeCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image file (a block device keeps its size; the image can still use less of it).");
        var size = CliOptions.Relative("--size",
            "New physical size, rounded down to whole 4 KiB pblks; +SIZE or -SIZE grows or shrinks by that much. " +
            "Shrinking moves stored data out of the part removed; it is refused when that data does not fit.",
            required: true);
        var logicalSize = CliOptions.Relative("--logical-size",
            "New logical size too, rounded down to whole lblks; +SIZE or -SIZE relative to the current one. Default: unchanged. " +
            "It can be at most what the zones' lbats hold (set at format by --max-logical-size; more zones hold more).");
        var quiet = CliOptions.Quiet("and no summary");
        var command = new Command("resize",
            "Change the physical size of an image (zones are added or removed at its end), and optionally its logical size. " +
            "The pblk numbering width, and with it the range of sizes an image can take, is fixed at format. " + ExitCodes.GeneralHelp)
        {
            image, size, logicalSize, quiet,
        };
        CliOptions.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetValue(size)!, parse.GetValue(logicalSize), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string path, RelativeSize size, RelativeSize? logicalSize, bool quiet, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: true);
        var geometry = await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        long physical = size.Resolve(path, (long)geometry.NrPblks * Layout.PblkSize);
        long? logical = logicalSize?.Resolve(path, geometry.LogicalBytes);
        ResizeReport report;
        using (var interruption = Interruption.Catch(cancellationToken))
        {
            try
            {
                report = await Terminal.WithProgressAsync(quiet, $"resizing {Path.GetFileName(path)}", Math.Max(store.Length, physical),
                    progress => DeviceResizer.ResizeAsync(store, physical, logical, progress, interruption.Token)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is MaintenanceRefusedException or ArgumentException)
            {
                throw new CliException($"{path}: cannot resize to {SizeParser.Describe(physical)}: {CommandText.WithoutParameter(e)}");
            }
            catch (OperationCanceledException) when (interruption.Signalled)
            {
                // The write order keeps the image openable at either size (DeviceResizer's remarks).
                throw new CliException($"{path}: resize interrupted; the image has its old size or its new one (cbd info says which) and opens either way");
            }
        }

        if (!quiet)
        {
            var fields = new Fields();
            fields.Add("physical size", $"{Describe(report.Before.NrPhysicalSectors)} -> {Describe(report.After.NrPhysicalSectors)}");
            fields.Add("logical size", $"{Describe(report.Before.NrLogicalSectors)} -> {Describe(report.After.NrLogicalSectors)}");
            fields.Add("zones", $"{report.Before.NrZones} -> {report.After.NrZones}");
            foreach (string action in report.Actions)
            {
                fields.Add("done", action);
            }
            fields.Write($"resized {path}");
        }
        return ExitCodes.Success;
    }

    private static string Describe(ulong sectors) => SizeParser.Describe((long)(sectors * Layout.SectorSize));
}
