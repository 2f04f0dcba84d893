using System.Buffers;
using System.Buffers.Binary;
using System.Net.Security;
using System.Security.Authentication;
using System.Text;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>Fixed newstyle negotiation: the option haggling that ends in the transmission phase.</summary>
internal sealed partial class NbdConnection
{
    /// <summary>The id this server gives <c>base:allocation</c> in NBD_OPT_SET_META_CONTEXT replies.</summary>
    private const uint AllocationContextId = 1;

    private static readonly byte[] s_allocationContextName = "base:allocation"u8.ToArray();

    /// <summary>What the options so far agreed; only the handshake reads or changes it.</summary>
    private readonly OptionState _haggling = new();

    /// <summary>The state option haggling builds up, until <see cref="Freeze"/> turns it into a <see cref="Negotiated"/>.</summary>
    private sealed class OptionState
    {
        public bool NoZeroes;
        public bool StructuredReplies;
        public bool AllocationContextSelected;
        public bool Tls;

        public Negotiated Freeze(NbdExport export) => new(StructuredReplies, AllocationContextSelected, NoZeroes, Tls,
            export.GetTransmissionFlags(StructuredReplies), export.BlockSize);
    }

    private enum OptionOutcome
    {
        Continue,
        Transmit,
        Close,
    }

