using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.Cli;

/// <summary>An algorithm and, when given, a level, as <c>--compression zstd:5</c> names them.</summary>
public sealed record CompressionChoice(CompressionAlgorithm Algorithm, int? Level)
{
    public const string Syntax = "lz4|zstd|zlib|deflate[:LEVEL]";

    /// <summary>
    /// Parses <c>NAME[:LEVEL]</c>. "deflate" is another name for zlib: the format stores zlib streams
    /// (RFC 1950, a deflate stream in a 2-byte header and an Adler-32 trailer), algorithm 2.
    /// </summary>
    public static bool TryParse(string text, out CompressionChoice? choice, out string error)
    {
        choice = null;
        error = "";
        string[] parts = text.Trim().Split(':');
        CompressionAlgorithm? algorithm = parts[0].ToLowerInvariant() switch
        {
            "lz4" => CompressionAlgorithm.Lz4,
            "zstd" => CompressionAlgorithm.Zstd,
            "zlib" or "deflate" => CompressionAlgorithm.Zlib,
            _ => null,
        };
        if (algorithm is null || parts.Length > 2)
        {
            error = $"invalid compression '{text}': expected {Syntax}, e.g. zstd or zstd:9";
            return false;
        }
        var (min, max, _) = CodecLimits.Levels(algorithm.Value);
        int? level = null;
        if (parts.Length == 2)
        {
            if (!int.TryParse(parts[1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int parsed)
                || parsed < min || parsed > max)
            {
                error = $"invalid compression level '{parts[1]}' for {parts[0]}: expected {min}..{max}";
                return false;
            }
            level = parsed;
        }
        choice = new CompressionChoice(algorithm.Value, level);
        return true;
    }

    public static string Name(CompressionAlgorithm algorithm) => algorithm.ToString().ToLowerInvariant();
}
