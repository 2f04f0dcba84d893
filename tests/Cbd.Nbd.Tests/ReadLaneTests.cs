using System.Buffers.Binary;
using System.Collections.Concurrent;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>
/// Bursts of small READs: served by the connection's reader and its read lane together, whole and each with its own
/// data, whatever the in-flight limits and however the reads wait.
/// </summary>
public sealed class ReadLaneTests
{
    private const int BlockSize = 4096;
    private const int Blocks = 64;
    private const string LanePrefix = "cbd read lane";

    /// <summary>A device whose every block holds its own pattern, recording which thread started each read.</summary>
    private static (MemoryBlockDevice Device, ConcurrentBag<string> Threads) PatternDevice(Func<ValueTask>? beforeRead = null)
    {
        var threads = new ConcurrentBag<string>();
        var device = new MemoryBlockDevice(Blocks * BlockSize, BlockSize)
        {
            BeforeOperation = async (op, _, _) =>
            {
                if (op == "read")
                {
                    threads.Add(Thread.CurrentThread.Name ?? "");
                    if (beforeRead is not null)
                    {
                        await beforeRead();
                    }
                }
            },
        };
        for (int block = 0; block < Blocks; block++)
        {
            device.WriteAsync((long)block * BlockSize, Block(block)).AsTask().GetAwaiter().GetResult();
        }
        return (device, threads);
    }

    private static byte[] Block(int block)
    {
        byte[] data = new byte[BlockSize];
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(block * 31 + i / 7 + 1);
        }
        return data;
    }

    /// <summary>READ requests for blocks <c>(i * 7) % Blocks</c>, handle i, all in one buffer, then optionally NBD_CMD_DISC.</summary>
    private static byte[] Burst(int count, bool disconnect)
    {
        byte[] requests = new byte[(count + (disconnect ? 1 : 0)) * 28];
        for (int i = 0; i < count + (disconnect ? 1 : 0); i++)
        {
            Span<byte> request = requests.AsSpan(i * 28, 28);
            BinaryPrimitives.WriteUInt32BigEndian(request, RequestMagic);
            BinaryPrimitives.WriteUInt16BigEndian(request[6..], i < count ? CmdRead : CmdDisc);
            BinaryPrimitives.WriteUInt64BigEndian(request[8..], (ulong)i);
            BinaryPrimitives.WriteUInt64BigEndian(request[16..], i < count ? (ulong)(i * 7 % Blocks * BlockSize) : 0);
            BinaryPrimitives.WriteUInt32BigEndian(request[24..], i < count ? (uint)BlockSize : 0u);
        }
        return requests;
    }

    private static async Task ReadRepliesAsync(RawNbdClient client, int count)
    {
        var seen = new HashSet<ulong>();
        for (int i = 0; i < count; i++)
        {
            Reply reply = await client.ReadReplyAsync(_ => BlockSize).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(0u, reply.Error);
            Assert.True(seen.Add(reply.Handle), $"handle {reply.Handle} answered twice");
            Assert.Equal(Block((int)reply.Handle * 7 % Blocks), reply.Payload);
        }
    }

    [Fact]
    public async Task ReadsSentInOneBurst_AreServedByTheLaneAndTheReader_EachWithItsOwnData()
    {
        var (device, threads) = PatternDevice();
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);

        await client.SendAsync(Burst(40, disconnect: true));
        await ReadRepliesAsync(client, 40);
        Assert.Equal(0, await client.ReadToEndAsync(TimeSpan.FromSeconds(30)));

        Assert.Equal(40, threads.Count);
        Assert.Contains(threads, name => name.StartsWith(LanePrefix, StringComparison.Ordinal));
        Assert.Contains(threads, name => !name.StartsWith(LanePrefix, StringComparison.Ordinal));
    }

    [Fact]
    public async Task ReadsThatWait_InABurstLargerThanTheInFlightLimit_AllComplete()
    {
        // Each read waits (asynchronously, as a read from a disk moved off the lane does); the burst's requests hold
        // the in-flight budget the reader needs for the next ones, so it must serve them before it waits for room.
        var (device, threads) = PatternDevice(async () => await Task.Delay(5));
        await using ServerHarness harness = await ServerHarness.StartAsync(device, options: new NbdServerOptions { MaxInFlightRequests = 4 });
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);

        await client.SendAsync(Burst(60, disconnect: false));
        await ReadRepliesAsync(client, 60);
        Assert.Equal(60, threads.Count);
    }

    [Fact]
    public async Task ADeviceWhoseReadsMayBlock_GetsNoLane()
    {
        var (device, threads) = PatternDevice();
        device.ReadsWithoutWaiting = false;
        await using ServerHarness harness = await ServerHarness.StartAsync(device);
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);

        await client.SendAsync(Burst(40, disconnect: true));
        await ReadRepliesAsync(client, 40);
        Assert.Equal(0, await client.ReadToEndAsync(TimeSpan.FromSeconds(30)));

        Assert.Equal(40, threads.Count);
        Assert.DoesNotContain(threads, name => name.StartsWith(LanePrefix, StringComparison.Ordinal));
    }

    [Fact]
    public void Lane_ServesWhatWasPostedInOrder_ThenEndsOnComplete()
    {
        var served = new List<int>();
        var lane = new ReadLane<int>("test lane", served.Add);
        lane.Post([1, 2, 3]);
        lane.Post([4]);
        lane.Post([5, 6]);
        lane.Complete();
        Assert.True(lane.Join(TimeSpan.FromSeconds(30)));
        Assert.Equal([1, 2, 3, 4, 5, 6], served);
    }
}
