using System.Net.Sockets;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>Misbehaving clients, disconnects and server shutdown: one connection's trouble stays its own.</summary>
public sealed class ConnectionLifecycleTests
{
    private const long DeviceSize = 1 << 20;

    private static async Task AssertServesAsync(ServerHarness harness)
    {
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        await client.SendRequestAsync(CmdWrite, 1, 0, 4, 0, [9, 8, 7, 6]);
        Assert.Equal(0u, (await client.ReadReplyAsync()).Error);
        await client.SendRequestAsync(CmdRead, 2, 0, 4);
        Assert.Equal([9, 8, 7, 6], (await client.ReadReplyAsync(_ => 4)).Payload);
    }

    [Fact]
    public async Task BadRequestMagic_ClosesOnlyThatConnection()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize));
        await using RawNbdClient good = await harness.ConnectAsync();
        await good.HandshakeAsync(structured: true);
        await using RawNbdClient bad = await harness.ConnectAsync();
        await bad.HandshakeAsync(structured: true);

        byte[] garbage = new byte[28];
        garbage.AsSpan().Fill(0x5a);
        await bad.SendAsync(garbage);
        Assert.True(await bad.IsClosedByServerAsync());

        await good.SendRequestAsync(CmdRead, 3, 0, 16);
        Assert.Equal(0u, (await good.ReadStructuredReplyAsync(3))[0].ErrorCode);
        await AssertServesAsync(harness);
    }

    [Theory]
    [InlineData(0)]   // inside the greeting exchange
    [InlineData(1)]   // inside an option
    [InlineData(2)]   // inside a request header
    [InlineData(3)]   // inside a write payload
    public async Task ClientVanishingMidMessage_LeavesTheServerServing(int stage)
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize));
        RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        switch (stage)
        {
            case 0:
                await client.SendAsync(new byte[] { 0, 0 });
                break;
            case 1:
                await client.SendClientFlagsAsync(3);
                await client.SendAsync(new byte[] { 0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, 0, 0, 0, 7, 0, 0, 0, 100, 1, 2 });
                break;
            default:
                await client.DisposeAsync();
                client = await harness.ConnectAsync();
                await client.HandshakeAsync(structured: false);
                await client.SendAsync(stage == 2
                    ? new byte[] { 0x25, 0x60, 0x95, 0x13, 0, 0 }
                    : [0x25, 0x60, 0x95, 0x13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3]);
                break;
        }
        await client.DisposeAsync();
        await AssertServesAsync(harness);
    }

    [Fact]
    public async Task GarbageInsteadOfAnOption_ClosesTheConnection()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize));
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(1);
        await client.SendAsync("GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray());
        Assert.True(await client.IsClosedByServerAsync());
        await AssertServesAsync(harness);
    }

    /// <summary>A device whose writes signal <paramref name="reached"/> and then wait for <paramref name="gate"/>.</summary>
    private static MemoryBlockDevice GatedWrites(TaskCompletionSource reached, Task gate) => new(DeviceSize)
    {
        BeforeOperation = async (op, _, _) =>
        {
            if (op == "write")
            {
                reached.TrySetResult();
                await gate;
            }
        },
    };

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private static async Task WaitForAsync(TaskCompletionSource signal, string what)
    {
        try
        {
            await signal.Task.WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (TimeoutException)
        {
            Assert.Fail($"timed out after 10 s waiting for {what}");
        }
    }

    [Fact]
    public async Task Disconnect_FinishesOutstandingRequestsBeforeClosing()
    {
        TaskCompletionSource gate = NewSignal(), reached = NewSignal();
        MemoryBlockDevice device = GatedWrites(reached, gate.Task);
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        await client.SendRequestAsync(CmdWrite, 5, 0, 3, 0, [1, 2, 3]);
        await client.SendRequestAsync(CmdDisc, 6, 0, 0);
        // The write is held at the device while the server reads the NBD_CMD_DISC behind it.
        await WaitForAsync(reached, "the write to reach the device");
        await Poll.UntilAsync(() => harness.Server.Metrics.Disconnects == 1, TimeSpan.FromSeconds(10), () => "the server to read NBD_CMD_DISC");
        gate.SetResult();
        Reply reply = await client.ReadReplyAsync();
        Assert.Equal((5ul, 0u), (reply.Handle, reply.Error));
        Assert.True(await client.IsClosedByServerAsync());
        Assert.Equal([1, 2, 3], device.Snapshot()[..3]);
    }

    [Fact]
    public async Task Stop_LetsInFlightRequestsFinish_ThenClosesAndRemovesTheSocket()
    {
        TaskCompletionSource gate = NewSignal(), reached = NewSignal();
        ServerHarness harness = await ServerHarness.StartAsync(GatedWrites(reached, gate.Task));
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        await using RawNbdClient idle = await harness.ConnectAsync();
        await idle.ReadGreetingAsync();
        await client.SendRequestAsync(CmdWrite, 5, 0, 3, 0, [1, 2, 3]);
        await WaitForAsync(reached, "the write to reach the device");

        Task stop = harness.Server.StopAsync();
        Assert.False(File.Exists(harness.SocketPath));
        // The idle connection closed: the stop has reached the connections, and waits for the held write.
        Assert.True(await idle.IsClosedByServerAsync());
        Assert.False(stop.IsCompleted);
        gate.SetResult();
        await stop.WaitAsync(TimeSpan.FromSeconds(10));

        Reply reply = await client.ReadReplyAsync();
        Assert.Equal((5ul, 0u), (reply.Handle, reply.Error));
        Assert.True(await client.IsClosedByServerAsync());
        await Assert.ThrowsAsync<SocketException>(() => RawNbdClient.ConnectAsync(harness.SocketPath));
    }

    [Fact]
    public async Task Stop_AfterTheGracePeriod_AbortsStuckRequests()
    {
        TaskCompletionSource never = NewSignal(), reached = NewSignal();
        ServerHarness harness = await ServerHarness.StartAsync(GatedWrites(reached, never.Task),
            options: new NbdServerOptions { ShutdownTimeout = TimeSpan.FromMilliseconds(200) });
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        await client.SendRequestAsync(CmdWrite, 5, 0, 3, 0, [1, 2, 3]);
        await WaitForAsync(reached, "the write to reach the device");
        await harness.Server.StopAsync().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task Start_ReplacesAStaleSocket_ButNotALiveOneNorAFile()
    {
        string directory = Path.Combine(Path.GetTempPath(), "cbd-nbd-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(directory);
        try
        {
            string path = Path.Combine(directory, "s.sock");
            using (var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                // .NET unlinks the path of a socket it bound when disposing it; moving the file away first
                // leaves the socket file behind the way a crashed server does.
                string bound = path + ".bound";
                stale.Bind(new UnixDomainSocketEndPoint(bound));
                File.Move(bound, path);
            }
            Assert.True(File.Exists(path));

            await using var first = new NbdServer(new MemoryBlockDevice(DeviceSize));
            await first.StartAsync(new UnixDomainSocketEndPoint(path));
            await using var second = new NbdServer(new MemoryBlockDevice(DeviceSize));
            IOException live = await Assert.ThrowsAsync<IOException>(() => second.StartAsync(new UnixDomainSocketEndPoint(path)));
            Assert.Contains("in use", live.Message);

            string file = Path.Combine(directory, "data");
            await File.WriteAllTextAsync(file, "precious");
            IOException notSocket = await Assert.ThrowsAsync<IOException>(() => second.StartAsync(new UnixDomainSocketEndPoint(file)));
            Assert.Contains("not a socket", notSocket.Message);
            Assert.Equal("precious", await File.ReadAllTextAsync(file));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task Tcp_ServesOnLoopbackWithAnEphemeralPort()
    {
        var device = new MemoryBlockDevice(DeviceSize);
        await using var server = new NbdServer(device, "tcp");
        var bound = (System.Net.IPEndPoint)await server.StartAsync(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        Assert.NotEqual(0, bound.Port);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(bound);
        using var stream = new NetworkStream(socket);
        byte[] greeting = new byte[18];
        await stream.ReadExactlyAsync(greeting);
        Assert.Equal("NBDMAGIC"u8.ToArray(), greeting[..8]);
    }
}
