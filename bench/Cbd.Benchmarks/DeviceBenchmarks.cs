using BenchmarkDotNet.Attributes;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Benchmarks;

/// <summary>
/// The engine's read and write of one lblk on an in-memory store: a cached read, a whole-lblk write
/// into the cache, and a read that misses the cache (lbat lookup, read, checksum, decompress).
/// </summary>
[MemoryDiagnoser]
public class DeviceBenchmarks
{
    private const int LblkSize = 64 * 1024;
    private const int Lblks = 256;
    private readonly byte[] _data = Corpus.Lblk(LblkSize);
    private readonly byte[] _buffer = new byte[LblkSize];
    private CompressedDevice _device = null!;
    private CompressedDevice _tinyCache = null!;
    private int _next;

    [GlobalSetup]
    public void Setup()
    {
        _device = Open(cacheBytes: 64L << 20);
        _tinyCache = Open(cacheBytes: 1);
    }

    private CompressedDevice Open(long cacheBytes)
    {
        var store = new MemoryBackingStore(256L << 20);
        ImageFormatter.FormatAsync(store, new FormatOptions()).AsTask().GetAwaiter().GetResult();
        var device = CompressedDevice.OpenAsync(store, new DeviceOptions { CacheBytes = cacheBytes, FlushDelay = TimeSpan.FromHours(1) }).AsTask().GetAwaiter().GetResult();
        for (int i = 0; i < Lblks; i++)
            device.WriteAsync((long)i * LblkSize, _data).AsTask().GetAwaiter().GetResult();
        device.FlushAsync().AsTask().GetAwaiter().GetResult();
        return device;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _device.DisposeAsync().AsTask().GetAwaiter().GetResult();
        _tinyCache.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    [Benchmark]
    public ValueTask CachedRead() => _device.ReadAsync(3 * LblkSize, _buffer);

    [Benchmark]
    public ValueTask WholeLblkWrite() => _device.WriteAsync(5 * LblkSize, _data);

    [Benchmark]
    public ValueTask UncachedRead()
    {
        // A cache of the minimum size and a stride through 256 lblks: every read misses.
        _next = (_next + 37) % Lblks;
        return _tinyCache.ReadAsync((long)_next * LblkSize, _buffer);
    }
}
