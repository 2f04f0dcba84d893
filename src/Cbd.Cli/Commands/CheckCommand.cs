using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Spectre.Console;

namespace Cbd.Cli.Commands;

/// <summary>
/// <c>cbd check IMAGE</c>: verifies a closed image and, with --repair, makes it consistent again.
/// Exit codes are fsck's, so scripts written for fsck read them the same way.
/// </summary>
public static class CheckCommand
{
    public const string ExitCodeHelp =
        "Exit codes (as fsck): 0 no errors; 1 errors were found and corrected; 4 errors left uncorrected; " +
        "8 the check could not be done (no such file, not a cbd image, an I/O error); 16 the command line was not understood.";

    /// <summary>Lost lblks named in text; JSON names them all.</summary>
    private const int LostListed = 20;

    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image file or block device. It must not be in use (not served, nor being imported into).");
        var repair = new Option<bool>("--repair")
        {
            Description = "Repair what is found: clear lblk_alloc entries that cannot be valid (their lblks then read as zeros), " +
                "rebuild the pbats and the header's stats, clear the dirty flag. Intact lblks are not touched.",
        };
        var data = new Option<bool>("--data")
        {
            Description = "Also read every stored lblk, verify its CRC32C and decompress it. With --repair, lblks that fail are cleared.",
        };
        var json = CliOptions.Json("the problems, the counts and what was repaired");
        var quiet = CliOptions.Quiet();
        var command = new Command("check", "Check an image for damage, and optionally repair it. " + ExitCodeHelp)
        {
            image, repair, data, json, quiet,
        };
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetValue(repair), parse.GetValue(data), parse.GetValue(json), parse.GetValue(quiet),
                cancellationToken),
            ExitCodes.CheckOperational);
        return command;
    }

    private static async Task<int> RunAsync(string path, bool repair, bool data, bool json, bool quiet, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: repair);
        string what = repair ? "repairing" : "checking";
        CheckReport check;
        RepairReport? repaired = null;
        if (repair)
        {
            repaired = await Terminal.WithProgressAsync(quiet, $"{what} {Path.GetFileName(path)}", store.Length,
                progress => DeviceRepairer.RepairAsync(store, new RepairOptions { Data = data }, progress, cancellationToken)).ConfigureAwait(false);
            check = repaired.Check;
        }
        else
        {
            check = await Terminal.WithProgressAsync(quiet, $"{what} {Path.GetFileName(path)}", store.Length,
                progress => DeviceChecker.CheckAsync(store, new CheckOptions { Data = data }, progress, cancellationToken)).ConfigureAwait(false);
        }

        var (result, exitCode) = Outcome(check, repaired);
        var report = ToJson(path, check, repaired, result, exitCode);
        if (repaired is { Repaired: true })
        {
            // A repaired image is closed clean: its stats and pbats now give the counts as the image is, after what was cleared.
            var usage = await DeviceUsage.ReadAsync(store, null, cancellationToken).ConfigureAwait(false);
            report = report with { LblksUsed = usage.LblksUsed, PblksUsed = usage.PblksUsed };
        }
        if (json)
        {
            CliJsonContext.Print(report, CliJsonContext.Default.CheckJson);
        }
        else
        {
            PrintText(report, check);
        }
        return exitCode;
    }

    /// <summary>
    /// What the check and repair amount to. A file that is no cbd image at all is an operational error (8),
    /// as fsck treats a device without its file system; a cbd header that is damaged is an error left (4).
    /// </summary>
    private static (string Result, int ExitCode) Outcome(CheckReport check, RepairReport? repair)
    {
        if (check.Problems.Any(p => p.Kind is CheckProblemKind.NotCbdImage or CheckProblemKind.StoreTooShort))
        {
            return ("not_a_cbd_image", ExitCodes.CheckOperational);
        }
        if (repair is null)
        {
            return check.HasErrors ? ("errors_left", ExitCodes.CheckErrorsLeft) : ("clean", ExitCodes.Success);
        }
        if (!repair.Repaired)
        {
            return ("errors_left", ExitCodes.CheckErrorsLeft);
        }
        // Like fsck, anything written counts as a correction: clearing the dirty flag of an image that had no error too.
        return repair.Wrote ? ("corrected", ExitCodes.CheckCorrected) : ("clean", ExitCodes.Success);
    }

    private static CheckJson ToJson(string path, CheckReport check, RepairReport? repair, string result, int exitCode)
    {
        var problems = check.Problems
            .Select(p => new ProblemJson(CliJsonContext.EnumName(p.Kind), CliJsonContext.EnumName(p.Severity), p.Lblk, p.Zone, p.Pblk, p.Message))
            .ToList();
        long errors = check.Problems.Count(p => p.Severity == CheckSeverity.Error) + check.ProblemsOmitted;
        return new CheckJson(
            CliJsonContext.Version,
            path,
            result,
            exitCode,
            check.Geometry is not null,
            check.Header is null ? null : check.Header.Flags.HasFlag(HeaderFlags.Dirty),
            check.DataChecked,
            errors,
            check.Problems.Count(p => p.Severity == CheckSeverity.Info),
            check.ProblemsOmitted,
            check.LblksUsed,
            check.PblksUsed,
            check.PblksTotal,
            problems,
            repair is null ? null : new RepairJson(repair.Repaired, repair.Wrote, repair.CannotRepairReason, repair.LostLblks, repair.Actions));
    }

    private static void PrintText(CheckJson report, CheckReport check)
    {
        var console = Terminal.Out;
        if (report.Problems.Count > 0)
        {
            var table = Terminal.NewTable("severity", "kind", "lblk", "zone", "pblk", "message");
            foreach (var p in report.Problems)
            {
                table.AddRow(Terminal.Cell(p.Severity), Terminal.Cell(p.Kind), Terminal.Cell(p.Lblk?.ToString() ?? "-"), Terminal.Cell(p.Zone?.ToString() ?? "-"),
                    Terminal.Cell(p.Pblk?.ToString() ?? "-"), Terminal.Cell(p.Message));
            }
            console.Write(table);
        }
        if (report.ProblemsOmitted > 0)
        {
            Console.Out.WriteLine($"... and {report.ProblemsOmitted} more problems, not listed");
        }

        var fields = new Fields();
        fields.Add("image", report.Image);
        fields.Add("checked", check.Geometry is null
            ? "the header only (it gives every position in the image, and could not be used)"
            : $"header, lbats{(report.Dirty == true ? "" : ", pbats, stats")}{(report.DataChecked ? ", every stored lblk (CRC32C and decompression)" : "")}");
        if (check.Geometry is not null)
        {
            string now = report.Repair is { Repaired: true } ? " now" : "";
            fields.Add($"lblks used{now}", report.LblksUsed.ToString());
            fields.Add($"pblks used{now}", $"{report.PblksUsed} of {report.PblksTotal}");
        }
        fields.Add("problems", $"{report.Errors} errors, {report.Notes} notes");
        if (report.Repair is { } repair)
        {
            foreach (string action in repair.Actions)
            {
                fields.Add("repair", action);
            }
            if (repair.LostLblks.Count > 0)
            {
                string listed = string.Join(", ", repair.LostLblks.Take(LostListed)) + (repair.LostLblks.Count > LostListed ? ", ..." : "");
                fields.Add("lost", $"{repair.LostLblks.Count} lblks now read as zeros: {listed}");
            }
            if (repair.CannotRepairReason is { } reason)
            {
                fields.Add("not repaired", reason);
            }
        }
        fields.Add("result", report.Result switch
        {
            "clean" => "no errors",
            "corrected" => "errors corrected",
            "not_a_cbd_image" => "not a cbd image",
            _ when report.Repair is null => "errors found; cbd check --repair" + (report.DataChecked ? " --data" : "") + " corrects what it can",
            _ => "errors left uncorrected",
        });
        fields.Write();
    }
}