    /// <summary>Runs the handshake; what was agreed when the client entered the transmission phase, else null.</summary>
    private async Task<Negotiated?> NegotiateAsync(CancellationToken cancellationToken)
    {
        byte[] greeting = new byte[ServerGreeting.Size];
        ServerGreeting.Write(greeting, NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);
        await _writer.SendHandshakeAsync(greeting).ConfigureAwait(false);

        byte[] header = new byte[OptionHeader.Size];
        if (await _input.ReadAtLeastAsync(header.AsMemory(0, sizeof(uint)), sizeof(uint), throwOnEndOfStream: false, cancellationToken)
            .ConfigureAwait(false) < sizeof(uint))
        {
            return null;
        }
        var clientFlags = (NbdClientFlags)BinaryPrimitives.ReadUInt32BigEndian(header);
        if ((clientFlags & ~(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)) != 0)
        {
            // "the server MUST drop the TCP connection if the client sets an unknown flag"
            Log($"{_peer}: unknown client flags 0x{(uint)clientFlags:x8}, closing");
            return null;
        }
        // A client without NBD_FLAG_C_FIXED_NEWSTYLE speaks plain newstyle, whose only option is
        // NBD_OPT_EXPORT_NAME; this server answers that one the same way, so such clients work too.
        _haggling.NoZeroes = (clientFlags & NbdClientFlags.NoZeroes) != 0;

        while (true)
        {
            if (await _input.ReadAtLeastAsync(header, OptionHeader.Size, throwOnEndOfStream: false, cancellationToken)
                .ConfigureAwait(false) < OptionHeader.Size)
            {
                return null;
            }
            if (!OptionHeader.TryRead(header, out OptionHeader option))
            {
                Log($"{_peer}: option without the IHAVEOPT magic, closing");
                return null;
            }
            if (option.Length > NbdLimits.MaxOptionLength)
            {
                if (option.Option == NbdOption.ExportName)
                {
                    // NBD_OPT_EXPORT_NAME cannot be answered with an error: the spec's remedy is to disconnect.
                    Log($"{_peer}: export name of {option.Length} bytes, closing");
                    return null;
                }
                await SkipAsync(option.Length, cancellationToken).ConfigureAwait(false);
                if (TlsRequiredFirst(option.Option))
                {
                    await SendTlsRequiredAsync(option.Option).ConfigureAwait(false);
                    continue;
                }
                await SendOptionReplyAsync(option.Option, NbdOptionReply.ErrTooBig,
                    $"option data of {option.Length} bytes exceeds this server's limit of {NbdLimits.MaxOptionLength}").ConfigureAwait(false);
                continue;
            }

            byte[] data = ArrayPool<byte>.Shared.Rent((int)option.Length);
            OptionOutcome outcome;
            try
            {
                Memory<byte> payload = data.AsMemory(0, (int)option.Length);
                await _input.ReadExactlyAsync(payload, cancellationToken).ConfigureAwait(false);
                outcome = await HandleOptionAsync(option.Option, payload, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(data);
            }
            if (outcome != OptionOutcome.Continue)
            {
                return outcome == OptionOutcome.Transmit ? _haggling.Freeze(_export) : null;
            }
        }
    }

    private async ValueTask<OptionOutcome> HandleOptionAsync(NbdOption option, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (TlsRequiredFirst(option))
        {
            if (option == NbdOption.ExportName)
            {
                // It cannot be answered with an error: "as this request cannot error, it MUST terminate the session".
                Log($"{_peer}: NBD_OPT_EXPORT_NAME without TLS while TLS is required, closing");
                return OptionOutcome.Close;
            }
            await SendTlsRequiredAsync(option).ConfigureAwait(false);
            return OptionOutcome.Continue;
        }
        switch (option)
        {
            case NbdOption.ExportName:
                return await HandleExportNameAsync(data).ConfigureAwait(false);

            case NbdOption.Abort:
                // The spec asks servers to ignore any data sent with NBD_OPT_ABORT.
                await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
                return OptionOutcome.Close;

            case NbdOption.List:
                if (!data.IsEmpty)
                {
                    await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, "NBD_OPT_LIST takes no data").ConfigureAwait(false);
                    return OptionOutcome.Continue;
                }
                await SendServerReplyAsync().ConfigureAwait(false);
                await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
                return OptionOutcome.Continue;

            case NbdOption.Info:
            case NbdOption.Go:
                return await HandleInfoOrGoAsync(option, data).ConfigureAwait(false);

            case NbdOption.StructuredReply:
                if (!data.IsEmpty)
                {
                    await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data").ConfigureAwait(false);
                    return OptionOutcome.Continue;
                }
                _haggling.StructuredReplies = true;
                await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
                return OptionOutcome.Continue;

            case NbdOption.ListMetaContext:
            case NbdOption.SetMetaContext:
                await HandleMetaContextAsync(option, data).ConfigureAwait(false);
                return OptionOutcome.Continue;

            case NbdOption.StartTls when _options.TlsMode != NbdTlsMode.Off:
                return await HandleStartTlsAsync(data, cancellationToken).ConfigureAwait(false);

            default:
                // Includes NBD_OPT_STARTTLS with TLS off (NBD_REP_ERR_UNSUP is what the spec prescribes for a server
                // without the option) and NBD_OPT_EXTENDED_HEADERS.
                await SendOptionReplyAsync(option, NbdOptionReply.ErrUnsup, $"option {(uint)option} is not supported").ConfigureAwait(false);
                return OptionOutcome.Continue;
        }
    }

    /// <summary>True for an option that must wait for TLS: under <see cref="NbdTlsMode.Require"/>, before NBD_OPT_STARTTLS, all but it and NBD_OPT_ABORT.</summary>
    private bool TlsRequiredFirst(NbdOption option)
        => _options.TlsMode == NbdTlsMode.Require && !_haggling.Tls && option is not (NbdOption.StartTls or NbdOption.Abort);

    private ValueTask SendTlsRequiredAsync(NbdOption option)
        => SendOptionReplyAsync(option, NbdOptionReply.ErrTlsReqd, "this server requires TLS: send NBD_OPT_STARTTLS first");

