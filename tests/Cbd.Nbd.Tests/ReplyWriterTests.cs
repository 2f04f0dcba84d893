using System.Buffers.Binary;
using System.Text;
using Cbd.Core.Engine;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd.Tests;

/// <summary>
/// The bytes <see cref="ReplyWriter"/> sends, written into a buffer instead of a socket and read back field by
/// field as doc/proto.md lays them out (the numbers below are the spec's, not the code's constants).
/// </summary>
public sealed class ReplyWriterTests
{
    private const uint SimpleReplyMagic = 0x67446698;
    private const uint StructuredReplyMagic = 0x668e33ef;
    private const ulong OptionReplyMagic = 0x0003e889045565a9;

    /// <summary>A stream that keeps each write apart, to count the writes a reply takes.</summary>
    private sealed class RecordingStream : MemoryStream
    {
        public List<int> Writes { get; } = [];

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Writes.Add(buffer.Length);
            return base.WriteAsync(buffer, cancellationToken);
        }
    }

    private static (ReplyWriter Writer, RecordingStream Stream, List<string> Log) Create(bool structured)
    {
        var stream = new RecordingStream();
        var log = new List<string>();
        var writer = new ReplyWriter(new StreamReplyTransport(stream), CancellationToken.None, log.Add, () => { });
        writer.StartTransmission(new Negotiated(structured, AllocationContextSelected: false, NoZeroes: true, Tls: false, NbdTransmissionFlags.HasFlags,
            new BlockSizeConstraints(1, 4096, 32 << 20)));
        return (writer, stream, log);
    }

    [Fact]
    public async Task SimpleReply_IsMagicErrorHandle()
    {
        var (writer, stream, _) = Create(structured: false);
        await writer.SendSimpleReplyAsync(0x1122334455667788, NbdError.NoSpace);
        byte[] bytes = stream.ToArray();
        Assert.Equal(16, bytes.Length);
        Assert.Equal(SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes));
        Assert.Equal(28u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(4)));
        Assert.Equal(0x1122334455667788ul, BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(8)));
    }

    [Fact]
    public async Task Error_WithoutStructuredReplies_IsASimpleReply()
    {
        var (writer, stream, _) = Create(structured: false);
        await writer.SendErrorAsync(7, NbdError.Invalid, "bad flags");
        byte[] bytes = stream.ToArray();
        Assert.Equal(16, bytes.Length);
        Assert.Equal(SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes));
        Assert.Equal(22u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(4)));
    }

    [Fact]
    public async Task Error_WithStructuredReplies_IsAnErrorChunkWithItsMessage()
    {
        var (writer, stream, _) = Create(structured: true);
        await writer.SendErrorAsync(9, NbdError.IO, "disk on fire");
        byte[] bytes = stream.ToArray();
        Assert.Equal(StructuredReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(4)));           // NBD_REPLY_FLAG_DONE
        Assert.Equal(0x8001, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(6)));      // NBD_REPLY_TYPE_ERROR
        Assert.Equal(9ul, BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(8)));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(16));
        Assert.Equal(20 + (int)length, bytes.Length);
        Assert.Equal(5u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(20)));
        Assert.Equal(12, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(24)));
        Assert.Equal("disk on fire", Encoding.UTF8.GetString(bytes.AsSpan(26)));
    }

    [Fact]
    public async Task Error_WithALongMessage_IsCutToFitOneChunk()
    {
        var (writer, stream, _) = Create(structured: true);
        await writer.SendErrorAsync(9, NbdError.IO, new string('x', 10_000));
        byte[] bytes = stream.ToArray();
        int messageLength = BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(24));
        Assert.Equal(ReplyWriter.MaxErrorMessageLength, messageLength);
        Assert.Equal(ReplyWriter.ScratchSize, bytes.Length);
        Assert.True(messageLength <= NbdLimits.MaxStringLength);
    }

    [Fact]
    public async Task ReadChunks_AreDataAndHoleChunks_TheLastOneDone()
    {
        var (writer, stream, _) = Create(structured: true);
        byte[] data = new byte[8192];
        data.AsSpan(0, 4096).Fill(0xab);
        NbdConnection.ReadRun[] runs = [new(0, 4096, false), new(4096, 4096, true)];
        await writer.SendReadChunksAsync(5, 1 << 20, data, runs, 2, last: true);
        byte[] bytes = stream.ToArray();

        Assert.Equal(StructuredReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes));
        Assert.Equal(0, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(4)));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(6)));           // NBD_REPLY_TYPE_OFFSET_DATA
        Assert.Equal(8u + 4096, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(16)));
        Assert.Equal(1ul << 20, BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(20)));
        Assert.True(bytes.AsSpan(28, 4096).IndexOfAnyExcept((byte)0xab) < 0);

        int hole = 28 + 4096;
        Assert.Equal(StructuredReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(hole)));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(hole + 4)));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(hole + 6)));    // NBD_REPLY_TYPE_OFFSET_HOLE
        Assert.Equal(12u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(hole + 16)));
        Assert.Equal((1ul << 20) + 4096, BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(hole + 20)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(hole + 28)));
        Assert.Equal(hole + 32, bytes.Length);
    }

    [Fact]
    public async Task HeldReadChunks_LeaveWithTheOtherHeldReplies_AsTheyWouldHaveBeenSent()
    {
        byte[] data = new byte[8192];
        data.AsSpan(0, 4096).Fill(0xab);
        NbdConnection.ReadRun[] runs = [new(0, 4096, false), new(4096, 4096, true)];

        var (direct, directStream, _) = Create(structured: true);
        await direct.SendSimpleReplyAsync(4, NbdError.None);
        await direct.SendReadChunksAsync(5, 1 << 20, data, runs, 2, last: true);

        var (writer, stream, _) = Create(structured: true);
        writer.Hold();
        await writer.SendSimpleReplyAsync(4, NbdError.None);
        await writer.SendReadChunksAsync(5, 1 << 20, data, runs, 2, last: true);
        data.AsSpan().Clear(); // the buffer goes back to its pool once the call returns: the held reply has its own copy
        Assert.Empty(stream.Writes);
        await writer.ReleaseAsync();
        Assert.Single(stream.Writes);
        Assert.Equal(directStream.ToArray(), stream.ToArray());
    }

    [Fact]
    public async Task AReadReplyLargerThanTheHeldRoom_GoesOutAfterWhatIsHeld()
    {
        var (writer, stream, _) = Create(structured: true);
        writer.Hold();
        await writer.SendSimpleReplyAsync(4, NbdError.None);
        byte[] data = new byte[ReplyWriter.HeldSize];
        await writer.SendReadChunksAsync(5, 0, data, [new(0, data.Length, false)], 1, last: true);
        // The held reply in a write of its own, then the read as the stream transport writes it (TLS-record sized).
        Assert.Equal(16, stream.Writes[0]);
        Assert.Equal(28 + data.Length, stream.Writes.Skip(1).Sum());
        Assert.Equal(4ul, BinaryPrimitives.ReadUInt64BigEndian(stream.ToArray().AsSpan(8)));
    }

    [Fact]
    public async Task StreamedRead_SendsOneHeaderThenEveryPiece()
    {
        var (writer, stream, _) = Create(structured: false);
        byte[] piece = new byte[1000];
        var offsets = new List<int>();
        await writer.SendStreamedReadAsync(3, 0, 2500, piece, offsets, static (o, done, data) =>
        {
            o.Add(done);
            data.Span.Fill((byte)(done / 1000));
            return ValueTask.FromResult(true);
        });
        byte[] bytes = stream.ToArray();
        Assert.Equal([1000, 2000], offsets);
        Assert.Equal(16 + 2500, bytes.Length);
        Assert.Equal(SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(4)));
        Assert.Equal(2, bytes[16 + 2499]);
    }

    [Fact]
    public async Task OptionReply_IsMagicOptionTypeLengthPayload()
    {
        var (writer, stream, _) = Create(structured: false);
        await writer.SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.ErrTlsReqd, "hi"u8.ToArray());
        byte[] bytes = stream.ToArray();
        Assert.Equal(OptionReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(bytes));
        Assert.Equal(5u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(8)));
        Assert.Equal(0x80000005u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(12)));
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(16)));
        Assert.Equal("hi", Encoding.ASCII.GetString(bytes.AsSpan(20)));
    }

    [Theory]
    [InlineData(4096, new[] { 16 + 4096 })]
    [InlineData(64 << 10, new[] { 16 << 10, (64 << 10) + 16 - (16 << 10) })]
    public async Task StreamTransport_SendsAHeaderInTheWriteOfItsPayload(int payloadLength, int[] writes)
    {
        var stream = new RecordingStream();
        var transport = new StreamReplyTransport(stream);
        await transport.SendAsync(new byte[16], new byte[payloadLength], CancellationToken.None);
        Assert.Equal(writes, stream.Writes);
    }

    [Fact]
    public void ErrorFor_MapsDeviceFailuresToTheSpecsErrorValues()
    {
        Assert.Equal(NbdError.Perm, ReplyWriter.ErrorFor(new ReadOnlyDeviceException(), aborting: false));
        Assert.Equal(NbdError.NoSpace, ReplyWriter.ErrorFor(new OutOfSpaceException("full"), aborting: false));
        Assert.Equal(NbdError.NotSupported, ReplyWriter.ErrorFor(new ProvisioningNotSupportedException("no"), aborting: false));
        Assert.Equal(NbdError.Shutdown, ReplyWriter.ErrorFor(new OperationCanceledException(), aborting: true));
        Assert.Equal(NbdError.IO, ReplyWriter.ErrorFor(new OperationCanceledException(), aborting: false));
        Assert.Equal(NbdError.Invalid, ReplyWriter.ErrorFor(new ArgumentException("bad"), aborting: false));
        Assert.Equal(NbdError.IO, ReplyWriter.ErrorFor(new IOException("eio"), aborting: false));
        Assert.Equal(NbdError.IO, ReplyWriter.ErrorFor(new InvalidOperationException("bug"), aborting: false));
    }

    [Fact]
    public async Task AFailedSend_MarksTheWriterBroken_AndNothingMoreIsSent()
    {
        var stream = new RecordingStream();
        var log = new List<string>();
        bool stopped = false;
        var writer = new ReplyWriter(new StreamReplyTransport(stream), CancellationToken.None, log.Add, () => stopped = true);
        stream.Close();
        await writer.SendSimpleReplyAsync(1, NbdError.None);
        Assert.True(writer.IsBroken);
        Assert.True(stopped);
        Assert.Single(log);
        await writer.SendSimpleReplyAsync(2, NbdError.None);
        Assert.Single(log);
    }
    [Fact]
    public async Task HeldSimpleReplies_LeaveTogether_WhenReleased()
    {
        var (writer, stream, _) = Create(structured: true);
        writer.Hold();
        for (ulong handle = 1; handle <= 5; handle++)
        {
            await writer.SendSimpleReplyAsync(handle, NbdError.None);
        }
        Assert.Empty(stream.Writes);
        await writer.ReleaseAsync();
        Assert.Equal([5 * 16], stream.Writes);
        byte[] bytes = stream.ToArray();
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(SimpleReplyMagic, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(i * 16)));
            Assert.Equal((ulong)i + 1, BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(i * 16 + 8)));
        }

        // Released, a reply goes out at once.
        await writer.SendSimpleReplyAsync(6, NbdError.None);
        Assert.Equal([5 * 16, 16], stream.Writes);
    }

    [Fact]
    public async Task HeldReplies_GoOutBeforeAnyOtherReply_AndWhenTooManyWait()
    {
        var (writer, stream, _) = Create(structured: true);
        writer.Hold();
        await writer.SendSimpleReplyAsync(1, NbdError.None);
        await writer.SendErrorAsync(2, NbdError.IO, "eio");
        Assert.Equal(16, stream.Writes[0]);
        Assert.Equal(2, stream.Writes.Count);
        Assert.Equal(2ul, BinaryPrimitives.ReadUInt64BigEndian(stream.ToArray().AsSpan(16 + 8)));

        // At most MaxHeldReplies wait: a client that keeps sending still gets its replies.
        for (int i = 0; i < ReplyWriter.MaxHeldReplies + 1; i++)
        {
            await writer.SendSimpleReplyAsync((ulong)(10 + i), NbdError.None);
        }
        Assert.Equal(3, stream.Writes.Count);
        Assert.Equal(ReplyWriter.MaxHeldReplies * 16, stream.Writes[2]);
        await writer.ReleaseAsync();
        Assert.Equal(16, stream.Writes[3]);

        // Read replies count as replies too.
        writer.Hold();
        byte[] data = new byte[512];
        for (int i = 0; i < ReplyWriter.MaxHeldReplies; i++)
        {
            await writer.SendReadChunksAsync((ulong)(100 + i), 0, data, [new(0, data.Length, false)], 1, last: true);
        }
        Assert.Equal(5, stream.Writes.Count);
        Assert.Equal(ReplyWriter.MaxHeldReplies * (28 + 512), stream.Writes[4]);
    }

    /// <summary>A stream that takes its time over each write, and copies the bytes only at its end: a buffer changed while being sent shows.</summary>
    private sealed class SlowStream : MemoryStream
    {
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await Task.Delay(1, cancellationToken);
            lock (this)
                Write(buffer.Span);
        }
    }

    [Fact]
    public async Task RepliesAddedWhileHeldOnesAreSent_AllArriveWhole()
    {
        var stream = new SlowStream();
        var writer = new ReplyWriter(new StreamReplyTransport(stream), CancellationToken.None, _ => { }, () => { });
        writer.StartTransmission(new Negotiated(true, AllocationContextSelected: false, NoZeroes: true, Tls: false, NbdTransmissionFlags.HasFlags,
            new BlockSizeConstraints(1, 4096, 32 << 20)));
        const int Senders = 8, PerSender = 200;
        var reader = Task.Run(async () =>
        {
            // The reader holds and releases in turn while the replies come, as it does between bursts; held long enough that
            // more than MaxHeldReplies come, whose send then goes on while more are held.
            for (int i = 0; i < 100; i++)
            {
                writer.Hold();
                await Task.Delay(3);
                await writer.ReleaseAsync();
            }
        });
        var senders = Enumerable.Range(0, Senders).Select(s => Task.Run(async () =>
        {
            for (int i = 0; i < PerSender; i++)
            {
                ulong handle = (ulong)(s * PerSender + i);
                if (i % 2 == 0)
                    await writer.SendSimpleReplyAsync(handle, NbdError.None);
                else
                {
                    byte[] own = new byte[512];
                    BinaryPrimitives.WriteUInt64LittleEndian(own, handle);
                    await writer.SendReadChunksAsync(handle, 0, own, [new(0, own.Length, false)], 1, last: true);
                }
            }
        })).ToArray();
        await Task.WhenAll(senders);
        await reader;
        await writer.ReleaseAsync();

        byte[] bytes = stream.ToArray();
        var seen = new HashSet<ulong>();
        for (int at = 0; at < bytes.Length;)
        {
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(at));
            if (magic == SimpleReplyMagic)
            {
                Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(at + 4)));
                Assert.True(seen.Add(BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(at + 8))));
                at += 16;
                continue;
            }
            Assert.Equal(StructuredReplyMagic, magic);
            ulong handle = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(at + 8));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(at + 16));
            Assert.Equal(8u + 512u, length);
            // The data is the sender's own: the handle it wrote into its first bytes.
            Assert.Equal(handle, BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at + 20 + 8)));
            Assert.True(seen.Add(handle));
            at += 20 + (int)length;
        }
        Assert.Equal(Senders * PerSender, seen.Count);
    }
}
