namespace Cbd.Nbd.Tests;

/// <summary>The reader's receive buffer: every byte in order, whatever the read sizes, and what it holds in hand.</summary>
public sealed class ReceiveBufferTests
{
    /// <summary>A stream that hands out at most <c>chunk</c> bytes per read, as a socket may.</summary>
    private sealed class TrickleStream(byte[] data, int chunk) : MemoryStream(data)
    {
        public int Reads { get; private set; }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Reads++;
            return base.ReadAsync(buffer[..Math.Min(buffer.Length, chunk)], cancellationToken);
        }
    }

    [Theory]
    [InlineData(1000, 7)]
    [InlineData(100_000, 28)]
    [InlineData(64, 4096)]
    public async Task Returns_every_byte_in_order_whatever_the_read_sizes(int chunk, int seed)
    {
        byte[] data = new byte[300_000];
        new Random(seed).NextBytes(data);
        var buffer = new ReceiveBuffer(new TrickleStream(data, chunk), 64 << 10);
        var random = new Random(seed);
        var received = new List<byte>();
        while (received.Count < data.Length)
        {
            // Request headers, small payloads, and payloads larger than the buffer.
            int want = Math.Min(data.Length - received.Count, random.Next(4) switch { 0 => 28, 1 => 4096, 2 => 70_000, _ => 1 + random.Next(9000) });
            byte[] piece = new byte[want];
            await buffer.ReadExactlyAsync(piece);
            received.AddRange(piece);
        }
        Assert.Equal(data, received.ToArray());
        Assert.Equal(0, buffer.Buffered);
        Assert.Equal(0, await buffer.ReadAtLeastAsync(new byte[28], 28, throwOnEndOfStream: false));
    }

    [Fact]
    public async Task Buffered_counts_what_one_receive_brought_beyond_the_read()
    {
        var buffer = new ReceiveBuffer(new TrickleStream(new byte[3 * 28], 1 << 20), 4096);
        await buffer.ReadExactlyAsync(new byte[28]);
        Assert.Equal(56, buffer.Buffered);
        await buffer.ReadExactlyAsync(new byte[28]);
        await buffer.ReadExactlyAsync(new byte[28]);
        Assert.Equal(0, buffer.Buffered);
    }
}
