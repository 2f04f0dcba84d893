using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.Cli.Tests;

public class SizeParserTests
{
    [Theory]
    [InlineData("0", 0L)]
    [InlineData("512", 512L)]
    [InlineData("64K", 64L << 10)]
    [InlineData("64k", 64L << 10)]
    [InlineData("64KiB", 64L << 10)]
    [InlineData("10M", 10L << 20)]
    [InlineData("10MiB", 10L << 20)]
    [InlineData("3G", 3L << 30)]
    [InlineData("2T", 2L << 40)]
    [InlineData(" 7M ", 7L << 20)]
    [InlineData("0008K", 8L << 10)]
    [InlineData("9223372036854775807", long.MaxValue)]
    [InlineData("8388607T", 8388607L << 40)]
    [InlineData("1.5G", 3L << 29)]
    [InlineData("1.5GiB", 3L << 29)]
    [InlineData("0.5K", 512L)]
    [InlineData(".25M", 256L << 10)]
    [InlineData("0.1K", 102L)]
    public void Parses_whole_numbers_with_binary_suffixes(string text, long expected)
    {
        Assert.True(SizeParser.TryParse(text, out long bytes, out string error), error);
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("")]
    [InlineData("M")]
    [InlineData("-5")]
    [InlineData("+5")]
    [InlineData("1.5")]
    [InlineData("1.2.3G")]
    [InlineData(".G")]
    [InlineData("12Q")]
    [InlineData("64 M")]
    [InlineData("64KB")]
    [InlineData("64mib")]
    [InlineData("0x100")]
    [InlineData("1e6")]
    public void Rejects_what_is_not_a_size_and_names_the_input(string text)
    {
        Assert.False(SizeParser.TryParse(text, out _, out string error));
        Assert.Contains($"'{text}'", error);
    }

    [Theory]
    [InlineData("9223372036854775808")]
    [InlineData("99999999999999999999999")]
    [InlineData("8388608T")]
    [InlineData("8589934592G")]
    [InlineData("9007199254740992K")]
    public void Rejects_sizes_past_the_largest_long(string text)
    {
        Assert.False(SizeParser.TryParse(text, out _, out string error));
        Assert.Contains("larger than", error);
    }

    [Theory]
    [InlineData("+1G", 1L << 30, 1)]
    [InlineData("-512M", 512L << 20, -1)]
    [InlineData("+1.5G", 3L << 29, 1)]
    [InlineData("10G", 10L << 30, 0)]
    public void Relative_sizes_carry_their_sign(string text, long expected, int sign)
    {
        Assert.True(SizeParser.TryParseRelative(text, out long bytes, out int parsedSign, out string error), error);
        Assert.Equal((expected, sign), (bytes, parsedSign));
    }

    [Theory]
    [InlineData(65536L, "64 KiB")]
    [InlineData(3L << 30, "3 GiB")]
    [InlineData(961011712L, "916.5 MiB (961011712 bytes)")]
    public void Describe_is_exact_and_readable(long bytes, string expected) => Assert.Equal(expected, SizeParser.Describe(bytes));

    [Theory]
    [InlineData(0L, "0 bytes")]
    [InlineData(1000L, "1000 bytes")]
    [InlineData(65536L, "64 KiB")]
    [InlineData(3L << 30, "3 GiB")]
    [InlineData((3L << 30) + 1, "3221225473 bytes")]
    public void Format_is_exact(long bytes, string expected) => Assert.Equal(expected, SizeParser.Format(bytes));

    [Theory]
    [InlineData(1000L, "1000 bytes")]
    [InlineData(65536L, "64 KiB")]
    [InlineData((3L << 30) / 2, "1.5 GiB")]
    [InlineData(66977792L, "63.9 MiB")]
    [InlineData(1L << 50, "1 PiB")]
    public void FormatApproximate_reads_at_a_glance(long bytes, string expected) => Assert.Equal(expected, SizeParser.FormatApproximate(bytes));

    [Theory]
    [InlineData("lz4", CompressionAlgorithm.Lz4, null)]
    [InlineData("zstd:19", CompressionAlgorithm.Zstd, 19)]
    [InlineData("ZLIB:1", CompressionAlgorithm.Zlib, 1)]
    [InlineData("deflate", CompressionAlgorithm.Zlib, null)]
    [InlineData("deflate:9", CompressionAlgorithm.Zlib, 9)]
    [InlineData("lz4:12", CompressionAlgorithm.Lz4, 12)]
    public void Compression_names_an_algorithm_and_maybe_a_level(string text, CompressionAlgorithm algorithm, int? level)
    {
        Assert.True(CompressionChoice.TryParse(text, out var choice, out string error), error);
        Assert.Equal(new CompressionChoice(algorithm, level), choice);
    }

    [Theory]
    [InlineData("gzip")]
    [InlineData("zstd:0")]
    [InlineData("zstd:23")]
    [InlineData("zlib:10")]
    [InlineData("lz4:-1")]
    [InlineData("lz4:")]
    [InlineData("lz4:1:2")]
    public void Compression_rejects_unknown_algorithms_and_levels_out_of_range(string text) =>
        Assert.False(CompressionChoice.TryParse(text, out _, out _));
}
