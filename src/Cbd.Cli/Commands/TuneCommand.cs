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
        var logSize = CliOptions.Size("--log-size",
            "Refused, with the commands that give the data an image with a log of that size: the write log takes the last pblks of the device, " +
            "so its size is fixed at format (cbd format --log-size).",
            validate: bytes => bytes < 0 ? "must not be negative" : null);
        var quiet = CliOptions.Quiet("and no summary");
        var command = new Command("tune", "Change an image's compression, zero detection or logical size. " + ExitCodes.GeneralHelp)
        {
            image, compression, zeroDetect, logicalSize, logSize, quiet,
        };
        command.Validators.Add(result =>
        {
            if (result.GetResult(compression) is null && result.GetResult(zeroDetect) is null && result.GetResult(logicalSize) is null &&
                result.GetResult(logSize) is null)
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
            return RunAsync(parse.GetRequiredValue(image), options, parse.GetValue(logicalSize), parse.GetValue(logSize), parse.GetValue(quiet), cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(string path, TuneOptions options, RelativeSize? logicalSize, long? logSize, bool quiet,
        CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: true);
        var geometry = await ImageFiles.ReadGeometryAsync(store, path, cancellationToken).ConfigureAwait(false);
        if (logSize is { } log)
        {
            throw new CliException(LogSizeRefusal(path, geometry, log));
        }
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

    /// <summary>
    /// Why a log cannot be given or resized in place (it takes the last pblks of the device, where zones would be), and the
    /// commands that copy the data into a new image with the log asked for.
    /// </summary>
    private static string LogSizeRefusal(string path, Geometry geometry, long logSize)
    {
        static string Arg(long bytes) => SizeParser.Format(bytes).Replace(" ", "", StringComparison.Ordinal);
        string copy = $"cbd export {path} {path}.raw, then cbd format NEW --size {Arg((long)geometry.NrPblks * Layout.PblkSize)} " +
            $"--logical-size {Arg(geometry.LogicalBytes)} --log-size {Arg(logSize)}, then cbd import {path}.raw NEW";
        return geometry.Header.HasLog
            ? $"{path}: cannot tune --log-size: the write log's size ({SizeParser.Format(geometry.LogBytes)}) is fixed at format; " +
              $"for another, copy the data into a new image: {copy}"
            : $"{path}: cannot tune --log-size: the image has no write log (format version 1.0) and one cannot be added in place; " +
              $"copy the data into a new image that has one: {copy}";
    }

    private static void Row(Fields fields, string name, string before, string after) =>
        fields.Add(name, before == after ? $"{after} (unchanged)" : $"{before} -> {after}");

    private static string Logical(Header header)
    {
        return SizeParser.Describe((long)(header.NrLogicalSectors * Layout.SectorSize));
    }
}
