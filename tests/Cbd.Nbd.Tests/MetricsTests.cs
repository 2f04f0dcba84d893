using Cbd.Nbd.Protocol;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary><see cref="NbdServer.Metrics"/>: what a monitoring scrape reports, counted from real requests on a real socket.</summary>
public sealed class MetricsTests
{
    private const long DeviceSize = 4 << 20;
    private const ulong FailingOffset = 12 << 10;

    [Fact]
    public async Task Requests_AreCountedByCommand_WithTheirBytesErrorsAndLatency()
    {
        var device = new MemoryBlockDevice(DeviceSize)
        {
            BeforeOperation = (op, offset, _) => op == "write" && offset == (long)FailingOffset
                ? throw new IOException("injected write failure")
                : ValueTask.CompletedTask,
        };
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        NbdMetrics metrics = harness.Server.Metrics;
        await using (RawNbdClient client = await harness.ConnectAsync())
        {
            await client.HandshakeAsync(structured: false);
            Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 0, 4096, payload: new byte[4096]));
            // Larger than a receive piece (256 KiB here): received and written piece by piece, still one request.
            Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 1 << 20, 512 << 10, payload: new byte[512 << 10]));
            Assert.Equal(EIO, await client.RoundTripAsync(CmdWrite, FailingOffset, 4096, payload: new byte[4096]));
            await client.SendRequestAsync(CmdRead, 5, 0, 8192);
            Assert.Equal(0u, (await client.ReadReplyAsync(_ => 8192)).Error);
            Assert.Equal(0u, await client.RoundTripAsync(CmdFlush, 0, 0));
            Assert.Equal(0u, await client.RoundTripAsync(CmdTrim, 4096, 4096));
            Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 8192, 4096));
            Assert.Equal(0u, await client.RoundTripAsync(CmdCache, 0, 65536));
            // Past the end: refused before the device.
            Assert.Equal(EInval, await client.RoundTripAsync(CmdRead, DeviceSize, 4096));
            Assert.Equal(1, metrics.Connections);
            await client.SendRequestAsync(CmdDisc, 99, 0, 0);
            Assert.True(await client.IsClosedByServerAsync());
        }
        // A request is counted once its reply is out, so the client may see the reply first; the connection ends after.
        await Poll.UntilAsync(() => metrics.ConnectionsClosed == 1, TimeSpan.FromSeconds(10), () => "the connection to be counted closed");

        Assert.Equal((3, 1, 4096L + (512 << 10)), Totals(metrics[NbdCommand.Write]));
        Assert.Equal((1, 0, 8192L), Totals(metrics[NbdCommand.Read]));
        Assert.Equal((1, 0, 0L), Totals(metrics[NbdCommand.Flush]));
        Assert.Equal((1, 0, 4096L), Totals(metrics[NbdCommand.Trim]));
        Assert.Equal((1, 0, 4096L), Totals(metrics[NbdCommand.WriteZeroes]));
        Assert.Equal((1, 0, 65536L), Totals(metrics[NbdCommand.Cache]));
        Assert.Equal((0, 0, 0L), Totals(metrics[NbdCommand.BlockStatus]));
        foreach (NbdCommand command in NbdMetrics.Commands)
        {
            Assert.Equal(metrics[command].Requests, metrics[command].Latency.Snapshot().Count);
        }
        Assert.Equal(1, metrics.RequestsRefused);
        Assert.Equal((1L, 1L, 0L, 1L), (metrics.ConnectionsOpened, metrics.Disconnects, metrics.Connections, metrics.ConnectionsClosed));
    }

    [Fact]
    public async Task ConnectionsOverTheLimit_AreCountedRefused_AndTheGaugeFollowsOpenConnections()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize), options: new NbdServerOptions { MaxConnections = 1 });
        NbdMetrics metrics = harness.Server.Metrics;
        await using RawNbdClient first = await harness.ConnectAsync();
        await first.ReadGreetingAsync();
        Assert.Equal(1, metrics.Connections);
        await using (RawNbdClient second = await harness.ConnectAsync())
        {
            Assert.True(await second.IsClosedByServerAsync());
        }
        Assert.Equal(1, metrics.ConnectionsRefused);
        Assert.Equal(1, metrics.Connections);

        await first.DisposeAsync();
        await Poll.UntilAsync(() => metrics.Connections == 0, TimeSpan.FromSeconds(10), () => "the closed connection to leave the gauge");
        Assert.Equal((1L, 1L, 0L), (metrics.ConnectionsOpened, metrics.ConnectionsClosed, metrics.Disconnects));
    }

    private static (long Requests, long Errors, long Bytes) Totals(NbdMetrics.CommandCounters counters) => (counters.Requests, counters.Errors, counters.Bytes);
}
