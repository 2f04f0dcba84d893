using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using K4os.Compression.LZ4;
using K4os.Compression.LZ4.Engine;
using ZstdSharp;

namespace Cbd.Benchmarks;

/// <summary>
/// What a small write's compression could cost: one block of 64 KiB (a whole lblk, which write-back
/// recompresses for every 4 KiB written into it) or of 4 KiB (a sub-lblk unit, or one logged write record),
/// compressed and decompressed by LZ4 as cbd runs it (liblz4's default), by LZ4 with more acceleration
/// (liblz4's and K4os's fast modes), and by zstd at its default, its fastest positive and two negative levels.
/// Each operation takes the next of 16 blocks spread over a file, so that a figure is not one block's;
/// the Ratio column is their compressed bytes over their input bytes.
/// </summary>
[Config(typeof(RatioConfig))]
public class SmallWriteCodecBenchmarks
{
    private const int Blocks = 16;
    private byte[][] _blocks = null!;
    private byte[][] _compressed = null!;
    private int[] _lengths = null!;
    private byte[] _target = null!;
    private byte[] _output = null!;
    private BlockCodec _codec = null!;
    private int _next;

    [ParamsAllValues]
    public SampleKind Data { get; set; }

    [Params(4096, 65536)]
    public int BlockSize { get; set; }

    [Params("lz4", "lz4 acc 4", "lz4 acc 16", "k4os", "k4os acc 16", "zstd 3", "zstd 1", "zstd -1", "zstd -5")]
    public string Codec { get; set; } = "";

    [GlobalSetup]
    public void Setup()
    {
        _blocks = Corpus.Samples(Data, BlockSize, Blocks);
        _codec = BlockCodec.Create(Codec);
        _target = new byte[BlockSize + BlockSize / 128 + 64]; // room for the worst case of either format
        _output = new byte[BlockSize];
        _compressed = new byte[Blocks][];
        _lengths = new int[Blocks];
        for (int i = 0; i < Blocks; i++)
        {
            _compressed[i] = new byte[_target.Length];
            _lengths[i] = _codec.Compress(_blocks[i], _compressed[i]);
            if (_codec.Decompress(_compressed[i].AsSpan(0, _lengths[i]), _output) != BlockSize || !_output.AsSpan().SequenceEqual(_blocks[i]))
                throw new InvalidOperationException($"{Codec}: block {i} does not round-trip");
        }
    }

    [GlobalCleanup]
    public void Cleanup() => _codec.Dispose();

    [Benchmark]
    public int Compress() => _codec.Compress(_blocks[_next++ % Blocks], _target);

    [Benchmark]
    public int Decompress()
    {
        int i = _next++ % Blocks;
        return _codec.Decompress(_compressed[i].AsSpan(0, _lengths[i]), _output);
    }

    /// <summary>Compressed bytes over input bytes of the 16 blocks a case runs on.</summary>
    public static double Ratio(SampleKind data, int blockSize, string codec)
    {
        var blocks = Corpus.Samples(data, blockSize, Blocks);
        using var blockCodec = BlockCodec.Create(codec);
        var target = new byte[blockSize + blockSize / 128 + 64];
        long compressed = 0;
        foreach (byte[] block in blocks)
            compressed += blockCodec.Compress(block, target);
        return (double)compressed / ((long)blockSize * Blocks);
    }

    private sealed class RatioConfig : ManualConfig
    {
        public RatioConfig() => AddColumn(new RatioColumn());
    }

    private sealed class RatioColumn : IColumn
    {
        public string Id => nameof(RatioColumn);
        public string ColumnName => "Ratio";
        public bool AlwaysShow => true;
        public ColumnCategory Category => ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public UnitType UnitType => UnitType.Dimensionless;
        public string Legend => "Compressed bytes over input bytes of the 16 blocks";

        public bool IsAvailable(Summary summary) => true;

        public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

        public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
        {
            var parameters = benchmarkCase.Parameters;
            return Ratio((SampleKind)parameters[nameof(Data)], (int)parameters[nameof(BlockSize)], (string)parameters[nameof(Codec)]).ToString("0.000");
        }
    }
}

