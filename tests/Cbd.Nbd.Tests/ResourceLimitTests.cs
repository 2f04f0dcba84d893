using System.Buffers.Binary;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>
/// What clients cannot make the server hold: connections over the limit, handshakes that never end, payload
/// beyond the budget (large requests go piece by piece), buffers kept after the load is gone.
/// </summary>
public sealed class ResourceLimitTests
{
    private const int MiB = 1 << 20;
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task ConnectionLimit_ClosesTheConnectionOverIt_AndAdmitsAgainOnceOneLeaves()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(1 * MiB),
            options: new NbdServerOptions { MaxConnections = 2 });
        RawNbdClient first = await harness.ConnectAsync();
        await using RawNbdClient second = await harness.ConnectAsync();
        await first.HandshakeAsync();
        await second.HandshakeAsync();

        await using (RawNbdClient refused = await harness.ConnectAsync())
        {
            Assert.True(await refused.IsClosedByServerAsync(), "the connection over the limit was not closed");
        }
        Assert.Contains(harness.Log, line => line.Contains("connection refused: already serving the maximum of 2 connections"));

        await first.DisposeAsync();
        await PollAsync(() => harness.Server.ConnectionCount == 1, "the server did not notice the client leaving");
        await using RawNbdClient third = await harness.ConnectAsync();
        await third.HandshakeAsync();
        await third.SendRequestAsync(CmdFlush, 7, 0, 0);
        RawNbdClient.Reply reply = await third.ReadReplyAsync();
        Assert.Equal((7ul, 0u), (reply.Handle, reply.Error));
    }

    [Fact]
    public async Task ConnectionLimit_RefusalsAreLoggedAtMostOnceASecond()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(1 * MiB),
            options: new NbdServerOptions { MaxConnections = 1 });
        await using RawNbdClient held = await harness.ConnectAsync();
        await held.ReadGreetingAsync();
        for (int i = 0; i < 50; i++)
        {
            await using RawNbdClient refused = await harness.ConnectAsync();
            Assert.True(await refused.IsClosedByServerAsync());
        }
        // 50 refusals in well under the few seconds this takes: a line per second at most, not one each.
        Assert.InRange(harness.Log.Count(line => line.Contains("refused")), 1, 10);
    }

    [Fact]
    public async Task HandshakeTimeout_ClosesASilentClient_AndSparesNegotiatedOnes()
    {
        // Long enough for a first handshake on a loaded machine, JIT included.
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(1 * MiB),
            options: new NbdServerOptions { HandshakeTimeout = TimeSpan.FromSeconds(2) });
        await using RawNbdClient negotiated = await harness.ConnectAsync();
        await negotiated.HandshakeAsync();

        await using RawNbdClient silent = await harness.ConnectAsync();
        await silent.ReadGreetingAsync();
        Assert.True(await silent.IsClosedByServerAsync(), "a client that never negotiated was not closed");
        Assert.Contains(harness.Log, line => line.Contains("handshake not finished within 2 s, closing"));

        // The timeout has passed for the negotiated client too, which must still be served.
        await negotiated.SendRequestAsync(CmdFlush, 1, 0, 0);
        Assert.Equal(0u, (await negotiated.ReadReplyAsync()).Error);
    }

    [Fact]
    public async Task HandshakeTimeout_ClosesAClientStuckHalfwayThroughAnOption()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(1 * MiB),
            options: new NbdServerOptions { HandshakeTimeout = TimeSpan.FromMilliseconds(300) });
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(3);
        byte[] header = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(header, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), OptGo);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), 100);
        await client.SendAsync(header);
        await client.SendAsync(new byte[10]);
        Assert.True(await client.IsClosedByServerAsync());
    }

    /// <summary>
    /// The abuse that took the server to 1.6 GB: 48 clients each announce a 32 MiB WRITE, send part of it
    /// and stall. Each now holds one piece, and the pool never has more than its budget out.
    /// </summary>
    [Fact]
    public async Task StalledLargeWrites_HoldOnePieceEach_NeverMoreThanTheBudget_AndDoNotBlockOthers()
    {
        const int Clients = 48;
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(64 * MiB, blockSize: 65536));
        PayloadPool pool = harness.Server.PayloadPool;
        int piece = harness.Server.ReceivePieceSize;
        long budget = new NbdServerOptions().MaxServerInFlightBytes;
        var stalled = new List<RawNbdClient>();
        try
        {
            for (int i = 0; i < Clients; i++)
            {
                RawNbdClient client = await harness.ConnectAsync();
                stalled.Add(client);
                await client.HandshakeAsync(structured: false);
                // A piece and a half: the first piece is written to the device, the second stays half full.
                await client.SendRequestAsync(CmdWrite, (ulong)i, 0, 32 * MiB, 0, new byte[piece * 3 / 2]);
            }
            await PollAsync(() => pool.RentedBytes == (long)Clients * piece, $"48 stalled writes did not each hold one piece; {pool.RentedBytes} bytes rented");
            Assert.InRange(pool.PeakRentedBytes, 0, budget);

            // Another client is served meanwhile, a large request included.
            await using RawNbdClient other = await harness.ConnectAsync();
            await other.HandshakeAsync(structured: false);
            byte[] data = RandomData(3 * MiB + 5, seed: 1);
            await other.SendRequestAsync(CmdWrite, 1, 40 * MiB, (uint)data.Length, 0, data);
            Assert.Equal(0u, (await other.ReadReplyAsync()).Error);
            await other.SendRequestAsync(CmdRead, 2, 40 * MiB, (uint)data.Length);
            RawNbdClient.Reply reply = await other.ReadReplyAsync(_ => data.Length);
            Assert.Equal(data, reply.Payload);
            Assert.InRange(pool.PeakRentedBytes, 0, budget);
        }
        finally
        {
            foreach (RawNbdClient client in stalled)
            {
                await client.DisposeAsync();
            }
        }
        await PollAsync(() => pool.RentedBytes == 0, "the stalled clients' pieces were not returned when they left");
        // And, with no large request since, unmapped within two trim intervals.
        await PollAsync(() => pool.RetainedBytes == 0, $"{pool.RetainedBytes} bytes still mapped after the load was gone");
    }

    [Fact]
    public async Task UnreadLargeReads_HoldOnePieceEach()
    {
        const int Clients = 16;
        var device = new MemoryBlockDevice(32 * MiB, blockSize: 65536);
        // Data, not zeros: structured replies would send zeros as small hole chunks.
        await device.WriteAsync(0, RandomData(32 * MiB, seed: 4));
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        PayloadPool pool = harness.Server.PayloadPool;
        var clients = new List<RawNbdClient>();
        try
        {
            for (int i = 0; i < Clients; i++)
            {
                RawNbdClient client = await harness.ConnectAsync();
                clients.Add(client);
                await client.HandshakeAsync(structured: i % 2 == 0);
                await client.SendRequestAsync(CmdRead, 1, 0, 32 * MiB);
            }
            // Each reply is stuck in a full socket buffer with one piece behind it.
            await PollAsync(() => pool.RentedBytes == (long)Clients * pool.PieceSize, $"{pool.RentedBytes} bytes rented");
            Assert.Equal((long)Clients * pool.PieceSize, pool.PeakRentedBytes);
        }
        finally
        {
            foreach (RawNbdClient client in clients)
            {
                await client.DisposeAsync();
            }
        }
        await PollAsync(() => pool.RentedBytes == 0, "the unread replies' pieces were not returned when the clients left");
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task LargeRead_SentInPieces_ReadsBackByteExact(bool structured, bool dontFragment)
    {
        var device = new MemoryBlockDevice(40 * MiB, blockSize: 65536);
        byte[] content = RandomData(40 * MiB, seed: 2);
        // Holes inside pieces and across piece boundaries, which structured replies send as hole chunks.
        content.AsSpan(3 * 65536, 65536).Clear();
        content.AsSpan(1 * MiB - 65536, 3 * 65536).Clear();
        await device.WriteAsync(0, content);
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured);

        const ulong Offset = 12345;
        const int Length = 32 * MiB - 777;
        await client.SendRequestAsync(CmdRead, 9, Offset, Length, dontFragment ? FlagDf : (ushort)0);
        byte[] data;
        if (structured)
        {
            List<RawNbdClient.Reply> chunks = await client.ReadStructuredReplyAsync(9);
            data = AssembleRead(chunks, Offset, Length);
            Assert.True(dontFragment ? chunks.Count == 1 : chunks.Count > Length / harness.Server.PayloadPool.PieceSize,
                $"{chunks.Count} chunks");
        }
        else
        {
            data = (await client.ReadReplyAsync(_ => Length)).Payload;
        }
        Assert.True(content.AsSpan((int)Offset, Length).SequenceEqual(data), "the data read back differs");
        Assert.InRange(harness.Server.PayloadPool.PeakRentedBytes, 1, harness.Server.PayloadPool.PieceSize);
    }

    [Fact]
    public async Task LargeWrite_ReceivedInPieces_IsStoredByteExact_AndFuaFlushesOnce()
    {
        var device = new MemoryBlockDevice(40 * MiB, blockSize: 65536);
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        byte[] data = RandomData(32 * MiB - 3, seed: 3);
        await client.SendRequestAsync(CmdWrite, 4, 4099, (uint)data.Length, FlagFua, data);
        Assert.Equal(0u, (await client.ReadReplyAsync()).Error);
        Assert.True(device.Snapshot().AsSpan(4099, data.Length).SequenceEqual(data), "the data stored differs");
        Assert.Equal(1, device.FlushCount);
        Assert.InRange(harness.Server.PayloadPool.PeakRentedBytes, 1, harness.Server.ReceivePieceSize);
    }

    [Fact]
    public async Task LargeWrite_FailingHalfway_RepliesWithTheError_AndTheConnectionGoesOn()
    {
        var device = new MemoryBlockDevice(40 * MiB, blockSize: 65536)
        {
            BeforeOperation = (op, offset, _) => op == "write" && offset >= 2 * MiB
                ? throw new IOException("injected write failure")
                : ValueTask.CompletedTask,
        };
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        await client.SendRequestAsync(CmdWrite, 5, 0, 8 * MiB, 0, new byte[8 * MiB]);
        RawNbdClient.Reply reply = await client.ReadReplyAsync();
        Assert.Equal((5ul, EIO), (reply.Handle, reply.Error));
        await client.SendRequestAsync(CmdWrite, 6, 0, 4096, 0, new byte[4096]);
        reply = await client.ReadReplyAsync();
        Assert.Equal((6ul, 0u), (reply.Handle, reply.Error));
    }

    [Fact]
    public async Task LargeRead_FailingAfterTheSimpleReplyHeader_ClosesTheConnection()
    {
        var device = new MemoryBlockDevice(40 * MiB, blockSize: 65536)
        {
            BeforeOperation = (op, offset, _) => op == "read" && offset >= 1 * MiB
                ? throw new IOException("injected read failure")
                : ValueTask.CompletedTask,
        };
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        await client.SendRequestAsync(CmdRead, 8, 0, 4 * MiB);
        byte[] header = await client.ReadExactlyAsync(16);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4)));
        // The first megabyte was read and sent; what follows can only be the end of the connection.
        await client.ReadExactlyAsync(1 * MiB);
        Assert.True(await client.IsClosedByServerAsync(), "the connection stayed open after a failure inside a simple reply's data");
        Assert.Contains(harness.Log, line => line.Contains("after its reply header was sent; closing the connection"));
    }

    [Fact]
    public async Task LargeRead_FailingAfterSomeChunks_EndsWithAnErrorChunk()
    {
        var device = new MemoryBlockDevice(40 * MiB, blockSize: 65536)
        {
            BeforeOperation = (op, offset, _) => op == "read" && offset >= 1 * MiB
                ? throw new IOException("injected read failure")
                : ValueTask.CompletedTask,
        };
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync();
        await client.SendRequestAsync(CmdRead, 8, 0, 4 * MiB);
        List<RawNbdClient.Reply> chunks = await client.ReadStructuredReplyAsync(8);
        Assert.Equal(EIO, chunks[^1].ErrorCode);
        Assert.All(chunks[..^1], chunk => Assert.Equal(0u, chunk.ErrorCode));
        await client.SendRequestAsync(CmdFlush, 9, 0, 0);
        Assert.Equal(0u, (await client.ReadReplyAsync()).Error);
    }

    [Fact]
    public async Task PayloadPool_UnmapsItsBuffers_OnceNoLargeOneWasRentedForAWhile()
    {
        using var pool = new PayloadPool(4 * MiB, 1 * MiB, trimInterval: TimeSpan.FromMilliseconds(50));
        PayloadBuffer large = await pool.RentAsync(1 * MiB, CancellationToken.None);
        PayloadBuffer medium = await pool.RentAsync(200_000, CancellationToken.None);
        large.Memory.Span.Fill(1);
        pool.Return(large);
        pool.Return(medium);
        Assert.Equal(1 * MiB + 256 * 1024, pool.RetainedBytes);
        Assert.Equal(0, pool.RentedBytes);
        await PollAsync(() => pool.RetainedBytes == 0, "buffers kept after the pool went idle");
    }

    [Fact]
    public async Task PayloadPool_WaitsForBudget_AndMakesRoomByUnmappingOtherSizes()
    {
        using var pool = new PayloadPool(1 * MiB, 1 * MiB);
        PayloadBuffer half = await pool.RentAsync(512 * 1024, CancellationToken.None);
        ValueTask<PayloadBuffer> whole = pool.RentAsync(1 * MiB, CancellationToken.None);
        Assert.False(whole.IsCompleted);
        pool.Return(half);
        // The returned half is kept for reuse, yet the whole-budget buffer gets its room.
        PayloadBuffer buffer = await whole.AsTask().WaitAsync(s_timeout);
        Assert.Equal(1 * MiB, buffer.Capacity);
        Assert.Equal(0, pool.RetainedBytes);
        pool.Return(buffer);
        Assert.Equal(1 * MiB, pool.PeakRentedBytes);
    }

    private static byte[] RandomData(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static async Task PollAsync(Func<bool> condition, string message)
    {
        var deadline = DateTime.UtcNow + s_timeout;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, message);
            await Task.Delay(10);
        }
    }
}
