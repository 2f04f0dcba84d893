using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Spectre.Console;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd tune IMAGE</c>: changes header settings of a closed image without rewriting its data.</summary>
public static class TuneCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image file or block device.");
        var compression = CliOptions.Compression(
            "Compression of lblks written from now on, with an optional level (a new algorithm without a level gets its default). " +
            "Stored lblks keep theirs: each names its own algorithm. deflate is another name for zlib (zlib streams, RFC 1950).");
        var zeroDetect = new Option<string?>("--zero-detect")
        {
            Description = "on: all-zero lblks are left unallocated; off: they are stored like any others.",
            HelpName = "on|off",
        };
        zeroDetect.AcceptOnlyFromAmong("on", "off");
        var logicalSize = CliOptions.Size("--logical-size",
            "New logical size, rounded down to whole lblks: at most what the zones' lbats hold; shrinking is refused while lblks past the new end hold data.");
        var command = new Command("tune", "Change an image's compression, zero detection or logical size. " + ExitCodes.GeneralHelp)
        {
            image, compression, zeroDetect, logicalSize,
        };
        command.Validators.Add(result =>
        {
            if (result.GetResult(compression) is null && result.GetResult(zeroDetect) is null && result.GetResult(logicalSize) is null)
            {
                result.AddError("Nothing to change: give --compression, --zero-detect or --logical-size.");
            }
        });
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
        {
            var choice = parse.GetValue(compression);
            var options = new TuneOptions
            {
                Algorithm = choice?.Algorithm,
                Level = choice?.Level,
                ZeroDetect = parse.GetValue(zeroDetect) switch { "on" => true, "off" => false, _ => null },
                LogicalBytes = parse.GetValue(logicalSize),
            };
            return RunAsync(parse.GetRequiredValue(image), options, cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(string path, TuneOptions options, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: true);
        await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        var report = await DeviceTuner.TuneAsync(store, options, cancellationToken).ConfigureAwait(false);
        var (before, after) = (report.Before, report.After);
        if (!report.Changed)
        {
            Console.Out.WriteLine($"{path}: nothing changed, the settings were already so");
            return ExitCodes.Success;
        }
        var fields = new Fields();
        Row(fields, "compression", CliOptions.Describe(before.Algorithm, before.Level), CliOptions.Describe(after.Algorithm, after.Level));
        Row(fields, "zero detection", CliOptions.OnOff(before.Flags.HasFlag(HeaderFlags.ZeroDetect)), CliOptions.OnOff(after.Flags.HasFlag(HeaderFlags.ZeroDetect)));
        Row(fields, "logical size", Logical(before), Logical(after));
        fields.Write($"tuned {path}");
        return ExitCodes.Success;
    }

    private static void Row(Fields fields, string name, string before, string after) =>
        fields.Add(name, before == after ? $"{after} (unchanged)" : $"{before} -> {after}");

    private static string Logical(Header header)
    {
        long bytes = (long)(header.NrLogicalSectors * Layout.SectorSize);
        return $"{SizeParser.FormatApproximate(bytes)} ({bytes} bytes)";
    }
}