/// <summary>One block codec of <see cref="SmallWriteCodecBenchmarks"/>, by the name its parameter gives.</summary>
internal abstract class BlockCodec : IDisposable
{
    public abstract int Compress(ReadOnlySpan<byte> source, Span<byte> target);

    /// <summary>The decompressed length, or a negative number for a corrupt block.</summary>
    public abstract int Decompress(ReadOnlySpan<byte> source, Span<byte> target);

    public virtual void Dispose()
    {
    }

    /// <summary>"lz4", "lz4 acc N", "k4os", "k4os acc N", "zstd LEVEL".</summary>
    public static BlockCodec Create(string name)
    {
        string[] words = name.Split(' ');
        return words switch
        {
            ["lz4"] => new NativeLz4(1),
            ["lz4", "acc", var n] => new NativeLz4(int.Parse(n)),
            ["k4os"] => new K4osLz4(1),
            ["k4os", "acc", var n] => new K4osLz4(int.Parse(n)),
            ["zstd", var level] => new Zstd(int.Parse(level)),
            _ => throw new ArgumentException($"codec '{name}': expected lz4, lz4 acc N, k4os, k4os acc N or zstd LEVEL", nameof(name)),
        };
    }

    /// <summary>liblz4, as cbd's LZ4 codec calls it: LZ4_compress_default is LZ4_compress_fast at acceleration 1.</summary>
    private sealed unsafe class NativeLz4(int acceleration) : BlockCodec
    {
        private const string Library = "liblz4.so.1";

        public override int Compress(ReadOnlySpan<byte> source, Span<byte> target)
        {
            fixed (byte* src = source)
            fixed (byte* dst = target)
                return LZ4_compress_fast(src, dst, source.Length, target.Length, acceleration);
        }

        public override int Decompress(ReadOnlySpan<byte> source, Span<byte> target)
        {
            fixed (byte* src = source)
            fixed (byte* dst = target)
                return LZ4_decompress_safe(src, dst, source.Length, target.Length);
        }

        [DllImport(Library)]
        private static extern int LZ4_compress_fast(byte* source, byte* destination, int sourceSize, int destinationCapacity, int acceleration);

        [DllImport(Library)]
        private static extern int LZ4_decompress_safe(byte* source, byte* destination, int compressedSize, int destinationCapacity);
    }

    /// <summary>
    /// The managed LZ4 that cbd falls back to without liblz4. K4os's levels have no acceleration; its fast mode
    /// with one is Pubternal.CompressFast, which is LZ4_compress_fast_continue: a context kept from one block to
    /// the next would make each block refer to the one before, so each block gets a fresh one, as
    /// LZ4_compress_fast initialises its state for every call.
    /// </summary>
    private sealed unsafe class K4osLz4(int acceleration) : BlockCodec
    {
        public override int Compress(ReadOnlySpan<byte> source, Span<byte> target)
        {
            if (acceleration == 1)
                return LZ4Codec.Encode(source, target, LZ4Level.L00_FAST);
            using var context = new Pubternal.FastContext();
            fixed (byte* src = source)
            fixed (byte* dst = target)
                return Pubternal.CompressFast(context, src, dst, source.Length, target.Length, acceleration);
        }

        public override int Decompress(ReadOnlySpan<byte> source, Span<byte> target) => LZ4Codec.Decode(source, target);
    }

    private sealed class Zstd(int level) : BlockCodec
    {
        private readonly Compressor _compressor = new(level);
        private readonly Decompressor _decompressor = new();

        public override int Compress(ReadOnlySpan<byte> source, Span<byte> target) =>
            _compressor.TryWrap(source, target, out int written) ? written : -1;

        public override int Decompress(ReadOnlySpan<byte> source, Span<byte> target) =>
            _decompressor.TryUnwrap(source, target, out int written) ? written : -1;

        public override void Dispose()
        {
            _compressor.Dispose();
            _decompressor.Dispose();
        }
    }
}
