using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace Cbd.Nbd.Tests;

/// <summary>
/// A byte-level NBD client for protocol tests. It encodes and decodes every field itself with
/// <see cref="BinaryPrimitives"/> rather than with the server's Protocol types, so that a mistake shared by
/// both sides cannot hide.
/// </summary>
public sealed class RawNbdClient : IAsyncDisposable
{
    public const ulong NbdMagic = 0x4e42444d41474943;
    public const ulong IHaveOpt = 0x49484156454F5054;
    public const ulong OptionReplyMagic = 0x3e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const uint OptExportName = 1, OptAbort = 2, OptList = 3, OptStartTls = 5, OptInfo = 6, OptGo = 7,
        OptStructuredReply = 8, OptListMetaContext = 9, OptSetMetaContext = 10, OptExtendedHeaders = 11;

    public const uint RepAck = 1, RepServer = 2, RepInfo = 3, RepMetaContext = 4;
    public const uint RepErrUnsup = 0x80000001, RepErrPolicy = 0x80000002, RepErrInvalid = 0x80000003,
        RepErrTlsReqd = 0x80000005, RepErrUnknown = 0x80000006, RepErrTooBig = 0x80000009;

    public const ushort CmdRead = 0, CmdWrite = 1, CmdDisc = 2, CmdFlush = 3, CmdTrim = 4, CmdCache = 5,
        CmdWriteZeroes = 6, CmdBlockStatus = 7;

    public const ushort FlagFua = 1, FlagNoHole = 2, FlagDf = 4, FlagReqOne = 8, FlagFastZero = 16;

    public const ushort ReplyNone = 0, ReplyOffsetData = 1, ReplyOffsetHole = 2, ReplyBlockStatus = 5, ReplyError = 0x8001;

