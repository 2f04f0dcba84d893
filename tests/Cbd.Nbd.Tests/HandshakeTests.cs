using System.Buffers.Binary;
using System.Text;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>Option haggling, byte by byte, against a raw client.</summary>
public sealed class HandshakeTests
{
    private const long DeviceSize = 1 << 20;

    private static Task<ServerHarness> StartAsync(bool readOnly = false, string name = "disk", string? description = "test disk")
        => ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize), name, readOnly, description);

    private static async Task<RawNbdClient> ConnectNegotiatingAsync(ServerHarness harness)
    {
        RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(3);
        return client;
    }

    [Fact]
    public async Task Greeting_IsNbdMagicIHaveOptAndFixedNewstyleNoZeroes()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await harness.ConnectAsync();
        byte[] greeting = await client.ReadExactlyAsync(18);
        Assert.Equal(Convert.FromHexString("4E42444D41474943" + "49484156454F5054" + "0003"), greeting);
    }

    [Fact]
    public async Task UnknownClientFlag_ClosesConnection()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(1 | 4);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Theory]
    [InlineData(3u, 10)]
    [InlineData(1u, 134)]
    [InlineData(0u, 134)]
    public async Task ExportName_RepliesSizeFlagsAndZeroesUnlessNoZeroes(uint clientFlags, int replyLength)
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(clientFlags);
        await client.SendOptionAsync(OptExportName, "disk"u8);
        byte[] reply = await client.ReadExactlyAsync(replyLength);
        Assert.Equal((ulong)DeviceSize, BinaryPrimitives.ReadUInt64BigEndian(reply));
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(8));
        Assert.Equal(0b0000_1101_0110_1101, flags); // HAS_FLAGS FLUSH FUA TRIM WRITE_ZEROES MULTI_CONN CACHE FAST_ZERO
        Assert.All(reply[10..], b => Assert.Equal(0, b));

        // Transmission works straight away: a FLUSH gets a simple reply.
        await client.SendRequestAsync(CmdFlush, 7, 0, 0);
        Reply flush = await client.ReadReplyAsync();
        Assert.True(flush.IsSimple);
        Assert.Equal((7ul, 0u), (flush.Handle, flush.Error));
    }

    [Fact]
    public async Task ExportName_OfUnknownExport_ClosesConnection()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptExportName, "nope"u8);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task List_ReturnsTheExportThenAck_AndRejectsData()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptList, []);
        List<OptionReply> replies = await client.ReadOptionRepliesAsync();
        Assert.Equal([RepServer, RepAck], replies.Select(r => r.Type));
        Assert.All(replies, r => Assert.Equal(OptList, r.Option));
        byte[] server = replies[0].Data;
        Assert.Equal(4u, BinaryPrimitives.ReadUInt32BigEndian(server));
        Assert.Equal("disk", Encoding.UTF8.GetString(server, 4, 4));
        Assert.Equal("test disk", Encoding.UTF8.GetString(server, 8, server.Length - 8));

        await client.SendOptionAsync(OptList, [1]);
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task Info_ReportsExportBlockSizeNameAndDescription_ThenGoEntersTransmission()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptInfo, InfoRequest("", 1, 2, 3, 0x7777));
        List<OptionReply> replies = await client.ReadOptionRepliesAsync();
        Assert.Equal(RepAck, replies[^1].Type);
        var infos = replies.Where(r => r.Type == RepInfo).ToDictionary(r => BinaryPrimitives.ReadUInt16BigEndian(r.Data), r => r.Data);
        Assert.Equal(new ushort[] { 0, 1, 2, 3 }, infos.Keys.Order());

        byte[] export = infos[0];
        Assert.Equal(12, export.Length);
        Assert.Equal((ulong)DeviceSize, BinaryPrimitives.ReadUInt64BigEndian(export.AsSpan(2)));
        Assert.Equal("disk", Encoding.UTF8.GetString(infos[1], 2, infos[1].Length - 2));
        Assert.Equal("test disk", Encoding.UTF8.GetString(infos[2], 2, infos[2].Length - 2));
        byte[] blockSize = infos[3];
        Assert.Equal(14, blockSize.Length);
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(blockSize.AsSpan(2)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(blockSize.AsSpan(6)));
        Assert.Equal(32u << 20, BinaryPrimitives.ReadUInt32BigEndian(blockSize.AsSpan(10)));

        await client.SendOptionAsync(OptGo, InfoRequest("disk"));
        replies = await client.ReadOptionRepliesAsync();
        Assert.Equal(RepAck, replies[^1].Type);
        Assert.DoesNotContain(replies, r => r.Type == RepInfo && BinaryPrimitives.ReadUInt16BigEndian(r.Data) is 1 or 2);
        await client.SendRequestAsync(CmdRead, 1, 0, 512);
        Reply read = await client.ReadReplyAsync(_ => 512);
        Assert.Equal(0u, read.Error);
        Assert.Equal(new byte[512], read.Payload);
    }

    [Fact]
    public async Task InfoAndGo_OfUnknownExport_AreErrUnknown_AndNegotiationGoesOn()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptInfo, InfoRequest("other"));
        Assert.Equal(RepErrUnknown, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(OptGo, InfoRequest("other"));
        Assert.Equal(RepErrUnknown, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(OptGo, InfoRequest("disk"));
        Assert.Equal(RepAck, (await client.ReadOptionRepliesAsync())[^1].Type);
    }

    public static TheoryData<byte[]> MalformedInfoRequests => new()
    {
        { Array.Empty<byte>() },
        { Convert.FromHexString("0000000A" + "0000") },                  // name longer than the data
        { Convert.FromHexString("00000000" + "0002" + "0001") },          // two requests announced, one sent
        { Convert.FromHexString("00000000" + "0000" + "00") },            // trailing byte
    };

    [Theory]
    [MemberData(nameof(MalformedInfoRequests))]
    public async Task Info_WithInconsistentLengths_IsErrInvalid(byte[] data)
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptInfo, data);
        OptionReply reply = await client.ReadOptionReplyAsync();
        Assert.Equal((OptInfo, RepErrInvalid), (reply.Option, reply.Type));
    }

    [Theory]
    [InlineData(OptStartTls)]
    [InlineData(OptExtendedHeaders)]
    [InlineData(4u)]
    [InlineData(0x1234u)]
    public async Task UnsupportedOption_IsErrUnsup_AndNegotiationGoesOn(uint option)
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(option, [1, 2, 3]);
        OptionReply reply = await client.ReadOptionReplyAsync();
        Assert.Equal((option, RepErrUnsup), (reply.Option, reply.Type));
        await client.SendOptionAsync(OptGo, InfoRequest(""));
        Assert.Equal(RepAck, (await client.ReadOptionRepliesAsync())[^1].Type);
    }

    [Fact]
    public async Task OptionLongerThanTheCap_IsSkippedAndRefusedWithErrTooBig()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptInfo, new byte[(64 << 10) + 1]);
        Assert.Equal(RepErrTooBig, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(OptGo, InfoRequest(""));
        Assert.Equal(RepAck, (await client.ReadOptionRepliesAsync())[^1].Type);
    }

    [Fact]
    public async Task Abort_IsAcknowledgedThenClosed()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptAbort, []);
        Assert.Equal(RepAck, (await client.ReadOptionReplyAsync()).Type);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task StructuredReply_WithData_IsErrInvalid()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptStructuredReply, [0]);
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task SetMetaContext_BeforeStructuredReplies_IsErrInvalid()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptSetMetaContext, MetaContextRequest("disk", "base:allocation"));
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
    }

    [Theory]
    [InlineData(OptListMetaContext, new string[0], true)]
    [InlineData(OptListMetaContext, new[] { "base:" }, true)]
    [InlineData(OptListMetaContext, new[] { "base:allocation" }, true)]
    [InlineData(OptListMetaContext, new[] { "qemu:dirty-bitmap:x", "base:nothing" }, false)]
    [InlineData(OptSetMetaContext, new[] { "base:allocation", "base:allocation" }, true)]
    [InlineData(OptSetMetaContext, new[] { "x-other:thing", "base:allocation" }, true)]
    [InlineData(OptSetMetaContext, new[] { "base:" }, false)]
    [InlineData(OptSetMetaContext, new string[0], false)]
    public async Task MetaContext_QueriesSelectOnlyBaseAllocation(uint option, string[] queries, bool expectAllocation)
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptStructuredReply, []);
        await client.ReadOptionReplyAsync();
        await client.SendOptionAsync(option, MetaContextRequest("disk", queries));
        List<OptionReply> replies = await client.ReadOptionRepliesAsync();
        Assert.Equal(RepAck, replies[^1].Type);
        OptionReply[] contexts = replies.Where(r => r.Type == RepMetaContext).ToArray();
        Assert.Equal(expectAllocation ? 1 : 0, contexts.Length);
        if (expectAllocation)
        {
            uint id = BinaryPrimitives.ReadUInt32BigEndian(contexts[0].Data);
            Assert.Equal("base:allocation", Encoding.UTF8.GetString(contexts[0].Data, 4, contexts[0].Data.Length - 4));
            Assert.Equal(option == OptListMetaContext, id == 0);
        }
    }

    [Fact]
    public async Task MetaContext_MalformedOrForUnknownExport_IsRefused()
    {
        await using ServerHarness harness = await StartAsync();
        await using RawNbdClient client = await ConnectNegotiatingAsync(harness);
        await client.SendOptionAsync(OptStructuredReply, []);
        await client.ReadOptionReplyAsync();
        await client.SendOptionAsync(OptSetMetaContext, MetaContextRequest("disk", "no-colon"));
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
        byte[] truncated = MetaContextRequest("disk", "base:allocation")[..^3];
        await client.SendOptionAsync(OptListMetaContext, truncated);
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
        await client.SendOptionAsync(OptSetMetaContext, MetaContextRequest("other", "base:allocation"));
        Assert.Equal(RepErrUnknown, (await client.ReadOptionReplyAsync()).Type);
    }

    [Theory]
    [InlineData(false, false, 0b0000_1101_0110_1101)]
    [InlineData(false, true, 0b0000_1101_1110_1101)]          // + SEND_DF once structured replies are on
    [InlineData(true, true, 0b0000_0101_1000_0111)]           // READ_ONLY; no FUA, TRIM, WRITE_ZEROES, FAST_ZERO
    public async Task TransmissionFlags_AdvertiseOnlyWhatIsImplemented(bool readOnly, bool structured, int expected)
    {
        await using ServerHarness harness = await StartAsync(readOnly);
        await using RawNbdClient client = await harness.ConnectAsync();
        (ulong size, ushort flags) = await client.HandshakeAsync(structured, allocationContext: false, name: "disk");
        Assert.Equal((ulong)DeviceSize, size);
        Assert.Equal(expected, flags);
    }

    [Fact]
    public async Task ReadOnlyDevice_IsAdvertisedReadOnly()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize, readOnly: true));
        await using RawNbdClient client = await harness.ConnectAsync();
        (_, ushort flags) = await client.HandshakeAsync(structured: false);
        Assert.NotEqual(0, flags & 2);
    }
}
