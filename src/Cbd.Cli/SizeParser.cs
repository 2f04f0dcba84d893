using System.CommandLine.Parsing;
using System.Globalization;

namespace Cbd.Cli;

/// <summary>
/// Parses sizes given on the command line: a whole number of bytes, optionally followed by K, M, G or T
/// (binary multiples: K = 1024) and an optional "iB" (so 64M, 64m and 64MiB are all 64 x 2^20 bytes).
/// </summary>
public static class SizeParser
{
    private const string Expected = "expected a whole number of bytes with an optional K, M, G or T suffix (binary multiples), e.g. 512, 64K, 10G";

    /// <summary>Parses <paramref name="text"/>; false with a message naming the input and what was expected.</summary>
    public static bool TryParse(string text, out long bytes, out string error)
    {
        bytes = 0;
        error = "";
        string trimmed = text.Trim();
        int digits = 0;
        while (digits < trimmed.Length && char.IsAsciiDigit(trimmed[digits]))
        {
            digits++;
        }
        if (digits == 0)
        {
            error = $"invalid size '{text}': {Expected}";
            return false;
        }

        string suffix = trimmed[digits..];
        if (suffix.EndsWith("iB", StringComparison.Ordinal) && suffix.Length == 3)
        {
            suffix = suffix[..1];
        }
        int shift = suffix.ToUpperInvariant() switch
        {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => -1,
        };
        if (shift < 0)
        {
            error = $"invalid size '{text}': unknown suffix '{trimmed[digits..]}'; {Expected}";
            return false;
        }
        if (!long.TryParse(trimmed.AsSpan(0, digits), NumberStyles.None, CultureInfo.InvariantCulture, out long number)
            || number > long.MaxValue >> shift)
        {
            error = $"invalid size '{text}': larger than {long.MaxValue} bytes";
            return false;
        }
        bytes = number << shift;
        return true;
    }

    /// <summary>A <c>CustomParser</c> for a size option: reports a bad size as a parse error of that option.</summary>
    public static long ParseArgument(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (TryParse(text, out long bytes, out string error))
        {
            return bytes;
        }
        result.AddError(error);
        return 0;
    }

    /// <summary>Formats a byte count with the largest binary unit that divides it (65536 -> "64 KiB").</summary>
    public static string Format(long bytes)
    {
        string[] units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
        int unit = 0;
        while (unit < units.Length - 1 && bytes != 0 && bytes % 1024 == 0)
        {
            bytes /= 1024;
            unit++;
        }
        return $"{bytes} {units[unit]}";
    }

    /// <summary>
    /// Formats a byte count for reading at a glance, in the largest binary unit it reaches: whole when it is,
    /// else to one decimal (65536 -> "64 KiB", 1610612737 -> "1.5 GiB").
    /// </summary>
    public static string FormatApproximate(long bytes)
    {
        if (bytes < 1024)
        {
            return $"{bytes} bytes";
        }
        string[] units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        double value = bytes / 1024.0;
        int unit = 0;
        while (unit < units.Length - 1 && value >= 1024)
        {
            value /= 1024;
            unit++;
        }
        string number = value == Math.Floor(value) ? value.ToString("0", CultureInfo.InvariantCulture) : value.ToString("0.0", CultureInfo.InvariantCulture);
        return $"{number} {units[unit]}";
    }
}