    public const uint EPerm = 1, EIO = 5, EInval = 22, ENoSpc = 28, ENotSup = 95;

    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    private readonly Socket _socket;
    private Stream _stream;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public static async Task<RawNbdClient> ConnectAsync(string socketPath)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
        return new RawNbdClient(socket);
    }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync();

    public async Task<byte[]> ReadExactlyAsync(int count)
    {
        byte[] buffer = new byte[count];
        using var cts = new CancellationTokenSource(s_timeout);
        await _stream.ReadExactlyAsync(buffer, cts.Token);
        return buffer;
    }

    public async Task SendAsync(ReadOnlyMemory<byte> data) => await _stream.WriteAsync(data);

    /// <summary>Ends the client's sending side: the server reads the end of the stream.</summary>
    public void ShutdownSend() => _socket.Shutdown(SocketShutdown.Send);

    /// <summary>Reads and drops everything until the server closes; fails if it has not within <paramref name="timeout"/>.</summary>
    /// <returns>The bytes read.</returns>
    public async Task<long> ReadToEndAsync(TimeSpan timeout)
    {
        byte[] buffer = new byte[64 << 10];
        using var cts = new CancellationTokenSource(timeout);
        long total = 0;
        try
        {
            int read;
            while ((read = await _stream.ReadAsync(buffer, cts.Token)) > 0)
            {
                total += read;
            }
        }
        catch (IOException)
        {
            // A reset is a close too.
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"the server did not close the connection within {timeout.TotalSeconds} s ({total} bytes read)");
        }
        return total;
    }

    /// <summary>True when the server closed the connection (end of stream or reset) within the timeout.</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        byte[] buffer = new byte[1];
        using var cts = new CancellationTokenSource(s_timeout);
        try
        {
            return await _stream.ReadAsync(buffer, cts.Token) == 0;
        }
        catch (Exception ex) when (ex is IOException or System.Security.Authentication.AuthenticationException)
        {
            // A TLS alert (the server refused a client certificate) ends the connection as surely as a close.
            return true;
        }
    }

    /// <summary>Reads the greeting and returns the handshake flags.</summary>
    public async Task<ushort> ReadGreetingAsync()
    {
        byte[] greeting = await ReadExactlyAsync(18);
        Assert.Equal(NbdMagic, BinaryPrimitives.ReadUInt64BigEndian(greeting));
        Assert.Equal(IHaveOpt, BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)));
        return BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16));
    }

    public Task SendClientFlagsAsync(uint flags)
    {
        byte[] buffer = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(buffer, flags);
        return SendAsync(buffer);
    }

    public Task SendOptionAsync(uint option, ReadOnlySpan<byte> data)
    {
        byte[] buffer = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(buffer, IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(12), (uint)data.Length);
        data.CopyTo(buffer.AsSpan(16));
        return SendAsync(buffer);
    }

    public readonly record struct OptionReply(uint Option, uint Type, byte[] Data);

    public async Task<OptionReply> ReadOptionReplyAsync()
    {
        byte[] header = await ReadExactlyAsync(20);
        Assert.Equal(OptionReplyMagic, BinaryPrimitives.ReadUInt64BigEndian(header));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        Assert.True(length < 1 << 20, $"option reply length {length}");
        byte[] data = length == 0 ? [] : await ReadExactlyAsync((int)length);
        return new OptionReply(BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)), data);
    }

    /// <summary>Replies to an option up to and including the final one (an ACK or an error).</summary>
    public async Task<List<OptionReply>> ReadOptionRepliesAsync()
    {
        var replies = new List<OptionReply>();
        while (true)
        {
            OptionReply reply = await ReadOptionReplyAsync();
            replies.Add(reply);
            if (reply.Type == RepAck || (reply.Type & 0x80000000) != 0)
            {
                return replies;
            }
        }
    }

    public static byte[] InfoRequest(string name, params ushort[] infos)
    {
        byte[] nameBytes = Encoding.UTF8.GetBytes(name);
        byte[] data = new byte[4 + nameBytes.Length + 2 + 2 * infos.Length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameBytes.Length);
        nameBytes.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + nameBytes.Length), (ushort)infos.Length);
        for (int i = 0; i < infos.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + nameBytes.Length + 2 + 2 * i), infos[i]);
        }
        return data;
    }

    public static byte[] MetaContextRequest(string name, params string[] queries)
    {
        var data = new List<byte>();
        void U32(int v)
        {
            byte[] b = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(b, (uint)v);
            data.AddRange(b);
        }
        byte[] nameBytes = Encoding.UTF8.GetBytes(name);
        U32(nameBytes.Length);
        data.AddRange(nameBytes);
        U32(queries.Length);
        foreach (string q in queries)
        {
            byte[] qb = Encoding.UTF8.GetBytes(q);
            U32(qb.Length);
            data.AddRange(qb);
        }
        return [.. data];
    }

    /// <summary>Greeting, flags (fixed newstyle + no zeroes), optional structured replies and base:allocation, then NBD_OPT_GO.</summary>
    /// <returns>Export size and transmission flags.</returns>
    public async Task<(ulong Size, ushort Flags)> HandshakeAsync(bool structured = true, bool allocationContext = true, string name = "")
    {
        await ReadGreetingAsync();
        await SendClientFlagsAsync(3);
        return await NegotiateAsync(structured, allocationContext, name);
    }

    /// <summary>
    /// NBD_OPT_STARTTLS, answered NBD_REP_ACK, then a TLS handshake trusting <paramref name="ca"/> alone for a server
    /// named localhost, presenting <paramref name="clientCertificate"/> if any. From then on everything goes over TLS.
    /// Under TLS 1.3 a server that refuses the client certificate says so only after this returns.
    /// </summary>
    public async Task StartTlsAsync(X509Certificate2 ca, X509Certificate2? clientCertificate = null)
    {
        await SendOptionAsync(OptStartTls, []);
        OptionReply reply = await ReadOptionReplyAsync();
        Assert.Equal((OptStartTls, RepAck), (reply.Option, reply.Type));
        var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
        policy.CustomTrustStore.Add(ca);
        var tls = new SslStream(_stream, leaveInnerStreamOpen: false);
        using var cts = new CancellationTokenSource(s_timeout);
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            CertificateChainPolicy = policy,
            ClientCertificates = clientCertificate is null ? null : [clientCertificate],
        }, cts.Token);
        _stream = tls;
    }

    /// <summary>The options of <see cref="HandshakeAsync"/> after the greeting and flags: structured replies, base:allocation, NBD_OPT_GO.</summary>
    public async Task<(ulong Size, ushort Flags)> NegotiateAsync(bool structured = true, bool allocationContext = true, string name = "")
    {
        if (structured)
        {
            await SendOptionAsync(OptStructuredReply, []);
            Assert.Equal(RepAck, (await ReadOptionReplyAsync()).Type);
            if (allocationContext)
            {
                await SendOptionAsync(OptSetMetaContext, MetaContextRequest(name, "base:allocation"));
                List<OptionReply> replies = await ReadOptionRepliesAsync();
                Assert.Equal([RepMetaContext, RepAck], replies.Select(r => r.Type));
            }
        }
        await SendOptionAsync(OptGo, InfoRequest(name));
        List<OptionReply> go = await ReadOptionRepliesAsync();
        Assert.Equal(RepAck, go[^1].Type);
        byte[] export = go.Single(r => r.Type == RepInfo && BinaryPrimitives.ReadUInt16BigEndian(r.Data) == 0).Data;
        return (BinaryPrimitives.ReadUInt64BigEndian(export.AsSpan(2)), BinaryPrimitives.ReadUInt16BigEndian(export.AsSpan(10)));
    }

    public Task SendRequestAsync(ushort command, ulong handle, ulong offset, uint length, ushort flags = 0, ReadOnlySpan<byte> payload = default)
    {
        byte[] buffer = new byte[28 + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(buffer, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(8), handle);
        BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.AsSpan(24), length);
        payload.CopyTo(buffer.AsSpan(28));
        return SendAsync(buffer);
    }

    /// <summary>One reply message: a simple reply (<see cref="IsSimple"/>) or one structured chunk.</summary>
    public sealed record Reply(bool IsSimple, ulong Handle, uint Error, ushort Flags, ushort Type, byte[] Payload)
    {
        public bool IsDone => IsSimple || (Flags & 1) != 0;

        /// <summary>The errno of an error chunk, or of a simple reply.</summary>
        public uint ErrorCode => IsSimple ? Error : (Type & 0x8000) != 0 ? BinaryPrimitives.ReadUInt32BigEndian(Payload) : 0;

        public string ErrorMessage => (Type & 0x8000) != 0
            ? Encoding.UTF8.GetString(Payload, 6, BinaryPrimitives.ReadUInt16BigEndian(Payload.AsSpan(4)))
            : "";
    }

    /// <summary>Sends one request (handle 42) and reads its whole reply; returns the reply's error code.</summary>
    public async Task<uint> RoundTripAsync(ushort command, ulong offset, uint length, ushort flags = 0, byte[]? payload = null)
    {
        await SendRequestAsync(command, 42, offset, length, flags, payload);
        Reply reply = await ReadReplyAsync();
        Assert.Equal(42ul, reply.Handle);
        Assert.True(reply.IsDone);
        return reply.ErrorCode;
    }

    /// <summary>Reads one reply message. A simple reply to a READ is followed by data: pass its length in <paramref name="simpleDataLength"/>.</summary>
    public async Task<Reply> ReadReplyAsync(Func<ulong, int>? simpleDataLength = null)
    {
        byte[] magic = await ReadExactlyAsync(4);
        switch (BinaryPrimitives.ReadUInt32BigEndian(magic))
        {
            case SimpleReplyMagic:
                {
                    byte[] rest = await ReadExactlyAsync(12);
                    uint error = BinaryPrimitives.ReadUInt32BigEndian(rest);
                    ulong handle = BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4));
                    int dataLength = error == 0 ? simpleDataLength?.Invoke(handle) ?? 0 : 0;
                    byte[] data = dataLength == 0 ? [] : await ReadExactlyAsync(dataLength);
                    return new Reply(true, handle, error, 0, 0, data);
                }
            case StructuredReplyMagic:
                {
                    byte[] rest = await ReadExactlyAsync(16);
                    uint length = BinaryPrimitives.ReadUInt32BigEndian(rest.AsSpan(12));
                    byte[] payload = length == 0 ? [] : await ReadExactlyAsync((int)length);
                    return new Reply(false, BinaryPrimitives.ReadUInt64BigEndian(rest.AsSpan(4)), 0,
                        BinaryPrimitives.ReadUInt16BigEndian(rest), BinaryPrimitives.ReadUInt16BigEndian(rest.AsSpan(2)), payload);
                }
            default:
                throw new InvalidDataException($"reply magic 0x{BinaryPrimitives.ReadUInt32BigEndian(magic):x8}");
        }
    }

    /// <summary>Reads chunks of one structured reply until NBD_REPLY_FLAG_DONE; every chunk must carry <paramref name="handle"/>.</summary>
    public async Task<List<Reply>> ReadStructuredReplyAsync(ulong handle)
    {
        var chunks = new List<Reply>();
        while (true)
        {
            Reply reply = await ReadReplyAsync();
            Assert.False(reply.IsSimple, "a simple reply where a structured one was required");
            Assert.Equal(handle, reply.Handle);
            chunks.Add(reply);
            if (reply.IsDone)
            {
                return chunks;
            }
        }
    }

    /// <summary>Assembles the data of a structured READ reply, checking that chunks stay in range, do not overlap and cover it all.</summary>
    public static byte[] AssembleRead(List<Reply> chunks, ulong offset, int length)
    {
        byte[] result = new byte[length];
        bool[] covered = new bool[length];
        foreach (Reply chunk in chunks)
        {
            Assert.Equal(0u, chunk.ErrorCode);
            if (chunk.Type == ReplyNone)
            {
                continue;
            }
            ulong chunkOffset = BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload);
            int start = checked((int)(chunkOffset - offset));
            int count;
            if (chunk.Type == ReplyOffsetData)
            {
                count = chunk.Payload.Length - 8;
                chunk.Payload.AsSpan(8).CopyTo(result.AsSpan(start));
            }
            else
            {
                Assert.Equal(ReplyOffsetHole, chunk.Type);
                Assert.Equal(12, chunk.Payload.Length);
                count = (int)BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload.AsSpan(8));
            }
            Assert.True(count > 0 && start >= 0 && start + count <= length, "chunk outside the request");
            for (int i = start; i < start + count; i++)
            {
                Assert.False(covered[i], "overlapping chunks");
                covered[i] = true;
            }
        }
        Assert.DoesNotContain(false, covered);
        return result;
    }
}
