using Cbd.Core.Compression;

namespace Cbd.Core.Tests.Format;

/// <summary>The system liblz4 and the managed K4os codec are interchangeable: each reads what the other wrote.</summary>
public class Lz4BindingTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(9)]
    public void Native_and_managed_lz4_read_each_other(int level)
    {
        // Debian ships liblz4-1 on every machine (apt depends on it); without it the fallback alone is in use.
        Assert.True(NativeLz4Codec.IsAvailable, "liblz4.so.1 did not load");
        var native = new NativeLz4Codec(level);
        var managed = new Lz4Codec(level);
        var data = Engine.DeviceTestKit.Compressible(64 * 1024, level);
        var buffer = new byte[64 * 1024];
        var back = new byte[64 * 1024];

        int n = native.Compress(data, buffer);
        Assert.True(n > 0 && n < data.Length);
        Assert.True(managed.TryDecompress(buffer.AsSpan(0, n), back));
        Assert.Equal(data, back);

        n = managed.Compress(data, buffer);
        Array.Clear(back);
        Assert.True(native.TryDecompress(buffer.AsSpan(0, n), back));
        Assert.Equal(data, back);

        Assert.False(native.TryDecompress(buffer.AsSpan(0, n / 2), back));
        Assert.Equal(-1, native.Compress(Engine.DeviceTestKit.Random(64 * 1024, 7), buffer.AsSpan(0, 1000)));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4096)]
    [InlineData(40000)]
    [InlineData(64 * 1024)]
    public void Native_and_managed_lz4_decode_a_prefix_alone(int prefix)
    {
        var data = Engine.DeviceTestKit.Compressible(64 * 1024, prefix);
        var compressed = new byte[64 * 1024];
        int n = new NativeLz4Codec(0).Compress(data, compressed);
        foreach (Codec codec in new Codec[] { new NativeLz4Codec(0), new Lz4Codec(0) })
        {
            var back = new byte[64 * 1024];
            Assert.True(codec.TryDecompressPrefix(compressed.AsSpan(0, n), back, prefix), codec.GetType().Name);
            Assert.True(back.AsSpan(0, prefix).SequenceEqual(data.AsSpan(0, prefix)), codec.GetType().Name);
        }
        // A prefix longer than what the stream holds is not there.
        int small = new NativeLz4Codec(0).Compress(data.AsSpan(0, 4096), compressed);
        foreach (Codec codec in new Codec[] { new NativeLz4Codec(0), new Lz4Codec(0) })
            Assert.False(codec.TryDecompressPrefix(compressed.AsSpan(0, small), new byte[64 * 1024], 4097), codec.GetType().Name);
    }

    [Fact]
    public void Codec_for_lz4_prefers_the_system_library()
    {
        Assert.IsType<NativeLz4Codec>(Codec.Create(Cbd.Core.Compression.CompressionAlgorithm.Lz4, 0));
        Assert.IsType<NativeLz4Codec>(Codec.ForReading(1));
    }
}
