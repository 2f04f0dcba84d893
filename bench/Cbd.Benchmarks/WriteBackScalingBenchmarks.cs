using BenchmarkDotNet.Attributes;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Benchmarks;

/// <summary>
/// Write-back of 64 MiB of real file bytes (1024 dirty lblks) with one and with two compression workers,
/// on an in-memory store so that only compression and the engine are measured: the ratio of the two
/// means is how writes scale with cores.
/// </summary>
[MemoryDiagnoser]
public class WriteBackScalingBenchmarks
{
    private const int Bytes = 64 << 20;
    private readonly byte[] _data = new byte[Bytes];
    private CompressedDevice _device = null!;

    [Params(1, 2)]
    public int Workers { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        int filled = 0;
        foreach (string file in Directory.EnumerateFiles("/usr/lib/x86_64-linux-gnu", "*.so*"))
        {
            try
            {
                byte[] bytes = File.ReadAllBytes(file);
                int n = Math.Min(bytes.Length, Bytes - filled);
                bytes.AsSpan(0, n).CopyTo(_data.AsSpan(filled));
                filled += n;
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
            if (filled == Bytes)
                break;
        }
    }

    [IterationSetup]
    public void Fill()
    {
        var store = new MemoryBackingStore(256L << 20);
        ImageFormatter.FormatAsync(store, new FormatOptions()).AsTask().GetAwaiter().GetResult();
        _device = CompressedDevice.OpenAsync(store, new DeviceOptions
        {
            CacheBytes = 256L << 20,
            FlushDelay = TimeSpan.FromHours(1),
            WriteBackParallelism = Workers,
        }).AsTask().GetAwaiter().GetResult();
        _device.WriteAsync(0, _data).AsTask().GetAwaiter().GetResult();
    }

    [Benchmark]
    public ValueTask WriteBack() => _device.FlushAsync();

    [IterationCleanup]
    public void Close() => _device.DisposeAsync().AsTask().GetAwaiter().GetResult();
}
