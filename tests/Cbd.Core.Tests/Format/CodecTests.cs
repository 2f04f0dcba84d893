using Cbd.Core.Compression;
using Cbd.Core.Format;
using Cbd.Core.Tests.Engine;
using CsCheck;

namespace Cbd.Core.Tests.Format;

public class CodecTests
{
    public static TheoryData<CompressionAlgorithm, int> Levels() => new()
    {
        { CompressionAlgorithm.Lz4, 0 },
        { CompressionAlgorithm.Lz4, 2 },
        { CompressionAlgorithm.Lz4, 9 },
        { CompressionAlgorithm.Lz4, 12 },
        { CompressionAlgorithm.Zlib, 1 },
        { CompressionAlgorithm.Zlib, 9 },
        { CompressionAlgorithm.Zstd, 1 },
        { CompressionAlgorithm.Zstd, 19 },
    };

    [Theory]
    [MemberData(nameof(Levels))]
    public void Compressible_lblk_round_trips_and_shrinks(CompressionAlgorithm algorithm, int level)
    {
        var codec = Codec.Create(algorithm, level);
        Assert.Equal(algorithm, codec.Algorithm);
        foreach (int size in new[] { 4096, 65536, 262144 })
        {
            var data = DeviceTestKit.Compressible(size, size);
            var compressed = new byte[size];
            int n = codec.Compress(data, compressed);
            Assert.InRange(n, 1, size * 3 / 4);

            var back = new byte[size];
            Assert.True(codec.TryDecompress(compressed.AsSpan(0, n), back));
            Assert.Equal(data, back);

            // Any level's output reads back with the algorithm's reader.
            back.AsSpan().Clear();
            Assert.True(Codec.ForReading((byte)algorithm)!.TryDecompress(compressed.AsSpan(0, n), back));
            Assert.Equal(data, back);
        }
    }

    [Theory]
    [MemberData(nameof(Levels))]
    public void Zeros_round_trip(CompressionAlgorithm algorithm, int level)
    {
        var codec = Codec.Create(algorithm, level);
        var compressed = new byte[65536];
        int n = codec.Compress(new byte[65536], compressed);
        Assert.InRange(n, 1, 1024);
        var back = new byte[65536];
        back.AsSpan().Fill(0xAA);
        Assert.True(codec.TryDecompress(compressed.AsSpan(0, n), back));
        Assert.DoesNotContain(back, b => b != 0);
    }

    [Theory]
    [MemberData(nameof(Levels))]
    public void Output_that_does_not_fit_returns_minus_one(CompressionAlgorithm algorithm, int level)
    {
        var codec = Codec.Create(algorithm, level);
        var data = DeviceTestKit.Random(65536, 5);
        Assert.Equal(-1, codec.Compress(data, new byte[65536 - 4096 - 1])); // what the engine offers: one pblk saved
        Assert.Equal(-1, codec.Compress(data, new byte[100]));
        Assert.Equal(-1, codec.Compress(data, new byte[1]));
        Assert.Equal(-1, codec.Compress(data, []));
    }

    [Theory]
    [MemberData(nameof(Levels))]
    public void Truncated_input_does_not_decompress(CompressionAlgorithm algorithm, int level)
    {
        var codec = Codec.Create(algorithm, level);
        var data = DeviceTestKit.Compressible(65536, 9);
        var compressed = new byte[65536];
        int n = codec.Compress(data, compressed);
        var back = new byte[65536];
        foreach (int cut in new[] { 0, 1, n / 2, n - 1 })
            Assert.False(codec.TryDecompress(compressed.AsSpan(0, cut), back), $"{cut} of {n} bytes");
    }

