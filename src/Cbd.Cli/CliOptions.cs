using System.CommandLine;
using System.CommandLine.Parsing;
using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.Cli;

/// <summary>Options several commands share, built afresh for each command that uses them.</summary>
public static class CliOptions
{
    /// <summary>A size option (K/M/G/T suffixes); <paramref name="validate"/> returns an error message for a size the option does not take.</summary>
    public static Option<long?> Size(string name, string description, bool required = false, Func<long, string?>? validate = null) => new(name)
    {
        Description = description,
        HelpName = "SIZE",
        Required = required,
        CustomParser = result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
            if (!SizeParser.TryParse(text, out long bytes, out string error))
            {
                result.AddError($"{name}: {error}");
                return null;
            }
            if ((validate ?? Positive)(bytes) is { } refused)
            {
                result.AddError($"{name}: {refused}");
                return null;
            }
            return bytes;
        },
    };

    /// <summary>
    /// A size option that also takes "+SIZE" and "-SIZE", relative to the current size, as qemu-img resize does;
    /// <see cref="RelativeSize.Resolve"/> gives the size it means once the current one is known.
    /// </summary>
    public static Option<RelativeSize?> Relative(string name, string description, bool required = false) => new(name)
    {
        Description = description,
        HelpName = "[+|-]SIZE",
        Required = required,
        CustomParser = result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
            if (!SizeParser.TryParseRelative(text, out long bytes, out int sign, out string error))
            {
                result.AddError($"{name}: {error}");
                return null;
            }
            if (sign == 0 && bytes == 0)
            {
                result.AddError($"{name}: must be larger than 0");
                return null;
            }
            return new RelativeSize(name, text.Trim(), bytes, sign);
        },
    };

    /// <summary>
    /// Sets a maintenance command's action through <see cref="CommandRunner"/>, reporting tokens no option or argument
    /// took as usage errors itself: the parser would report them first, so that <c>info --bogus r.cbd</c>, which takes
    /// --bogus for IMAGE, would blame r.cbd before naming --bogus.
    /// </summary>
    public static void SetAction(Command command, Func<ParseResult, CancellationToken, Task<int>> body, int failureCode = ExitCodes.Failed,
        int usageCode = ExitCodes.Usage)
    {
        command.TreatUnmatchedTokensAsErrors = false;
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
        {
            if (parse.UnmatchedTokens.Count == 0)
            {
                return body(parse, cancellationToken);
            }
            foreach (string token in parse.UnmatchedTokens)
            {
                CommandRunner.Error(token.StartsWith('-') && token.Length > 1 ? $"unknown option '{token}'" : $"unexpected argument '{token}'");
            }
            Console.Error.WriteLine($"Try 'cbd {command.Name} --help'.");
            return Task.FromResult(usageCode);
        }, failureCode);
    }

    private static string? Positive(long bytes) => bytes > 0 ? null : "must be larger than 0";

    /// <summary>--quiet: no progress bar, and <paramref name="more"/> (e.g. "and no summary").</summary>
    public static Option<bool> Quiet(string? more = null) => new("--quiet", "-q")
    {
        Description = $"No progress bar{(more is null ? "" : " " + more)} (no bar is drawn anyway when stderr is not a terminal).",
    };

    public static Option<bool> Json(string what) => new("--json")
    {
        Description = $"Print {what} as JSON on stdout (the schema is in docs/CLI.md).",
    };

    public static Option<CompressionChoice?> Compression(string description) => new("--compression")
    {
        Description = description,
        HelpName = CompressionChoice.Syntax,
        CustomParser = ParseCompression,
    };

    public static Argument<string> Image(string description)
    {
        var image = new Argument<string>("IMAGE") { Description = description };
        // An option the command does not have lands here, as if it were the path: name it for what it is.
        image.Validators.Add(result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
            if (text.Length > 1 && text[0] == '-')
            {
                result.AddError($"unknown option '{text}'");
            }
        });
        return image;
    }

    private static CompressionChoice? ParseCompression(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (CompressionChoice.TryParse(text, out var choice, out string error))
        {
            return choice;
        }
        result.AddError(error);
        return null;
    }

    /// <summary>"lz4 level 0".</summary>
    public static string Describe(CompressionAlgorithm algorithm, int level) => $"{CompressionChoice.Name(algorithm)} level {level}";

    public static string OnOff(bool value) => value ? "on" : "off";
}

/// <summary>A size as given: absolute (<see cref="Sign"/> 0), or to add to (+1) or take from (-1) the current size.</summary>
public sealed record RelativeSize(string Option, string Text, long Bytes, int Sign)
{
    /// <summary>The size meant, given the current one.</summary>
    /// <exception cref="CliException">A shrink by as much as the current size, or a grow past the largest size.</exception>
    public long Resolve(string path, long current)
    {
        if (Sign == 0)
        {
            return Bytes;
        }
        if (Sign < 0 && Bytes >= current)
        {
            throw new CliException($"{path}: {Option} {Text}: the size is {SizeParser.Describe(current)}, so nothing would be left");
        }
        if (Sign > 0 && Bytes > long.MaxValue - current)
        {
            throw new CliException($"{path}: {Option} {Text}: past the largest size");
        }
        return current + Sign * Bytes;
    }
}
