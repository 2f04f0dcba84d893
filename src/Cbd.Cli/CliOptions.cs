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

    private static string? Positive(long bytes) => bytes > 0 ? null : "must be larger than 0";

    public static Option<bool> Quiet() => new("--quiet", "-q")
    {
        Description = "No progress bar (none is drawn anyway when stderr is not a terminal).",
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

    public static Argument<string> Image(string description) => new("IMAGE") { Description = description };

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
