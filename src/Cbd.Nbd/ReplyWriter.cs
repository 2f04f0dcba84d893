using System.Text;
using Cbd.Core.Engine;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>
/// The send side of a connection: option replies during the handshake, then simple replies and structured reply
/// chunks, each written whole under one lock through one <see cref="ReplyTransport"/> (the socket, or TLS after
/// NBD_OPT_STARTTLS). Also where a failure becomes an NBD error value.
/// </summary>
/// <remarks>
/// Invariants: the transmission-phase sends never throw; a failed send marks the writer broken, after which
/// nothing more is sent and the connection stops reading. The handshake has a single writer and sends
/// without the lock; its failures propagate and end the handshake.
/// </remarks>
internal sealed class ReplyWriter
{
    /// <summary>
    /// Room for the headers of several reply chunks gathered into one send, and for a whole error chunk:
    /// <see cref="MaxErrorMessageLength"/> is derived from it.
    /// </summary>
    internal const int ScratchSize = 4096;

    /// <summary>Longest message of an error chunk: what is left of the scratch buffer after the chunk header and error fields.</summary>
    internal const int MaxErrorMessageLength = ScratchSize - StructuredReplyHeader.Size - ChunkPayload.ErrorPrefixSize;

    /// <summary>
    /// Room for the replies held while the reader works through requests it already has (<see cref="Hold"/>): the simple
    /// replies of writes, and the small READ replies, a burst of sixteen 4 KiB reads among them.
    /// </summary>
    internal const int HeldSize = 128 << 10;

    /// <summary>
    /// The most replies held at once: a client that keeps sending never makes the reader wait, and its replies must not
    /// wait for the held room to fill (thousands of simple replies) either.
    /// </summary>
    internal const int MaxHeldReplies = 64;

    private readonly SemaphoreSlim _lock = new(1, 1);
    private readonly byte[] _scratch = new byte[ScratchSize];

    /// <summary>
    /// Guards the held replies (<see cref="_held"/>, its length and count, <see cref="_holding"/>'s clearing): a reply added
    /// while the reader holds takes this short lock only, not the send lock, whose waiters resume on another thread (half
    /// the replies to a burst of reads met a send in progress, and each paid a thread switch for it). A leaf lock.
    /// </summary>
    private readonly Lock _heldLock = new();

    /// <summary>Where replies are held; swapped with <see cref="_sending"/> when they are sent, so that more can gather meanwhile.</summary>
    private byte[] _held = new byte[HeldSize];

    /// <summary>The other buffer: the held replies being sent, under the send lock, or free.</summary>
    private byte[] _sending = new byte[HeldSize];
    private int _heldLength;
    private int _heldReplies;
    private volatile bool _holding;
    private readonly CancellationToken _abort;
    private readonly Action<string> _log;
    private readonly Action _onBroken;
    private ReplyTransport _transport;
    private bool _structuredReplies;
    private volatile bool _broken;

    /// <param name="transport">Where replies go until <see cref="SwitchTransport"/>.</param>
    /// <param name="abort">Cancels a send in progress (the shutdown grace period ran out).</param>
    /// <param name="log">Takes one line about a failed send.</param>
    /// <param name="onBroken">Called once a send has failed, to stop reading requests.</param>
    public ReplyWriter(ReplyTransport transport, CancellationToken abort, Action<string> log, Action onBroken)
    {
        _transport = transport;
        _abort = abort;
        _log = log;
        _onBroken = onBroken;
    }

    /// <summary>True once a send failed or was given up: nothing more goes out.</summary>
    public bool IsBroken => _broken;

    /// <summary>Replaces the transport, after NBD_OPT_STARTTLS; the handshake's single writer calls it between two replies.</summary>
    public void SwitchTransport(ReplyTransport transport) => _transport = transport;

    /// <summary>Fixes the reply form for the transmission phase: structured replies, if negotiated, carry errors as chunks.</summary>
    public void StartTransmission(Negotiated negotiated) => _structuredReplies = negotiated.StructuredReplies;

