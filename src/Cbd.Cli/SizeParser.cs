using System.CommandLine.Parsing;
using System.Globalization;

namespace Cbd.Cli;

/// <summary>
/// Parses sizes given on the command line: a number of bytes, optionally followed by K, M, G or T
/// (binary multiples: K = 1024) and an optional "iB" (so 64M, 64m and 64MiB are all 64 x 2^20 bytes).
/// With a suffix the number may have a fraction, as qemu-img and lvm take it (1.5G); a fraction of a
/// byte is dropped.
/// </summary>
public static class SizeParser
{
    private const string Expected = "expected a number of bytes with an optional K, M, G or T suffix (binary multiples), e.g. 512, 64K, 1.5G";

    /// <summary>Parses <paramref name="text"/>; false with a message naming the input and what was expected.</summary>
    public static bool TryParse(string text, out long bytes, out string error)
    {
        bytes = 0;
        string trimmed = text.Trim();
        if (trimmed.Length > 0 && trimmed[0] is '+' or '-')
        {
            error = $"invalid size '{text}': no sign is taken here; {Expected}";
            return false;
        }
        return TryParseUnsigned(text, trimmed, out bytes, out error);
    }

    /// <summary>
    /// Parses a size that may be relative, as qemu-img resize takes it: "+1G" grows by 1 GiB, "-1G"
    /// shrinks by it; <paramref name="sign"/> is +1, -1, or 0 for an absolute size.
    /// </summary>
    public static bool TryParseRelative(string text, out long bytes, out int sign, out string error)
    {
        string trimmed = text.Trim();
        sign = trimmed.Length > 0 ? trimmed[0] switch { '+' => 1, '-' => -1, _ => 0 } : 0;
        return TryParseUnsigned(text, sign == 0 ? trimmed : trimmed[1..], out bytes, out error);
    }

    private static bool TryParseUnsigned(string text, string trimmed, out long bytes, out string error)
    {
        bytes = 0;
        error = "";
        int digits = 0;
        while (digits < trimmed.Length && (char.IsAsciiDigit(trimmed[digits]) || trimmed[digits] == '.'))
        {
            digits++;
        }
        string number = trimmed[..digits];
        int point = number.IndexOf('.');
        if (number.Length == 0 || number == "." || (point >= 0 && number.IndexOf('.', point + 1) >= 0))
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
        if (point >= 0 && shift == 0)
        {
            error = $"invalid size '{text}': a fraction of a byte; give a whole number of bytes, or a fraction of a K, M, G or T";
            return false;
        }
        string whole = point < 0 ? number : number[..point];
        string fraction = point < 0 ? "" : number[(point + 1)..];
        if (!long.TryParse(whole.Length == 0 ? "0" : whole, NumberStyles.None, CultureInfo.InvariantCulture, out long integer)
            || integer > long.MaxValue >> shift)
        {
            error = $"invalid size '{text}': larger than {long.MaxValue} bytes";
            return false;
        }
        bytes = integer << shift;
        if (fraction.Length > 0)
        {
            // The fraction of the unit, to the byte: digits past the 18th cannot add one.
            decimal part = decimal.Parse("0." + fraction[..Math.Min(fraction.Length, 18)], CultureInfo.InvariantCulture);
            long extra = (long)decimal.Floor(part * (1L << shift));
            if (bytes > long.MaxValue - extra)
            {
                error = $"invalid size '{text}': larger than {long.MaxValue} bytes";
                return false;
            }
            bytes += extra;
        }
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

    /// <summary>
    /// A size in words a person reads at once, exact: "64 KiB", "1 GiB"; one that is no whole number of
    /// its largest unit gets its bytes too: "1.5 GiB (1610616832 bytes)".
    /// </summary>
    public static string Describe(long bytes)
    {
        string exact = Format(bytes);
        long number = long.Parse(exact.AsSpan(0, exact.IndexOf(' ')), CultureInfo.InvariantCulture);
        return number < 1024 ? exact : $"{FormatApproximate(bytes)} ({bytes} bytes)";
    }
}
