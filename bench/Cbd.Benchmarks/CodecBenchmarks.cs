using BenchmarkDotNet.Attributes;
using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.Benchmarks;

/// <summary>One 64 KiB lblk through each codec, as write-back and reads do it.</summary>
[MemoryDiagnoser]
public class CodecBenchmarks
{
    private readonly byte[] _lblk = Corpus.Lblk(64 * 1024);
    private readonly byte[] _compressed = new byte[64 * 1024];
    private readonly byte[] _output = new byte[64 * 1024];
    private Codec _codec = null!;
    private int _compressedLength;

    [Params(CompressionAlgorithm.Lz4, CompressionAlgorithm.Zstd, CompressionAlgorithm.Zlib)]
    public CompressionAlgorithm Algorithm { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _codec = Codec.Create(Algorithm, CodecLimits.Levels(Algorithm).Default);
        _compressedLength = _codec.Compress(_lblk, _compressed);
    }

    [Benchmark]
    public int Compress() => _codec.Compress(_lblk, _compressed);

    [Benchmark]
    public bool Decompress() => _codec.TryDecompress(_compressed.AsSpan(0, _compressedLength), _output);

    [Benchmark]
    public uint LblkCrc() => Checksums.LblkCrc(7, _lblk);
}
