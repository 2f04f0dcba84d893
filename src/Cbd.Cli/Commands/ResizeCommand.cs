using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Spectre.Console;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd resize IMAGE --size SIZE</c>: grows or shrinks a closed image in place.</summary>
public static class ResizeCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image file (a block device keeps its size; the image can still use less of it).");
        var size = CliOptions.Size("--size",
            "New physical size, rounded down to whole 4 KiB pblks. Shrinking moves stored data out of the part removed; it is refused when that data does not fit.",
            required: true);
        var logicalSize = CliOptions.Size("--logical-size",
            "New logical size too, rounded down to whole lblks. Default: unchanged. It can be at most what the zones' lbats hold.");
        var quiet = CliOptions.Quiet();
        var command = new Command("resize",
            "Change the physical size of an image (zones are added or removed at its end), and optionally its logical size. " +
            "The pblk numbering width, and with it the range of sizes an image can take, is fixed at format. " + ExitCodes.GeneralHelp)
        {
            image, size, logicalSize, quiet,
        };
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetValue(size)!.Value, parse.GetValue(logicalSize), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string path, long size, long? logicalSize, bool quiet, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: true);
        await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        var report = await Terminal.WithProgressAsync(quiet, $"resizing {Path.GetFileName(path)}", Math.Max(store.Length, size),
            progress => DeviceResizer.ResizeAsync(store, size, logicalSize, progress, cancellationToken)).ConfigureAwait(false);

        var fields = new Fields();
        fields.Add("physical size", $"{Describe(report.Before.NrPhysicalSectors)} -> {Describe(report.After.NrPhysicalSectors)}");
        fields.Add("logical size", $"{Describe(report.Before.NrLogicalSectors)} -> {Describe(report.After.NrLogicalSectors)}");
        fields.Add("zones", $"{report.Before.NrZones} -> {report.After.NrZones}");
        foreach (string action in report.Actions)
        {
            fields.Add("done", action);
        }
        fields.Write($"resized {path}");
        return ExitCodes.Success;
    }

    private static string Describe(ulong sectors)
    {
        long bytes = (long)(sectors * Layout.SectorSize);
        return $"{SizeParser.FormatApproximate(bytes)} ({bytes} bytes)";
    }
}
