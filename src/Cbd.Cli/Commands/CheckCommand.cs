using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
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
        CliOptions.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetValue(repair), parse.GetValue(data), parse.GetValue(json), parse.GetValue(quiet),
                cancellationToken),
            ExitCodes.CheckOperational, ExitCodes.CheckUsage);
        return command;
    }

    private static async Task<int> RunAsync(string path, bool repair, bool data, bool json, bool quiet, CancellationToken cancellationToken)
    {
        bool inUse = false;
        IBackingStore store;
        if (repair)
        {
            try
            {
                store = ImageFiles.Open(path, writable: true);
            }
            catch (CliException e) when (e.Message.Contains("in use by another process", StringComparison.Ordinal))
            {
                throw new CliException($"{e.Message}; --repair needs the image closed (stop cbd serve first); without --repair, check reads an image in use");
            }
        }
        else
        {
            store = ImageFiles.OpenForReading(path, out inUse);
        }
        await using var owned = store;
        string what = repair ? "repairing" : "checking";
        CheckReport check;
        RepairReport? repaired = null;
        long transient = 0;
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
            if (inUse && check.HasErrors)
            {
                // A writer changes the lbats under the scan: an lblk read before it moved and another read after may name the same
                // pblk. Such findings go away on a second look; only what both looks find counts as an error.
                var again = await Terminal.WithProgressAsync(quiet, $"re-checking {Path.GetFileName(path)}", store.Length,
                    progress => DeviceChecker.CheckAsync(store, new CheckOptions { Data = data }, progress, cancellationToken)).ConfigureAwait(false);
                (check, transient) = Stable(check, again);
            }
        }

        if (inUse)
        {
            // Served images are dirty by design (the server marks them so while open): the usual note would read as an alarm.
            check = With(check, check.Problems.Select(p => p.Kind == CheckProblemKind.ImageDirty
                ? p with { Message = "the dirty flag is set, as it is while the image is served: pbats and stats are rebuilt from the lbats when it is closed or next opened" }
                : p).ToList());
        }
        var (result, exitCode) = Outcome(check, repaired);
        var report = ToJson(path, check, repaired, result, exitCode) with { InUse = inUse, TransientProblems = transient };
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
            PrintText(report, check, quiet);
        }
        return exitCode;
    }

    /// <summary>
    /// The second look, with every error it shares with the first kept as an error, and every other error of either
    /// look kept as a note marked transient; also how many of those there were.
    /// </summary>
    private static (CheckReport Report, long Transient) Stable(CheckReport first, CheckReport second)
    {
        static (CheckProblemKind, ulong?, uint?, ulong?) Key(CheckProblem p) => (p.Kind, p.Lblk, p.Zone, p.Pblk);
        var firstErrors = first.Problems.Where(p => p.Severity == CheckSeverity.Error).Select(Key).ToHashSet();
        var secondErrors = second.Problems.Where(p => p.Severity == CheckSeverity.Error).Select(Key).ToHashSet();
        var problems = new List<CheckProblem>();
        long transient = 0;
        foreach (var p in second.Problems)
        {
            if (p.Severity == CheckSeverity.Error && !firstErrors.Contains(Key(p)))
            {
                problems.Add(Transient(p));
                transient++;
            }
            else
            {
                problems.Add(p);
            }
        }
        foreach (var p in first.Problems.Where(p => p.Severity == CheckSeverity.Error && !secondErrors.Contains(Key(p))))
        {
            problems.Add(Transient(p));
            transient++;
        }
        // Omitted problems cannot be compared; they count only when both looks had some.
        return (With(second, problems, Math.Min(first.ProblemsOmitted, second.ProblemsOmitted)), transient);
    }

    private static CheckReport With(CheckReport report, IReadOnlyList<CheckProblem> problems, long? omitted = null) => new()
    {
        Header = report.Header,
        Geometry = report.Geometry,
        Problems = problems,
        ProblemsOmitted = omitted ?? report.ProblemsOmitted,
        IsClean = report.IsClean,
        DataChecked = report.DataChecked,
        LblksUsed = report.LblksUsed,
        PblksUsed = report.PblksUsed,
        PblksTotal = report.PblksTotal,
        ZonePblksUsed = report.ZonePblksUsed,
        Log = report.Log,
    };

    private static CheckProblem Transient(CheckProblem p) =>
        p with { Severity = CheckSeverity.Info, Message = $"transient (not found by both looks at the image in use): {p.Message}" };

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
            repair is null ? null : new RepairJson(repair.Repaired, repair.Wrote, repair.CannotRepairReason, repair.LostLblks, RepairActions(repair, check.Log)),
            Log: LogText.ToJson(check.Log));
    }

    /// <summary>What repair did, and that it left the log's records alone: replay at open applies them over the lblks as repair leaves them.</summary>
    private static IReadOnlyList<string> RepairActions(RepairReport repair, LogSummary? log) => log is { Records: > 0 }
        ? [.. repair.Actions, $"left the write log as it is: its {log.Records} records for {log.Lblks} lblks are replayed into them at the next open"]
        : repair.Actions;

    private static void PrintText(CheckJson report, CheckReport check, bool quiet)
    {
        if (report.Problems.Count > 0)
        {
            Terminal.WriteRows(["severity", "kind", "lblk", "zone", "pblk", "message"],
                report.Problems.Select(p => new[] { p.Severity, p.Kind, p.Lblk?.ToString() ?? "-", p.Zone?.ToString() ?? "-", p.Pblk?.ToString() ?? "-", p.Message })
                    .ToList());
        }
        if (report.ProblemsOmitted > 0)
        {
            Console.Out.WriteLine($"... and {report.ProblemsOmitted} more problems, not listed");
        }

        if (quiet)
        {
            // The problems, if any, were the answer; the exit code says the rest.
            return;
        }
        var fields = new Fields();
        fields.Add("image", report.Image);
        if (report.InUse)
        {
            fields.Add("in use", "by another process (cbd serve?): read without its lock, nothing written, as the server last wrote its lbats back. " +
                "Findings on an image in use may be transient: errors were looked for twice, and only those found both times count" +
                (report.TransientProblems > 0 ? $" ({report.TransientProblems} transient, listed as notes)" : ""));
        }
        fields.Add("checked", check.Geometry is null
            ? "the header only (it gives every position in the image, and could not be used)"
            : $"header, lbats{(report.Dirty == true ? "" : ", pbats, stats")}{(report.DataChecked ? ", every stored lblk (CRC32C and decompression)" : "")}");
        if (check.Geometry is not null)
        {
            string now = report.Repair is { Repaired: true } ? " now" : "";
            fields.Add($"lblks used{now}", report.LblksUsed.ToString());
            fields.Add($"pblks used{now}", $"{report.PblksUsed} of {report.PblksTotal}");
        }
        if (report.Log is { } log)
        {
            fields.Add("write log", LogText.Contents(log));
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
