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
            CustomParser = result =>
            {
                string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
                switch (text.Trim().ToLowerInvariant())
                {
                    case "on":
                    case "off":
                        return text.Trim().ToLowerInvariant();
                    default:
                        result.AddError($"--zero-detect: '{text}' is neither on nor off");
                        return null;
                }
            },
        };
        var logicalSize = CliOptions.Relative("--logical-size",
            "New logical size, rounded down to whole lblks; +SIZE or -SIZE relative to the current one. At most what the zones' lbats hold " +
            "(set at format by --max-logical-size); shrinking is refused while lblks past the new end hold data.");
        var quiet = CliOptions.Quiet("and no summary");
        var command = new Command("tune", "Change an image's compression, zero detection or logical size. " + ExitCodes.GeneralHelp)
        {
            image, compression, zeroDetect, logicalSize, quiet,
        };
        command.Validators.Add(result =>
        {
            if (result.GetResult(compression) is null && result.GetResult(zeroDetect) is null && result.GetResult(logicalSize) is null)
            {
                result.AddError("Nothing to change: give --compression, --zero-detect or --logical-size.");
            }
        });
        CliOptions.SetAction(command, (parse, cancellationToken) =>
        {
            var choice = parse.GetValue(compression);
            var options = new TuneOptions
            {
                Algorithm = choice?.Algorithm,
                Level = choice?.Level,
                ZeroDetect = parse.GetValue(zeroDetect) switch { "on" => true, "off" => false, _ => null },
            };
            return RunAsync(parse.GetRequiredValue(image), options, parse.GetValue(logicalSize), parse.GetValue(quiet), cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(string path, TuneOptions options, RelativeSize? logicalSize, bool quiet, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: true);
        var geometry = await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        options = options with { LogicalBytes = logicalSize?.Resolve(path, geometry.LogicalBytes) };
        TuneReport report;
        try
        {
            report = await DeviceTuner.TuneAsync(store, options, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is MaintenanceRefusedException or ArgumentException)
        {
            throw new CliException($"{path}: cannot tune: {CommandText.WithoutParameter(e)}");
        }
        var (before, after) = (report.Before, report.After);
        if (quiet)
        {
            return ExitCodes.Success;
        }
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
        return SizeParser.Describe((long)(header.NrLogicalSectors * Layout.SectorSize));
    }
}
