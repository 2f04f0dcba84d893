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

    [Fact]
    public void Codec_for_lz4_prefers_the_system_library()
    {
        Assert.IsType<NativeLz4Codec>(Codec.Create(Cbd.Core.Compression.CompressionAlgorithm.Lz4, 0));
        Assert.IsType<NativeLz4Codec>(Codec.ForReading(1));
    }
}
