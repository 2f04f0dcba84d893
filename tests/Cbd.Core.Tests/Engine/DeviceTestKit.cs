using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>Formats and opens devices on in-memory stores for tests.</summary>
internal static class DeviceTestKit
{
    public static async Task<MemoryBackingStore> FormatAsync(long physical, FormatOptions? options = null)
    {
        var store = new MemoryBackingStore(physical);
        await ImageFormatter.FormatAsync(store, options ?? new FormatOptions());
        return store;
    }

    public static ValueTask<CompressedDevice> OpenAsync(IBackingStore store, DeviceOptions? options = null) =>
        CompressedDevice.OpenAsync(new NonDisposingStore(store), options ?? new DeviceOptions { FlushDelay = TimeSpan.FromHours(1) });

    /// <summary>Bytes that LZ4 compresses about 2-3:1 (words of a small vocabulary) and that differ with the seed.</summary>
    public static byte[] Compressible(int length, int seed)
    {
        var random = new Random(seed);
        var words = new byte[64][];
        for (int w = 0; w < words.Length; w++)
        {
            words[w] = new byte[3 + random.Next(8)];
            random.NextBytes(words[w]);
        }
        var data = new byte[length];
        for (int i = 0; i < length;)
        {
            var word = words[random.Next(words.Length)];
            int n = Math.Min(word.Length, length - i);
            word.AsSpan(0, n).CopyTo(data.AsSpan(i));
            i += n;
        }
        return data;
    }

    public static byte[] Random(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>Lets a test reopen the same store after the device (which owns its store) is disposed.</summary>
    private sealed class NonDisposingStore(IBackingStore inner) : IBackingStore
    {
        public long Length => inner.Length;
        public bool CanWrite => inner.CanWrite;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => inner.WriteAsync(offset, data, cancellationToken);
        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);
        public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.ZeroRangeAsync(offset, length, cancellationToken);
        public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.DeallocateAsync(offset, length, cancellationToken);
        public long? AllocatedBytes => inner.AllocatedBytes;
        public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => inner.SetLengthAsync(length, cancellationToken);
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
