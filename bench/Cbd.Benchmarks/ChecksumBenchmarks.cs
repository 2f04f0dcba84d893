using System.IO.Hashing;
using BenchmarkDotNet.Attributes;
using Cbd.Core.Compression;

namespace Cbd.Benchmarks;

/// <summary>
/// The checksum of one block, 4 KiB or a 64 KiB lblk: CRC32C as the format keeps it (and with the lblk
/// number mixed in, as lblk_alloc entries do), beside the IEEE CRC-32 and the xxHash family that
/// System.IO.Hashing also offers, for a sub-lblk unit or a write record that needs a checksum of its own.
/// </summary>
public class ChecksumBenchmarks
{
    private byte[] _block = null!;

    [Params(4096, 65536)]
    public int BlockSize { get; set; }

    [GlobalSetup]
    public void Setup() => _block = Corpus.Lblk(BlockSize);

    [Benchmark(Baseline = true)]
    public uint Crc32C() => Checksums.Crc32C(_block);

    [Benchmark]
    public uint LblkCrc() => Checksums.LblkCrc(7, _block);

    [Benchmark]
    public uint Crc32Ieee() => Crc32.HashToUInt32(_block);

    [Benchmark]
    public ulong XxHash3() => System.IO.Hashing.XxHash3.HashToUInt64(_block);

    [Benchmark]
    public ulong XxHash64() => System.IO.Hashing.XxHash64.HashToUInt64(_block);

    [Benchmark]
    public uint XxHash32() => System.IO.Hashing.XxHash32.HashToUInt32(_block);
}
