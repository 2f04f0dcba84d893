using Cbd.Core.Format;

namespace Cbd.Core.Engine;

/// <summary>Parameters of a new device.</summary>
public sealed record FormatOptions
{
    /// <summary>Logical size in bytes, rounded down to whole lblks; default 3 x the physical size.</summary>
    public long? LogicalSize { get; init; }

    /// <summary>The largest logical size tune or resize can give the image later (its lbats hold that many lblks); default the logical size.</summary>
    public long? MaxLogicalSize { get; init; }

    /// <summary>Logical block size: a power of two from 4 KiB; the largest allowed depends on the device size.</summary>
    public int LblkSize { get; init; } = 64 * 1024;

    public CompressionAlgorithm Algorithm { get; init; } = CompressionAlgorithm.Lz4;

    /// <summary>Compression level; default per algorithm (lz4 0, zlib 6, zstd 3).</summary>
    public int? Level { get; init; }

    /// <summary>Store all-zero lblks as unallocated.</summary>
    public bool ZeroDetect { get; init; } = true;

    /// <summary>Keep a CRC32C of each stored lblk in its lblk_alloc entry and verify it on every read.</summary>
    public bool LblkChecksums { get; init; } = true;
}

/// <summary>Run-time settings of an open device.</summary>
public sealed record DeviceOptions
{
    public bool ReadOnly { get; init; }

    /// <summary>Memory budget of the lblk cache (clean and dirty lblks together).</summary>
    public long CacheBytes { get; init; } = 64L << 20;

    /// <summary>How long a written lblk may stay dirty in the cache before it is written back.</summary>
    public TimeSpan FlushDelay { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Compression threads used by write-back; default every core.</summary>
    public int? WriteBackParallelism { get; init; }
}