    /// <summary>Marks the writer broken and stops the connection reading.</summary>
    public void MarkBroken()
    {
        _broken = true;
        _onBroken();
    }

    /// <summary>
    /// Maps a failure of the device to the error value of its reply (the spec's "Error values"); the shutdown
    /// error only when the connection is being aborted.
    /// </summary>
    public static NbdError ErrorFor(Exception ex, bool aborting) => ex switch
    {
        ReadOnlyDeviceException => NbdError.Perm,
        OutOfSpaceException => NbdError.NoSpace,
        ProvisioningNotSupportedException => NbdError.NotSupported,
        OperationCanceledException when aborting => NbdError.Shutdown,
        ArgumentException => NbdError.Invalid,
        _ => NbdError.IO,
    };

    // ---- Handshake: one writer, no lock ----

    /// <summary>Sends bytes as they are (the greeting, the NBD_OPT_EXPORT_NAME reply).</summary>
    public ValueTask SendHandshakeAsync(ReadOnlyMemory<byte> data) => _transport.SendAsync(data, ReadOnlyMemory<byte>.Empty, _abort);

    /// <summary>Sends one option reply: its header, then <paramref name="payload"/>.</summary>
    public ValueTask SendOptionReplyAsync(NbdOption option, NbdOptionReply type, ReadOnlyMemory<byte> payload)
    {
        OptionReplyHeader.Write(_scratch, option, type, (uint)payload.Length);
        return _transport.SendAsync(_scratch.AsMemory(0, OptionReplyHeader.Size), payload, _abort);
    }

    // ---- Transmission: any number of senders, one at a time ----

    /// <summary>
    /// From now until <see cref="ReleaseAsync"/>, simple replies and small READ replies are gathered instead of sent
    /// (at most <see cref="MaxHeldReplies"/>): the reader calls it
    /// while it has requests in hand, so that the replies to a burst of small writes leave in one send, and wake the
    /// client once, instead of one send and one wake-up each. Only the reader holds and releases.
    /// </summary>
    public void Hold() => _holding = true;