    /// <summary>
    /// NBD_OPT_STARTTLS: the ACK goes out in plaintext, then the TLS handshake runs (within the handshake timeout,
    /// whose token closes the socket), and option haggling goes on over TLS. A handshake that fails, a client that
    /// hangs up during it or a refused client certificate ends this connection with one log line: after the ACK
    /// there is no going back to plaintext.
    /// </summary>
    private async ValueTask<OptionOutcome> HandleStartTlsAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (_haggling.Tls)
        {
            await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.ErrInvalid, "TLS is already on").ConfigureAwait(false);
            return OptionOutcome.Continue;
        }
        if (!data.IsEmpty)
        {
            await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.ErrInvalid, "NBD_OPT_STARTTLS takes no data").ConfigureAwait(false);
            return OptionOutcome.Continue;
        }
        await SendOptionReplyAsync(NbdOption.StartTls, NbdOptionReply.Ack).ConfigureAwait(false);

        // The handshake reads the socket unbuffered, so the client's first TLS bytes are all still in the socket.
        var tls = new SslStream(_input, leaveInnerStreamOpen: true);
        _tls = tls;
        string? refusal = null;
        try
        {
            await tls.AuthenticateAsServerAsync(_options.TlsCredentials!.CreateOptions(reason => refusal = reason), cancellationToken)
                .ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is AuthenticationException || IsConnectionEnd(ex))
        {
            // A timeout or a shutdown has been logged, or needs no line.
            if (!cancellationToken.IsCancellationRequested)
            {
                Log($"{_peer}: TLS handshake failed, closing: {refusal ?? OneLine(ex)}");
            }
            return OptionOutcome.Close;
        }
        _input = tls;
        _writer.SwitchTransport(new StreamReplyTransport(tls));
        // What was agreed in plaintext could have been injected by anyone on the path: only what is agreed over TLS counts.
        _haggling.StructuredReplies = false;
        _haggling.AllocationContextSelected = false;
        _haggling.Tls = true;
        return OptionOutcome.Continue;
    }

    /// <summary>The message of an exception and of the ones inside it, on one line: SslStream's own says little alone.</summary>
    private static string OneLine(Exception ex)
    {
        var parts = new List<string>();
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            parts.Add(e.Message.ReplaceLineEndings(" ").TrimEnd('.'));
        }
        return string.Join(": ", parts.Distinct());
    }

    private async ValueTask<OptionOutcome> HandleExportNameAsync(ReadOnlyMemory<byte> name)
    {
        if (!_export.Matches(name.Span))
        {
            Log($"{_peer}: NBD_OPT_EXPORT_NAME for unknown export \"{Encoding.UTF8.GetString(name.Span)}\", closing");
            return OptionOutcome.Close;
        }
        byte[] reply = new byte[ExportNameReply.MaxSize];
        int length = ExportNameReply.Write(reply, _export.Size, _export.GetTransmissionFlags(_haggling.StructuredReplies), _haggling.NoZeroes);
        await _writer.SendHandshakeAsync(reply.AsMemory(0, length)).ConfigureAwait(false);
        return OptionOutcome.Transmit;
    }

    /// <summary>
    /// NBD_OPT_INFO and NBD_OPT_GO. Data: u32 name length, name, u16 request count, u16 requests. The reply
    /// always carries NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE (the maximum block size is not the default, so
    /// clients should learn it), and NBD_INFO_NAME / NBD_INFO_DESCRIPTION when asked for.
    /// </summary>
    private async ValueTask<OptionOutcome> HandleInfoOrGoAsync(NbdOption option, ReadOnlyMemory<byte> data)
    {
        if (!TryParseInfoRequest(data.Span, out int nameLength, out bool wantName, out bool wantDescription))
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, "malformed NBD_OPT_INFO/NBD_OPT_GO data").ConfigureAwait(false);
            return OptionOutcome.Continue;
        }
        ReadOnlyMemory<byte> name = data.Slice(sizeof(uint), nameLength);
        if (!_export.Matches(name.Span))
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrUnknown,
                $"no export named \"{Encoding.UTF8.GetString(name.Span)}\"").ConfigureAwait(false);
            return OptionOutcome.Continue;
        }

        byte[] info = new byte[InfoPayload.StringPrefixSize + NbdLimits.MaxStringLength];
        InfoPayload.WriteExport(info, _export.Size, _export.GetTransmissionFlags(_haggling.StructuredReplies));
        await SendOptionReplyAsync(option, NbdOptionReply.Info, info.AsMemory(0, InfoPayload.ExportSize)).ConfigureAwait(false);

        InfoPayload.WriteBlockSize(info, _export.BlockSize.Minimum, _export.BlockSize.Preferred, _export.BlockSize.Maximum);
        await SendOptionReplyAsync(option, NbdOptionReply.Info, info.AsMemory(0, InfoPayload.BlockSizeSize)).ConfigureAwait(false);

        if (wantName)
        {
            InfoPayload.WriteStringPrefix(info, NbdInfoType.Name);
            _export.NameUtf8.CopyTo(info, InfoPayload.StringPrefixSize);
            await SendOptionReplyAsync(option, NbdOptionReply.Info,
                info.AsMemory(0, InfoPayload.StringPrefixSize + _export.NameUtf8.Length)).ConfigureAwait(false);
        }
        if (wantDescription && _export.DescriptionUtf8.Length > 0)
        {
            InfoPayload.WriteStringPrefix(info, NbdInfoType.Description);
            _export.DescriptionUtf8.CopyTo(info, InfoPayload.StringPrefixSize);
            await SendOptionReplyAsync(option, NbdOptionReply.Info,
                info.AsMemory(0, InfoPayload.StringPrefixSize + _export.DescriptionUtf8.Length)).ConfigureAwait(false);
        }

        await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
        return option == NbdOption.Go ? OptionOutcome.Transmit : OptionOutcome.Continue;
    }

    /// <summary>Parses NBD_OPT_INFO / NBD_OPT_GO data; false when its lengths do not add up. Pure, for tests and fuzzing.</summary>
    internal static bool TryParseInfoRequest(ReadOnlySpan<byte> data, out int nameLength, out bool wantName, out bool wantDescription)
    {
        nameLength = 0;
        wantName = wantDescription = false;
        // "length of name ... MUST be no larger than the option data length - 6"
        if (data.Length < sizeof(uint) + sizeof(ushort))
        {
            return false;
        }
        uint declaredLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (declaredLength > (uint)(data.Length - sizeof(uint) - sizeof(ushort)))
        {
            return false;
        }
        ReadOnlySpan<byte> rest = data[(sizeof(uint) + (int)declaredLength)..];
        int count = BinaryPrimitives.ReadUInt16BigEndian(rest);
        rest = rest[sizeof(ushort)..];
        if (rest.Length != count * sizeof(ushort))
        {
            return false;
        }
        for (int i = 0; i < count; i++)
        {
            // Unknown information requests are ignored, as the spec requires.
            switch ((NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(rest[(i * sizeof(ushort))..]))
            {
                case NbdInfoType.Name:
                    wantName = true;
                    break;
                case NbdInfoType.Description:
                    wantDescription = true;
                    break;
            }
        }
        nameLength = (int)declaredLength;
        return true;
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. Data: u32 export name length, name, u32 query
    /// count, then per query a u32 length and the query. Only <c>base:allocation</c> exists; <c>base:</c>
    /// lists it and selects nothing; queries in other namespaces are ignored, as the spec requires.
    /// </summary>
    private async ValueTask HandleMetaContextAsync(NbdOption option, ReadOnlyMemory<byte> data)
    {
        bool set = option == NbdOption.SetMetaContext;
        if (set)
        {
            // "Issuing this command replaces all previously-set metadata contexts (including when this command fails)"
            _haggling.AllocationContextSelected = false;
            if (!_haggling.StructuredReplies)
            {
                await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid,
                    "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first").ConfigureAwait(false);
                return;
            }
        }

        MetaContextQuery query = ParseMetaContextQuery(data.Span, set, _export);
        if (query == MetaContextQuery.Invalid)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, "malformed metadata context request").ConfigureAwait(false);
            return;
        }
        if (query == MetaContextQuery.UnknownExport)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrUnknown, "no such export").ConfigureAwait(false);
            return;
        }
        if (query == MetaContextQuery.Allocation)
        {
            uint id = set ? AllocationContextId : 0;
            byte[] reply = new byte[sizeof(uint) + s_allocationContextName.Length];
            BinaryPrimitives.WriteUInt32BigEndian(reply, id);
            s_allocationContextName.CopyTo(reply, sizeof(uint));
            await SendOptionReplyAsync(option, NbdOptionReply.MetaContext, reply).ConfigureAwait(false);
            _haggling.AllocationContextSelected = set;
        }
        await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
    }

    internal enum MetaContextQuery
    {
        Invalid,
        UnknownExport,
        Nothing,
        Allocation,
    }

    /// <summary>Parses NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data against <paramref name="export"/>. Pure, for tests and fuzzing.</summary>
    internal static MetaContextQuery ParseMetaContextQuery(ReadOnlySpan<byte> data, bool set, NbdExport export)
    {
        if (!TryTakeString(ref data, out ReadOnlySpan<byte> exportName) || data.Length < sizeof(uint))
        {
            return MetaContextQuery.Invalid;
        }
        uint count = BinaryPrimitives.ReadUInt32BigEndian(data);
        data = data[sizeof(uint)..];
        // "If zero queries are sent", listing returns every context and setting selects none.
        bool allocation = count == 0 && !set;
        for (uint i = 0; i < count; i++)
        {
            if (!TryTakeString(ref data, out ReadOnlySpan<byte> text))
            {
                return MetaContextQuery.Invalid;
            }
            int colon = text.IndexOf((byte)':');
            if (colon <= 0)
            {
                // The spec lets a server refuse a query without the namespace and its colon.
                return MetaContextQuery.Invalid;
            }
            if (!text[..colon].SequenceEqual("base"u8))
            {
                continue;
            }
            ReadOnlySpan<byte> leaf = text[(colon + 1)..];
            // "base:" is a wildcard when listing and is ignored when setting; unknown leaf names are ignored.
            if (leaf.SequenceEqual("allocation"u8) || (leaf.IsEmpty && !set))
            {
                allocation = true;
            }
        }
        if (!data.IsEmpty)
        {
            return MetaContextQuery.Invalid;
        }
        if (!export.Matches(exportName))
        {
            return MetaContextQuery.UnknownExport;
        }
        return allocation ? MetaContextQuery.Allocation : MetaContextQuery.Nothing;
    }

    /// <summary>Takes a u32-length-prefixed string off the front of <paramref name="data"/>.</summary>
    private static bool TryTakeString(ref ReadOnlySpan<byte> data, out ReadOnlySpan<byte> value)
    {
        value = default;
        if (data.Length < sizeof(uint))
        {
            return false;
        }
        uint length = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (length > NbdLimits.MaxStringLength || length > (uint)(data.Length - sizeof(uint)))
        {
            return false;
        }
        value = data.Slice(sizeof(uint), (int)length);
        data = data[(sizeof(uint) + (int)length)..];
        return true;
    }

    /// <summary>The NBD_REP_SERVER entry of NBD_OPT_LIST: u32 name length, name, then the description for people to read.</summary>
    private ValueTask SendServerReplyAsync()
    {
        byte[] reply = new byte[sizeof(uint) + _export.NameUtf8.Length + _export.DescriptionUtf8.Length];
        BinaryPrimitives.WriteUInt32BigEndian(reply, (uint)_export.NameUtf8.Length);
        _export.NameUtf8.CopyTo(reply, sizeof(uint));
        _export.DescriptionUtf8.CopyTo(reply, sizeof(uint) + _export.NameUtf8.Length);
        return SendOptionReplyAsync(NbdOption.List, NbdOptionReply.Server, reply);
    }

    private ValueTask SendOptionReplyAsync(NbdOption option, NbdOptionReply type, string message)
        => SendOptionReplyAsync(option, type, Encoding.UTF8.GetBytes(message));

    private ValueTask SendOptionReplyAsync(NbdOption option, NbdOptionReply type)
        => SendOptionReplyAsync(option, type, ReadOnlyMemory<byte>.Empty);

    /// <summary>Sends one option reply. The handshake has a single writer, so no lock is taken.</summary>
    private ValueTask SendOptionReplyAsync(NbdOption option, NbdOptionReply type, ReadOnlyMemory<byte> payload)
        => _writer.SendOptionReplyAsync(option, type, payload);
}
