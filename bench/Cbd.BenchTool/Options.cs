using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.BenchTool;

/// <summary>The few option forms the bench tool takes: <c>--name value</c> pairs after positional arguments.</summary>
internal static class Options
{
    public static (List<string> Positional, Dictionary<string, string> Named) Parse(string[] args, params string[] known)
    {
        var positional = new List<string>();
        var named = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal))
            {
                positional.Add(args[i]);
                continue;
            }
            if (Array.IndexOf(known, args[i]) < 0)
                throw new ArgumentException($"unknown option {args[i]}");
            if (i + 1 >= args.Length)
                throw new ArgumentException($"{args[i]} needs a value");
            named[args[i]] = args[++i];
        }
        return (positional, named);
    }

    /// <summary>Bytes, with an optional K/M/G/T suffix (powers of 1024).</summary>
    public static long Size(string text)
    {
        long unit = char.ToUpperInvariant(text[^1]) switch
        {
            'K' => 1L << 10,
            'M' => 1L << 20,
            'G' => 1L << 30,
            'T' => 1L << 40,
            _ => 1,
        };
        string digits = unit == 1 ? text : text[..^1];
        if (!long.TryParse(digits, out long value) || value < 0 || value > long.MaxValue / unit)
            throw new FormatException($"size '{text}': expected bytes with an optional K, M, G or T suffix");
        return value * unit;
    }

    /// <summary><c>lz4</c>, <c>zstd:19</c>, ...: the algorithm and its level (the engine's default when absent).</summary>
    public static (CompressionAlgorithm Algorithm, int Level) Compression(string text)
    {
        string[] parts = text.Split(':', 2);
        CompressionAlgorithm algorithm = parts[0].ToLowerInvariant() switch
        {
            "lz4" => CompressionAlgorithm.Lz4,
            "zlib" => CompressionAlgorithm.Zlib,
            "zstd" => CompressionAlgorithm.Zstd,
            _ => throw new FormatException($"compression '{text}': expected lz4, zstd or zlib, optionally :LEVEL"),
        };
        int level = CodecLimits.Levels(algorithm).Default;
        if (parts.Length == 2 && !int.TryParse(parts[1], out level))
            throw new FormatException($"compression '{text}': the level must be a number");
        return (algorithm, level);
    }
}