    /// <summary>
    /// Sends what was held and stops holding. The reader calls it before it waits for anything (the client's next
    /// bytes, room for a request), since the client may be waiting for these replies before it sends more.
    /// </summary>
    public async ValueTask ReleaseAsync()
    {
        if (!await TryLockAsync().ConfigureAwait(false))
        {
            _holding = false;
            return;
        }
        try
        {
            // Cleared under the held lock: a reply added while it was set is in the held ones, which go out now; one
            // added after it finds it clear and is sent by its sender.
            lock (_heldLock)
                _holding = false;
            if (!_broken)
            {
                await SendHeldAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (NbdConnection.IsConnectionEnd(ex))
        {
            _log($"sending a reply failed, closing the connection: {ex.Message}");
            MarkBroken();
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// Sends the held replies, if any; under the send lock. The buffer they are in is swapped out first, so that replies
    /// added meanwhile gather in the other one: only one send is ever in progress, so the other one is free.
    /// </summary>
    private ValueTask SendHeldAsync()
    {
        byte[] buffer;
        int length;
        lock (_heldLock)
        {
            if (_heldLength == 0)
            {
                return ValueTask.CompletedTask;
            }
            (buffer, length) = (_held, _heldLength);
            (_held, _sending) = (_sending, _held);
            _heldLength = 0;
            _heldReplies = 0;
        }
        return _transport.SendAsync(buffer.AsMemory(0, length), ReadOnlyMemory<byte>.Empty, _abort);
    }

    /// <summary>
    /// Adds a reply of <paramref name="bytes"/> bytes to the held ones (<paramref name="write"/> writes it) when the reader
    /// holds and there is room: then the held replies are sent at once if <see cref="MaxHeldReplies"/> wait now. False when
    /// it was not held, and the caller sends it. Takes the send lock only to send.
    /// </summary>
    private bool TryHold<TState>(int bytes, TState state, HeldWriter<TState> write, out ValueTask sent)
    {
        sent = ValueTask.CompletedTask;
        bool full;
        lock (_heldLock)
        {
            if (!_holding || _broken || bytes > _held.Length - _heldLength)
            {
                return false;
            }
            write(_held.AsSpan(_heldLength, bytes), state);
            _heldLength += bytes;
            full = ++_heldReplies >= MaxHeldReplies;
        }
        if (full)
        {
            sent = SendGuardedAsync(0, static (_, _) => ValueTask.CompletedTask);
        }
        return true;
    }

    private delegate void HeldWriter<TState>(Span<byte> destination, TState state);

    /// <summary>A simple reply: the error value (or none) of a request that carries no data back.</summary>
    public ValueTask SendSimpleReplyAsync(ulong handle, NbdError error)
    {
        if (TryHold(SimpleReplyHeader.Size, (handle, error), static (d, s) => SimpleReplyHeader.Write(d, s.error, s.handle), out var sent))
        {
            return sent;
        }
        // Not held (the reader is not holding, or the held ones are full): sent now, after those held.
        return SendGuardedAsync((handle, error), static (w, s) =>
        {
            SimpleReplyHeader.Write(w._scratch, s.error, s.handle);
            return w._transport.SendAsync(w._scratch.AsMemory(0, SimpleReplyHeader.Size), ReadOnlyMemory<byte>.Empty, w._abort);
        });
    }

    /// <summary>One structured chunk flagged as the last of its reply, its payload sent after the header.</summary>
    public ValueTask SendDoneChunkAsync(ulong handle, NbdReplyType type, ReadOnlyMemory<byte> payload)
        => SendGuardedAsync((handle, type, payload), static (w, s) =>
        {
            StructuredReplyHeader.Write(w._scratch, NbdReplyFlags.Done, s.type, s.handle, (uint)s.payload.Length);
            return w._transport.SendAsync(w._scratch.AsMemory(0, StructuredReplyHeader.Size), s.payload, w._abort);
        });

    /// <summary>
    /// Replies with an error: a structured NBD_REPLY_TYPE_ERROR chunk carrying <paramref name="message"/> (cut to
    /// <see cref="MaxErrorMessageLength"/> bytes) when structured replies are on (the spec's preference, and the
    /// only form allowed for READ), else a simple reply.
    /// </summary>
    public ValueTask SendErrorAsync(ulong handle, NbdError error, string? message)
    {
        if (!_structuredReplies)
        {
            return SendSimpleReplyAsync(handle, error);
        }
        byte[] text = Encoding.UTF8.GetBytes((message ?? error.ToString()).Replace('\0', ' '));
        int messageLength = Math.Min(text.Length, MaxErrorMessageLength);
        return SendGuardedAsync((handle, error, text, messageLength), static (w, s) =>
        {
            int payloadLength = ChunkPayload.WriteError(w._scratch.AsSpan(StructuredReplyHeader.Size), s.error, s.text.AsSpan(0, s.messageLength));
            StructuredReplyHeader.Write(w._scratch, NbdReplyFlags.Done, NbdReplyType.Error, s.handle, (uint)payloadLength);
            return w._transport.SendAsync(w._scratch.AsMemory(0, StructuredReplyHeader.Size + payloadLength), ReadOnlyMemory<byte>.Empty, w._abort);
        });
    }

    /// <summary>
    /// Sends the chunks of one piece of a structured READ reply: <paramref name="runs"/> split <paramref name="data"/>
    /// (at request offset <paramref name="offset"/>) into NBD_REPLY_TYPE_OFFSET_HOLE and NBD_REPLY_TYPE_OFFSET_DATA
    /// chunks; the last one carries NBD_REPLY_FLAG_DONE when <paramref name="last"/>.
    /// </summary>
    public ValueTask SendReadChunksAsync(ulong handle, ulong offset, ReadOnlyMemory<byte> data, NbdConnection.ReadRun[] runs, int runCount, bool last)
    {
        if (_holding && TryHold(HeldReadChunksBytes(runs.AsSpan(0, runCount)), (handle, offset, data, runs, runCount, last),
            static (d, s) => WriteReadChunks(d, s.handle, s.offset, s.data.Span, s.runs.AsSpan(0, s.runCount), s.last), out var sent))
        {
            return sent;
        }
        return SendGuardedAsync((handle, offset, data, runs, runCount, last), static async (w, s) =>
        {
            // Small chunk headers (and whole hole chunks) gather in the scratch buffer and go out with the next
            // data run, so a reply costs about one send per data run.
            byte[] scratch = w._scratch;
            int pending = 0;
            for (int i = 0; i < s.runCount; i++)
            {
                NbdConnection.ReadRun run = s.runs[i];
                if (pending + ChunkHeadBytes(run) > scratch.Length)
                {
                    await w._transport.SendAsync(scratch.AsMemory(0, pending), ReadOnlyMemory<byte>.Empty, w._abort).ConfigureAwait(false);
                    pending = 0;
                }
                pending += WriteChunkHead(scratch.AsSpan(pending), s.handle, s.offset, run, s.last && i == s.runCount - 1);
                if (!run.IsZero)
                {
                    await w._transport.SendAsync(scratch.AsMemory(0, pending), s.data.Slice(run.Start, run.Length), w._abort).ConfigureAwait(false);
                    pending = 0;
                }
            }
            if (pending > 0)
            {
                await w._transport.SendAsync(scratch.AsMemory(0, pending), ReadOnlyMemory<byte>.Empty, w._abort).ConfigureAwait(false);
            }
        });
    }

    /// <summary>Bytes the chunks of a READ reply piece take when held: each run's chunk head, and its data.</summary>
    private static int HeldReadChunksBytes(ReadOnlySpan<NbdConnection.ReadRun> runs)
    {
        int bytes = 0;
        foreach (var run in runs)
        {
            bytes += ChunkHeadBytes(run) + (run.IsZero ? 0 : run.Length);
        }
        return bytes;
    }

    /// <summary>Writes the chunks of a READ reply piece, as they are held (<see cref="HeldReadChunksBytes"/> bytes).</summary>
    private static void WriteReadChunks(Span<byte> destination, ulong handle, ulong offset, ReadOnlySpan<byte> data, ReadOnlySpan<NbdConnection.ReadRun> runs, bool last)
    {
        int at = 0;
        for (int i = 0; i < runs.Length; i++)
        {
            NbdConnection.ReadRun run = runs[i];
            at += WriteChunkHead(destination[at..], handle, offset, run, last && i == runs.Length - 1);
            if (!run.IsZero)
            {
                data.Slice(run.Start, run.Length).CopyTo(destination[at..]);
                at += run.Length;
            }
        }
    }

    /// <summary>Bytes of a READ run's chunk before its data: the header, and the hole's fields or the data's offset.</summary>
    private static int ChunkHeadBytes(NbdConnection.ReadRun run) =>
        StructuredReplyHeader.Size + (run.IsZero ? ChunkPayload.OffsetHoleSize : ChunkPayload.OffsetDataPrefixSize);

    /// <summary>
    /// Writes a READ run's chunk up to its data (<see cref="ChunkHeadBytes"/>): a whole NBD_REPLY_TYPE_OFFSET_HOLE chunk, or
    /// the header and offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk, flagged done when <paramref name="done"/>.
    /// </summary>
    private static int WriteChunkHead(Span<byte> destination, ulong handle, ulong offset, NbdConnection.ReadRun run, bool done)
    {
        NbdReplyFlags flags = done ? NbdReplyFlags.Done : NbdReplyFlags.None;
        ulong runOffset = offset + (ulong)run.Start;
        if (run.IsZero)
        {
            StructuredReplyHeader.Write(destination, flags, NbdReplyType.OffsetHole, handle, ChunkPayload.OffsetHoleSize);
            ChunkPayload.WriteOffsetHole(destination[StructuredReplyHeader.Size..], runOffset, (uint)run.Length);
        }
        else
        {
            StructuredReplyHeader.Write(destination, flags, NbdReplyType.OffsetData, handle, (uint)(ChunkPayload.OffsetDataPrefixSize + run.Length));
            ChunkPayload.WriteOffsetDataPrefix(destination[StructuredReplyHeader.Size..], runOffset);
        }
        return ChunkHeadBytes(run);
    }

    /// <summary>
    /// Sends a READ reply whose one header announces all <paramref name="length"/> bytes (a simple reply, or a
    /// single NBD_REPLY_TYPE_OFFSET_DATA chunk with structured replies), then the data: <paramref name="piece"/>
    /// holds the first piece, and <paramref name="readPiece"/> refills it with the bytes at a request offset
    /// before each further one is sent. The lock is held throughout, as nothing may come between. When
    /// <paramref name="readPiece"/> returns false the header's promise cannot be kept: the caller has closed the
    /// connection, and nothing more is sent.
    /// </summary>
    public async ValueTask SendStreamedReadAsync<TState>(ulong handle, ulong offset, int length, Memory<byte> piece,
        TState state, Func<TState, int, Memory<byte>, ValueTask<bool>> readPiece)
    {
        if (!await TryLockAsync().ConfigureAwait(false))
        {
            return;
        }
        try
        {
            if (_broken)
            {
                return;
            }
            await SendHeldAsync().ConfigureAwait(false);
            int headerLength;
            if (_structuredReplies)
            {
                StructuredReplyHeader.Write(_scratch, NbdReplyFlags.Done, NbdReplyType.OffsetData, handle, (uint)(ChunkPayload.OffsetDataPrefixSize + length));
                ChunkPayload.WriteOffsetDataPrefix(_scratch.AsSpan(StructuredReplyHeader.Size), offset);
                headerLength = StructuredReplyHeader.Size + ChunkPayload.OffsetDataPrefixSize;
            }
            else
            {
                SimpleReplyHeader.Write(_scratch, NbdError.None, handle);
                headerLength = SimpleReplyHeader.Size;
            }
            await _transport.SendAsync(_scratch.AsMemory(0, headerLength), piece, _abort).ConfigureAwait(false);
            for (int done = piece.Length; done < length;)
            {
                Memory<byte> data = piece[..Math.Min(length - done, piece.Length)];
                if (!await readPiece(state, done, data).ConfigureAwait(false))
                {
                    _broken = true;
                    return;
                }
                await _transport.SendAsync(data, ReadOnlyMemory<byte>.Empty, _abort).ConfigureAwait(false);
                done += data.Length;
            }
        }
        catch (Exception ex) when (NbdConnection.IsConnectionEnd(ex))
        {
            _log($"sending a reply failed, closing the connection: {ex.Message}");
            MarkBroken();
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>Takes the lock; false, without it, when the writer is broken or being aborted.</summary>
    private async ValueTask<bool> TryLockAsync()
    {
        if (_broken)
        {
            return false;
        }
        try
        {
            await _lock.WaitAsync(_abort).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            MarkBroken();
            return false;
        }
    }

    /// <summary>
    /// Takes the lock, sends the held replies and runs <paramref name="send"/>. Never throws: a failed send means the
    /// client is gone or stuck, so the writer is marked broken and the connection stops reading.
    /// </summary>
    private async ValueTask SendGuardedAsync<TState>(TState state, Func<ReplyWriter, TState, ValueTask> send)
    {
        if (!await TryLockAsync().ConfigureAwait(false))
        {
            return;
        }
        try
        {
            if (!_broken)
            {
                // Held replies go first, so that one waiting for the reader's next wait is not behind this one too.
                await SendHeldAsync().ConfigureAwait(false);
                await send(this, state).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (NbdConnection.IsConnectionEnd(ex))
        {
            _log($"sending a reply failed, closing the connection: {ex.Message}");
            MarkBroken();
        }
        finally
        {
            _lock.Release();
        }
    }
}