    [Theory]
    [MemberData(nameof(Levels))]
    public void Wrong_destination_length_does_not_decompress(CompressionAlgorithm algorithm, int level)
    {
        var codec = Codec.Create(algorithm, level);
        var data = DeviceTestKit.Compressible(65536, 11);
        var compressed = new byte[65536];
        int n = codec.Compress(data, compressed);
        Assert.False(codec.TryDecompress(compressed.AsSpan(0, n), new byte[65535]));
        Assert.False(codec.TryDecompress(compressed.AsSpan(0, n), new byte[65537]));
        Assert.False(codec.TryDecompress(compressed.AsSpan(0, n), new byte[4096]));
        Assert.False(codec.TryDecompress(compressed.AsSpan(0, n), new byte[131072]));
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4)]
    [InlineData(CompressionAlgorithm.Zlib)]
    [InlineData(CompressionAlgorithm.Zstd)]
    public void Garbage_does_not_decompress(CompressionAlgorithm algorithm)
    {
        var codec = Codec.ForReading((byte)algorithm)!;
        var back = new byte[65536];
        for (int seed = 0; seed < 50; seed++)
            Assert.False(codec.TryDecompress(DeviceTestKit.Random(1 + seed * 97, seed), back), $"seed {seed}");
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4)]
    [InlineData(CompressionAlgorithm.Zlib)]
    [InlineData(CompressionAlgorithm.Zstd)]
    public void Garbage_never_throws(CompressionAlgorithm algorithm)
    {
        var codec = Codec.ForReading((byte)algorithm)!;
        // Half the inputs start like a real stream, so that garbage gets past the first check.
        byte[] header = algorithm switch
        {
            CompressionAlgorithm.Zlib => [0x78, 0x9C],
            CompressionAlgorithm.Zstd => [0x28, 0xB5, 0x2F, 0xFD],
            _ => [0xF0],
        };
        Gen.Select(Gen.Byte.Array[0, 3000], Gen.Bool, Gen.OneOf(0, 1, 4096, 65536)).Sample((garbage, framed, size) =>
        {
            byte[] input = framed ? [.. header, .. garbage] : garbage;
            codec.TryDecompress(input, new byte[size]);
        }, iter: 3000);
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4)]
    [InlineData(CompressionAlgorithm.Zlib)]
    [InlineData(CompressionAlgorithm.Zstd)]
    public void Damaged_compressed_lblk_never_throws(CompressionAlgorithm algorithm)
    {
        // Valid output with bytes flipped or cut: the closest garbage to what a bad sector gives.
        var codec = Codec.ForReading((byte)algorithm)!;
        var data = DeviceTestKit.Compressible(16384, 3);
        var compressed = new byte[16384];
        int n = Codec.Create(algorithm, CodecLimits.Levels(algorithm).Default).Compress(data, compressed);
        Gen.Select(Gen.Int[0, n - 1], Gen.Byte[1, 255], Gen.Int[1, n]).Sample((at, flip, length) =>
        {
            var damaged = compressed[..n];
            damaged[at] ^= flip;
            var back = new byte[16384];
            if (codec.TryDecompress(damaged.AsSpan(0, length), back))
            {
                Assert.Equal(length, n); // only a whole stream can decompress fully
                if (algorithm == CompressionAlgorithm.Zlib)
                    Assert.Equal(data, back); // zlib carries its own Adler-32: damage never reads back as data
            }
        }, iter: 2000);
    }

    [Fact]
    public void Readers_exist_for_the_three_algorithm_ids_only()
    {
        Assert.Equal(CompressionAlgorithm.Lz4, Codec.ForReading(1)!.Algorithm);
        Assert.Equal(CompressionAlgorithm.Zlib, Codec.ForReading(2)!.Algorithm);
        Assert.Equal(CompressionAlgorithm.Zstd, Codec.ForReading(3)!.Algorithm);
        foreach (byte id in new byte[] { 0, 4, 0x78, 0xFF })
            Assert.Null(Codec.ForReading(id));
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4, 0, 12, 0)]
    [InlineData(CompressionAlgorithm.Zlib, 1, 9, 6)]
    [InlineData(CompressionAlgorithm.Zstd, 1, 22, 3)]
    public void Level_ranges_are_pinned(CompressionAlgorithm algorithm, int min, int max, int defaultLevel)
    {
        Assert.Equal((min, max, defaultLevel), CodecLimits.Levels(algorithm));
        Codec.Create(algorithm, min);
        Codec.Create(algorithm, max);
        var below = Assert.Throws<InvalidDataException>(() => Codec.Create(algorithm, min - 1));
        Assert.Contains($"level: {min - 1}", below.Message);
        var above = Assert.Throws<InvalidDataException>(() => Codec.Create(algorithm, max + 1));
        Assert.Contains($"level: {max + 1}", above.Message);
    }

    [Fact]
    public void Unknown_algorithm_cannot_be_created()
    {
        var e = Assert.Throws<InvalidDataException>(() => Codec.Create((CompressionAlgorithm)4, 1));
        Assert.Contains("algorithm: 4", e.Message);
    }

    [Fact]
    public void Codecs_are_safe_to_share_between_threads()
    {
        var codecs = new[] { Codec.Create(CompressionAlgorithm.Lz4, 9), Codec.Create(CompressionAlgorithm.Zlib, 6), Codec.Create(CompressionAlgorithm.Zstd, 3) };
        Parallel.For(0, 300, i =>
        {
            var codec = codecs[i % codecs.Length];
            var data = DeviceTestKit.Compressible(65536, i);
            var compressed = new byte[65536];
            int n = codec.Compress(data, compressed);
            var back = new byte[65536];
            Assert.True(codec.TryDecompress(compressed.AsSpan(0, n), back));
            Assert.Equal(data, back);
        });
    }
}
