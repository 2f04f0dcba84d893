using System.Buffers;
using System.Diagnostics;
using System.Text;
using Cbd.Core.Engine;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>The transmission phase: the request reader, the command handlers and their replies.</summary>
internal sealed partial class NbdConnection
{
    /// <summary>A run of a READ reply: bytes <c>[Start, Start + Length)</c> of the request, sent as a hole when <c>IsZero</c>.</summary>
    internal readonly record struct ReadRun(int Start, int Length, bool IsZero);

    /// <summary>Reads requests until NBD_CMD_DISC, the end of the stream, a malformed request or shutdown.</summary>
    private async Task TransmitAsync(Negotiated negotiated, CancellationToken cancellationToken)
    {
        _negotiated = negotiated;
        _transmissionState = new TransmissionState(_export.Size, _export.IsReadOnly, negotiated.StructuredReplies,
            negotiated.AllocationContextSelected, _export.Device.CanProvision);
        _writer.StartTransmission(negotiated);
        _received = new ReceiveBuffer(_input, ReceiveBufferSize);
        _input = _received;

        // The replies of requests that complete while the reader has more requests in hand are held and leave
        // together when it is about to wait (ReplyWriter.Hold): a burst of 4 KiB writes then costs one send and one
        // wake-up of the client instead of one per write.
        _writer.Hold();
        if (_export.Device.ReadsWithoutWaiting)
        {
            _lane = new ReadLane<(NbdRequest, long)>($"cbd read lane {_peer}", item => _ = ProcessAsync(item.Item1, default, item.Item2));
        }
        try
        {
            await ReadRequestsAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ServeBurst();
            _lane?.Complete();
            await _writer.ReleaseAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Most small READs a burst gathers before it is served, so that the first waits for few others.</summary>
    private const int MaxBurst = 32;

    /// <summary>The small READs read since the reader last served a burst, with what each holds of the in-flight limits.</summary>
    private readonly List<(NbdRequest Request, long Cost)> _burst = [];

    /// <summary>The thread that serves half of each burst; null when the device's reads may block their thread.</summary>
    private ReadLane<(NbdRequest, long)>? _lane;

    /// <summary>
    /// Serves the burst: its first half on the lane, the rest here, each read on the thread that serves it until it
    /// has to wait (for the disk, on the pool). Called before the reader does anything else or waits, since the
    /// burst's requests hold in-flight budget the reader may be waiting for.
    /// </summary>
    private void ServeBurst()
    {
        int count = _burst.Count;
        if (count == 0)
        {
            return;
        }
        Span<(NbdRequest Request, long Cost)> burst = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_burst);
        int toLane = _lane is null ? 0 : count / 2;
        if (toLane > 0)
        {
            _lane!.Post(burst[..toLane]);
        }
        foreach (var (request, cost) in burst[toLane..])
        {
            _ = ProcessAsync(request, default, cost);
        }
        _burst.Clear();
    }

    private async Task ReadRequestsAsync(CancellationToken cancellationToken)
    {
        byte[] header = new byte[NbdRequest.Size];
        while (true)
        {
            int read = await ReleasingIfWaiting(_input.ReadAtLeastAsync(header, NbdRequest.Size, throwOnEndOfStream: false, cancellationToken))
                .ConfigureAwait(false);
            if (read == 0)
            {
                return;
            }
            if (read < NbdRequest.Size)
            {
                Log($"{_peer}: connection closed inside a request header");
                return;
            }
            if (!NbdRequest.TryRead(header, out NbdRequest request))
            {
                // Nothing after a bad magic can be trusted to be framed correctly: a hard disconnect is the
                // spec's answer to a violation of a mandatory condition.
                Log($"{_peer}: request without NBD_REQUEST_MAGIC, closing");
                return;
            }
            if (request.Command == NbdCommand.Disconnect)
            {
                _metrics.DisconnectRead();
                return;
            }
            bool smallRead = request.Command == NbdCommand.Read && request.Length <= _export.Device.BlockSize;
            if (!smallRead)
            {
                ServeBurst();
            }
            if (request.Command == NbdCommand.Write && request.Length > _receivePiece)
            {
                // Received piece by piece into one buffer, each piece written to the device as it arrives, so
                // the request never holds more than a piece however slowly its data comes.
                await WriteInPiecesAsync(request, cancellationToken).ConfigureAwait(false);
                continue;
            }

            // A READ larger than a piece of the pool holds one piece at a time too (see ReadAsync).
            long cost = request.Command is NbdCommand.Read or NbdCommand.Write ? Math.Min(request.Length, _pool.PieceSize) : 0;
            await ReleasingIfWaiting(_limiter.AcquireAsync(cost, cancellationToken)).ConfigureAwait(false);
            PayloadBuffer payload = default;
            try
            {
                if (request.Command == NbdCommand.Write && request.Length > 0)
                {
                    payload = await ReleasingIfWaiting(_pool.RentAsync((int)request.Length, cancellationToken)).ConfigureAwait(false);
                    await ReleasingIfWaiting(_input.ReadExactlyAsync(payload.Memory[..(int)request.Length], cancellationToken)).ConfigureAwait(false);
                }
            }
            catch
            {
                if (!payload.IsEmpty)
                {
                    _pool.Return(payload);
                }
                _limiter.Release(cost);
                throw;
            }
            // A write runs on this thread until it first has to wait, then the next request is read: applying it
            // to the cache is short, and its compression happens later in write-back on the pool. A thread
            // hand-off per write cost more than that (random 4 KiB writes +12 % without it, measured). Small reads
            // gather into a burst while more requests are in hand, served by this thread and the lane once the next
            // header is not (ServeBurst): warm 4 KiB random reads +9-19 % against one pool hand-off per read.
            // Without a lane, such a read that is the last in hand runs here, and the others go to the pool. All
            // replies are held with the rest of the burst's (ReplyWriter.Hold) and leave in one send.
            if (smallRead && _lane is not null)
            {
                _burst.Add((request, cost));
                if (_received!.Buffered < NbdRequest.Size || _burst.Count == MaxBurst)
                {
                    ServeBurst();
                }
            }
            else if (request.Command == NbdCommand.Write || (smallRead && _received!.Buffered == 0))
            {
                _ = ProcessAsync(request, payload, cost);
            }
            else
            {
                _ = Task.Run(() => ProcessAsync(request, payload, cost));
            }
        }
    }

    /// <summary>
    /// What the reader needs next: as it is when already there, else after the held replies are sent
    /// (<see cref="ReleasingWhileAsync{T}"/>), since the client may be waiting for them before it sends more.
    /// </summary>
    private ValueTask<T> ReleasingIfWaiting<T>(ValueTask<T> pending) => pending.IsCompleted ? pending : ReleasingWhileAsync(pending);

    /// <inheritdoc cref="ReleasingIfWaiting{T}(ValueTask{T})"/>
    private ValueTask ReleasingIfWaiting(ValueTask pending) => pending.IsCompleted ? pending : ReleasingWhileAsync(pending);

    /// <summary>Sends the held replies, then waits for what the reader needs next; holds again once it is there.</summary>
    private async ValueTask<T> ReleasingWhileAsync<T>(ValueTask<T> pending)
    {
        ServeBurst();
        await _writer.ReleaseAsync().ConfigureAwait(false);
        T result = await pending.ConfigureAwait(false);
        _writer.Hold();
        return result;
    }

    /// <inheritdoc cref="ReleasingWhileAsync{T}(ValueTask{T})"/>
    private async ValueTask ReleasingWhileAsync(ValueTask pending)
    {
        ServeBurst();
        await _writer.ReleaseAsync().ConfigureAwait(false);
        await pending.ConfigureAwait(false);
        _writer.Hold();
    }

    /// <summary>
    /// A WRITE larger than a piece, run by the reader itself: each piece is received into the same buffer and
    /// written to the device before the next is read. The data of a refused request is read and dropped so
    /// that the next request header is found where the client put it; after a failed piece the rest is
    /// dropped too, and the reply carries the error.
    /// </summary>
    private async ValueTask WriteInPiecesAsync(NbdRequest request, CancellationToken cancellationToken)
    {
        // Its pieces come and go at the pace of the client and the device: nothing is held meanwhile.
        await _writer.ReleaseAsync().ConfigureAwait(false);
        try
        {
            await WritePiecesAsync(request, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writer.Hold();
        }
    }

    private async ValueTask WritePiecesAsync(NbdRequest request, CancellationToken cancellationToken)
    {
        long start = Stopwatch.GetTimestamp();
        NbdError error = Validate(request, out string? message);
        if (error != NbdError.None)
        {
            await SkipAsync(request.Length, cancellationToken).ConfigureAwait(false);
            await _writer.SendErrorAsync(request.Handle, error, message).ConfigureAwait(false);
            _metrics.Record(request.Command, request.Length, RequestOutcome.Refused, start);
            return;
        }

        IBlockDevice device = _export.Device;
        long offset = (long)request.Offset;
        long remaining = request.Length;
        Exception? failure = null;
        PayloadBuffer piece = await _pool.RentAsync(_receivePiece, cancellationToken).ConfigureAwait(false);
        try
        {
            while (remaining > 0)
            {
                Memory<byte> data = piece.Memory[..(int)Math.Min(remaining, _receivePiece)];
                await _input.ReadExactlyAsync(data, cancellationToken).ConfigureAwait(false);
                if (failure is null)
                {
                    try
                    {
                        await device.WriteAsync(offset, data, fua: false, _abort.Token).ConfigureAwait(false);
                    }
                    catch (Exception ex)
                    {
                        failure = ex;
                    }
                }
                offset += data.Length;
                remaining -= data.Length;
            }
        }
        finally
        {
            _pool.Return(piece);
        }
        if (failure is null && (request.Flags & NbdCommandFlags.Fua) != 0)
        {
            // FUA covers the whole request, so it is one flush after the last piece rather than one per piece.
            try
            {
                await device.FlushAsync(_abort.Token).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                failure = ex;
            }
        }
        if (failure is not null)
        {
            await _writer.SendErrorAsync(request.Handle, MapException(request, failure), failure.Message).ConfigureAwait(false);
            _metrics.Record(request.Command, request.Length, RequestOutcome.Failed, start);
            return;
        }
        await _writer.SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
        _metrics.Record(request.Command, request.Length, RequestOutcome.Done, start);
    }

    /// <summary>Runs one request and sends its reply; never throws, and releases what the reader acquired.</summary>
    private async Task ProcessAsync(NbdRequest request, PayloadBuffer payload, long cost)
    {
        long start = Stopwatch.GetTimestamp();
        try
        {
            RequestOutcome outcome = await ExecuteAsync(request, payload).ConfigureAwait(false);
            _metrics.Record(request.Command, request.Length, outcome, start);
        }
        catch (Exception ex)
        {
            Log($"{_peer}: unexpected failure in {request.Command}: {ex}");
            _writer.MarkBroken();
        }
        finally
        {
            if (!payload.IsEmpty)
            {
                _pool.Return(payload);
            }
            _limiter.Release(cost);
        }
    }

    private async ValueTask<RequestOutcome> ExecuteAsync(NbdRequest request, PayloadBuffer payload)
    {
        NbdError error = Validate(request, out string? message);
        if (error != NbdError.None)
        {
            await _writer.SendErrorAsync(request.Handle, error, message).ConfigureAwait(false);
            return RequestOutcome.Refused;
        }

        IBlockDevice device = _export.Device;
        CancellationToken abort = _abort.Token;
        long offset = (long)request.Offset;
        int length = (int)Math.Min(request.Length, int.MaxValue);
        bool fua = (request.Flags & NbdCommandFlags.Fua) != 0;
        try
        {
            switch (request.Command)
            {
                case NbdCommand.Read:
                    await ReadAsync(request).ConfigureAwait(false);
                    return RequestOutcome.Done;
                case NbdCommand.BlockStatus:
                    await BlockStatusAsync(request).ConfigureAwait(false);
                    return RequestOutcome.Done;
                case NbdCommand.Write when request.Length > 0:
                    await device.WriteAsync(offset, payload.Memory[..length], fua, abort).ConfigureAwait(false);
                    break;
                case NbdCommand.Flush when !_export.IsReadOnly:
                    await device.FlushAsync(abort).ConfigureAwait(false);
                    break;
                case NbdCommand.Trim when request.Length > 0:
                    await device.TrimAsync(offset, request.Length, abort).ConfigureAwait(false);
                    if (fua)
                    {
                        await device.FlushAsync(abort).ConfigureAwait(false);
                    }
                    break;
                case NbdCommand.WriteZeroes when request.Length > 0:
                    bool mayDeallocate = (request.Flags & NbdCommandFlags.NoHole) == 0;
                    await device.WriteZeroesAsync(offset, request.Length, mayDeallocate, fua, abort).ConfigureAwait(false);
                    break;
                case NbdCommand.Cache when request.Length > 0:
                    await device.PrefetchAsync(offset, request.Length, abort).ConfigureAwait(false);
                    break;
            }
        }
        catch (Exception ex)
        {
            error = MapException(request, ex);
            await _writer.SendErrorAsync(request.Handle, error, ex.Message).ConfigureAwait(false);
            return RequestOutcome.Failed;
        }
        await _writer.SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
        return RequestOutcome.Done;
    }

    private NbdError Validate(in NbdRequest request, out string? message)
        => RequestValidation.Validate(request, _transmissionState, out message);

    /// <summary>The error value of a failed request (<see cref="ReplyWriter.ErrorFor"/>), with a log line for the failures worth one.</summary>
    private NbdError MapException(in NbdRequest request, Exception ex)
    {
        NbdError error = ReplyWriter.ErrorFor(ex, _abort.IsCancellationRequested);
        string? what = error switch
        {
            NbdError.IO when ex is IOException => $"failed: {ex.Message}",
            NbdError.IO => $"failed unexpectedly: {ex}",
            NbdError.Invalid => $"refused by the device: {ex.Message}",
            _ => null,
        };
        if (what is not null)
        {
            Log($"{_peer}: {request.Command} at {request.Offset} length {request.Length} {what}");
        }
        return error;
    }

    /// <summary>
    /// NBD_CMD_READ, through one buffer of at most a piece. A request of up to a piece is read whole before
    /// anything is sent, so its failure is a plain error reply. With structured replies the data goes out piece
    /// after piece, zero runs found in it as NBD_REPLY_TYPE_OFFSET_HOLE chunks and the rest as
    /// NBD_REPLY_TYPE_OFFSET_DATA, other replies free to come between pieces; the last chunk carries
    /// NBD_REPLY_FLAG_DONE, and a piece that fails after others went out ends the reply with an error chunk,
    /// which fails the whole read. A simple reply, or one chunk under NBD_CMD_FLAG_DF, is streamed instead
    /// (<see cref="StreamReadAsync"/>).
    /// </summary>
    private async ValueTask ReadAsync(NbdRequest request)
    {
        int length = (int)request.Length;
        long offset = (long)request.Offset;
        IBlockDevice device = _export.Device;
        if (length == 0)
        {
            if (_negotiated!.StructuredReplies)
            {
                await _writer.SendDoneChunkAsync(request.Handle, NbdReplyType.None, ReadOnlyMemory<byte>.Empty).ConfigureAwait(false);
            }
            else
            {
                await _writer.SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
            }
            return;
        }

        // Rented before the send lock is ever taken: waiting for budget while holding the lock could wait on
        // replies of this very connection, which need the lock to return their buffers.
        int pieceSize = Math.Min(length, _pool.PieceSize);
        PayloadBuffer buffer = await _pool.RentAsync(pieceSize, _abort.Token).ConfigureAwait(false);
        ReadRun[]? runs = null;
        try
        {
            // One device call per piece. With structured replies, the lblks that read as zeros are then sent as
            // hole chunks: finding them in the data costs less than asking the device first.
            await device.ReadAsync(offset, buffer.Memory[..pieceSize], _abort.Token).ConfigureAwait(false);
            if (!_negotiated!.StructuredReplies || (request.Flags & NbdCommandFlags.DontFragment) != 0)
            {
                await StreamReadAsync(request, buffer.Memory[..pieceSize]).ConfigureAwait(false);
                return;
            }
            runs = ArrayPool<ReadRun>.Shared.Rent(pieceSize / device.BlockSize + 2);
            for (int done = 0; done < length && !_writer.IsBroken;)
            {
                Memory<byte> data = buffer.Memory[..Math.Min(length - done, pieceSize)];
                if (done > 0)
                {
                    await device.ReadAsync(offset + done, data, _abort.Token).ConfigureAwait(false);
                }
                int runCount = BuildReadRuns(data.Span, offset + done, device.BlockSize, runs);
                bool last = done + data.Length == length;
                await _writer.SendReadChunksAsync(request.Handle, request.Offset + (ulong)done, data, runs, runCount, last).ConfigureAwait(false);
                done += data.Length;
            }
        }
        finally
        {
            _pool.Return(buffer);
            if (runs is not null)
            {
                ArrayPool<ReadRun>.Shared.Return(runs);
            }
        }
    }

    /// <summary>
    /// Sends a reply whose one header announces all the request's bytes (a simple reply, or a single
    /// NBD_REPLY_TYPE_OFFSET_DATA chunk under NBD_CMD_FLAG_DF), then the data piece by piece through
    /// <paramref name="piece"/>, which holds the first piece already read. The send lock is held throughout, as
    /// nothing may come between. A piece that fails after the header went out cannot be reported: the header
    /// promised its bytes, and the client would take whatever came next for data. Closing the connection is the
    /// only honest answer (the spec: "either length bytes of data must be sent or a hard disconnect must be
    /// initiated"), and the client then fails the read.
    /// </summary>
    private ValueTask StreamReadAsync(NbdRequest request, Memory<byte> piece)
        => _writer.SendStreamedReadAsync(request.Handle, request.Offset, (int)request.Length, piece, (this, request),
            static async (s, done, data) =>
            {
                var (c, request) = s;
                long offset = (long)request.Offset;
                try
                {
                    await c._export.Device.ReadAsync(offset + done, data, c._abort.Token).ConfigureAwait(false);
                    return true;
                }
                catch (Exception ex)
                {
                    c.Log($"{c._peer}: READ at {offset} length {request.Length} failed at {offset + done}, after its reply header was sent; closing the connection: {ex.Message}");
                    c._writer.MarkBroken();
                    c.Close();
                    return false;
                }
            });

    /// <summary>
    /// Splits <paramref name="data"/> (read at device offset <paramref name="offset"/>) into alternating data and
    /// zero runs at block boundaries: a block, or the part of one the request covers, that reads as all zeros
    /// is a zero run.
    /// </summary>
    internal static int BuildReadRuns(ReadOnlySpan<byte> data, long offset, int blockSize, ReadRun[] runs)
    {
        int count = 0;
        int position = 0;
        while (position < data.Length)
        {
            int end = (int)Math.Min(data.Length, position + (blockSize - (offset + position) % blockSize));
            bool zero = !data[position..end].ContainsAnyExcept((byte)0);
            if (count > 0 && runs[count - 1].IsZero == zero)
            {
                runs[count - 1] = runs[count - 1] with { Length = runs[count - 1].Length + (end - position) };
            }
            else
            {
                runs[count++] = new ReadRun(position, end - position, zero);
            }
            position = end;
        }
        return count;
    }

    /// <summary>
    /// NBD_CMD_BLOCK_STATUS for <c>base:allocation</c>: one NBD_REPLY_TYPE_BLOCK_STATUS chunk whose
    /// descriptors cover the range from its start (only the first one with NBD_CMD_FLAG_REQ_ONE).
    /// </summary>
    private async ValueTask BlockStatusAsync(NbdRequest request)
    {
        IReadOnlyList<BlockExtent> extents = await _export.Device
            .GetBlockStatusAsync((long)request.Offset, request.Length, _abort.Token).ConfigureAwait(false);
        int maxDescriptors = (request.Flags & NbdCommandFlags.RequestOne) != 0
            ? 1
            : Math.Min(NbdLimits.MaxBlockStatusDescriptors, Math.Max(1, extents.Count));
        int payloadLength = ChunkPayload.BlockStatusPrefixSize + maxDescriptors * ChunkPayload.BlockStatusDescriptorSize;
        byte[] reply = ArrayPool<byte>.Shared.Rent(payloadLength);
        try
        {
            Span<byte> descriptors = reply.AsSpan(ChunkPayload.BlockStatusPrefixSize);
            int count = 0;
            long covered = 0;
            NbdAllocationState previous = default;
            foreach (BlockExtent extent in extents)
            {
                if (extent.Length <= 0 || extent.Length > request.Length - covered)
                {
                    break;
                }
                NbdAllocationState state = (extent.IsHole ? NbdAllocationState.Hole : 0) | (extent.IsZero ? NbdAllocationState.Zero : 0);
                long length = extent.Length;
                if (count > 0 && state == previous)
                {
                    // Merge with the previous descriptor, as the spec asks for differing consecutive statuses.
                    count--;
                    length += ReadDescriptorLength(descriptors, count);
                }
                else if (count == maxDescriptors)
                {
                    break;
                }
                ChunkPayload.WriteBlockStatusDescriptor(descriptors[(count * ChunkPayload.BlockStatusDescriptorSize)..], (uint)length, state);
                count++;
                covered += extent.Length;
                previous = state;
            }
            if (count == 0)
            {
                // "a server MAY always safely report a status of 0 for any block"
                ChunkPayload.WriteBlockStatusDescriptor(descriptors, request.Length, NbdAllocationState.None);
                count = 1;
            }
            int length32 = ChunkPayload.BlockStatusPrefixSize + count * ChunkPayload.BlockStatusDescriptorSize;
            ChunkPayload.WriteBlockStatusPrefix(reply, AllocationContextId);
            await _writer.SendDoneChunkAsync(request.Handle, NbdReplyType.BlockStatus, reply.AsMemory(0, length32)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(reply);
        }
    }

    private static uint ReadDescriptorLength(ReadOnlySpan<byte> descriptors, int index)
        => System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(descriptors[(index * ChunkPayload.BlockStatusDescriptorSize)..]);
}
