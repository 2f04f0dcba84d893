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
    private async Task TransmitAsync(CancellationToken cancellationToken)
    {
        byte[] header = new byte[NbdRequest.Size];
        while (true)
        {
            int read = await _input.ReadAtLeastAsync(header, NbdRequest.Size, throwOnEndOfStream: false, cancellationToken)
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
            if (request.Command == NbdCommand.Write && request.Length > _receivePiece)
            {
                // Received piece by piece into one buffer, each piece written to the device as it arrives, so
                // the request never holds more than a piece however slowly its data comes.
                await WriteInPiecesAsync(request, cancellationToken).ConfigureAwait(false);
                continue;
            }

            // A READ larger than a piece of the pool holds one piece at a time too (see ReadAsync).
            long cost = request.Command is NbdCommand.Read or NbdCommand.Write ? Math.Min(request.Length, _pool.PieceSize) : 0;
            await _limiter.AcquireAsync(cost, cancellationToken).ConfigureAwait(false);
            PayloadBuffer payload = default;
            try
            {
                if (request.Command == NbdCommand.Write && request.Length > 0)
                {
                    payload = await _pool.RentAsync((int)request.Length, cancellationToken).ConfigureAwait(false);
                    await _input.ReadExactlyAsync(payload.Memory[..(int)request.Length], cancellationToken).ConfigureAwait(false);
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
            // hand-off per write cost more than that (random 4 KiB writes +12 % without it, measured). A read is
            // decompressed and sent by the request itself, so reads go to the pool and run on every core.
            if (request.Command == NbdCommand.Write)
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
    /// A WRITE larger than a piece, run by the reader itself: each piece is received into the same buffer and
    /// written to the device before the next is read. The data of a refused request is read and dropped so
    /// that the next request header is found where the client put it; after a failed piece the rest is
    /// dropped too, and the reply carries the error.
    /// </summary>
    private async ValueTask WriteInPiecesAsync(NbdRequest request, CancellationToken cancellationToken)
    {
        long start = Stopwatch.GetTimestamp();
        NbdError error = Validate(request, out string? message);
        if (error != NbdError.None)
        {
            await SkipAsync(request.Length, cancellationToken).ConfigureAwait(false);
            await SendErrorAsync(request, error, message).ConfigureAwait(false);
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
            await SendErrorAsync(request, MapException(request, failure), failure.Message).ConfigureAwait(false);
            _metrics.Record(request.Command, request.Length, RequestOutcome.Failed, start);
            return;
        }
        await SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
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
            MarkBroken();
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
            await SendErrorAsync(request, error, message).ConfigureAwait(false);
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
            await SendErrorAsync(request, error, ex.Message).ConfigureAwait(false);
            return RequestOutcome.Failed;
        }
        await SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
        return RequestOutcome.Done;
    }

    private NbdError Validate(in NbdRequest request, out string? message)
        => RequestValidation.Validate(request, new TransmissionState(_export.Size, _export.IsReadOnly, _structuredReplies, _allocationContextSelected, _export.Device.CanProvision), out message);

    private NbdError MapException(in NbdRequest request, Exception ex)
    {
        switch (ex)
        {
            case ReadOnlyDeviceException:
                return NbdError.Perm;
            case OutOfSpaceException:
                return NbdError.NoSpace;
            case ProvisioningNotSupportedException:
                return NbdError.NotSupported;
            case OperationCanceledException when _abort.IsCancellationRequested:
                return NbdError.Shutdown;
            case IOException:
                Log($"{_peer}: {request.Command} at {request.Offset} length {request.Length} failed: {ex.Message}");
                return NbdError.IO;
            case ArgumentException:
                Log($"{_peer}: {request.Command} at {request.Offset} length {request.Length} refused by the device: {ex.Message}");
                return NbdError.Invalid;
            default:
                Log($"{_peer}: {request.Command} at {request.Offset} length {request.Length} failed unexpectedly: {ex}");
                return NbdError.IO;
        }
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
            if (_structuredReplies)
            {
                await SendChunkAsync(request.Handle, NbdReplyType.None, ReadOnlyMemory<byte>.Empty).ConfigureAwait(false);
            }
            else
            {
                await SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
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
            if (!_structuredReplies || (request.Flags & NbdCommandFlags.DontFragment) != 0)
            {
                await StreamReadAsync(request, buffer.Memory[..pieceSize]).ConfigureAwait(false);
                return;
            }
            runs = ArrayPool<ReadRun>.Shared.Rent(pieceSize / device.BlockSize + 2);
            for (int done = 0; done < length && !_broken;)
            {
                Memory<byte> data = buffer.Memory[..Math.Min(length - done, pieceSize)];
                if (done > 0)
                {
                    await device.ReadAsync(offset + done, data, _abort.Token).ConfigureAwait(false);
                }
                int runCount = BuildReadRuns(data.Span, offset + done, device.BlockSize, runs);
                bool last = done + data.Length == length;
                await SendReadChunksAsync(request.Handle, request.Offset + (ulong)done, data, runs, runCount, last).ConfigureAwait(false);
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
    private async ValueTask StreamReadAsync(NbdRequest request, Memory<byte> piece)
    {
        if (!await TryTakeSendLockAsync().ConfigureAwait(false))
        {
            return;
        }
        int length = (int)request.Length;
        long offset = (long)request.Offset;
        try
        {
            if (_broken)
            {
                return;
            }
            int headerLength;
            if (_structuredReplies)
            {
                StructuredReplyHeader.Write(_sendScratch, NbdReplyFlags.Done, NbdReplyType.OffsetData, request.Handle,
                    (uint)(ChunkPayload.OffsetDataPrefixSize + length));
                ChunkPayload.WriteOffsetDataPrefix(_sendScratch.AsSpan(StructuredReplyHeader.Size), request.Offset);
                headerLength = StructuredReplyHeader.Size + ChunkPayload.OffsetDataPrefixSize;
            }
            else
            {
                SimpleReplyHeader.Write(_sendScratch, NbdError.None, request.Handle);
                headerLength = SimpleReplyHeader.Size;
            }
            await SendLockedAsync(new(_sendScratch, 0, headerLength), piece).ConfigureAwait(false);
            for (int done = piece.Length; done < length;)
            {
                Memory<byte> data = piece[..Math.Min(length - done, piece.Length)];
                try
                {
                    await _export.Device.ReadAsync(offset + done, data, _abort.Token).ConfigureAwait(false);
                }
                catch (Exception ex)
                {
                    Log($"{_peer}: READ at {offset} length {length} failed at {offset + done}, after its reply header was sent; closing the connection: {ex.Message}");
                    MarkBroken();
                    Close();
                    return;
                }
                await SendAllAsync(data).ConfigureAwait(false);
                done += data.Length;
            }
        }
        catch (Exception ex) when (IsConnectionEnd(ex))
        {
            Log($"{_peer}: sending a reply failed, closing the connection: {ex.Message}");
            MarkBroken();
        }
        finally
        {
            _sendLock.Release();
        }
    }

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

    /// <summary>Sends the chunks of one piece of a READ; the last one carries NBD_REPLY_FLAG_DONE when <paramref name="last"/>.</summary>
    private ValueTask SendReadChunksAsync(ulong handle, ulong offset, ReadOnlyMemory<byte> data, ReadRun[] runs, int runCount, bool last)
        => SendGuardedAsync((handle, offset, data, runs, runCount, last), static async (c, s) =>
        {
            // Small chunk headers (and whole hole chunks) gather in the scratch buffer and go out with the next
            // data run, so a reply costs about one send per data run.
            byte[] scratch = c._sendScratch;
            int pending = 0;
            for (int i = 0; i < s.runCount; i++)
            {
                ReadRun run = s.runs[i];
                NbdReplyFlags flags = s.last && i == s.runCount - 1 ? NbdReplyFlags.Done : NbdReplyFlags.None;
                ulong runOffset = s.offset + (ulong)run.Start;
                int needed = StructuredReplyHeader.Size + (run.IsZero ? ChunkPayload.OffsetHoleSize : ChunkPayload.OffsetDataPrefixSize);
                if (pending + needed > scratch.Length)
                {
                    await c.SendLockedAsync(new(scratch, 0, pending)).ConfigureAwait(false);
                    pending = 0;
                }
                if (run.IsZero)
                {
                    StructuredReplyHeader.Write(scratch.AsSpan(pending), flags, NbdReplyType.OffsetHole, s.handle, ChunkPayload.OffsetHoleSize);
                    pending += StructuredReplyHeader.Size;
                    ChunkPayload.WriteOffsetHole(scratch.AsSpan(pending), runOffset, (uint)run.Length);
                    pending += ChunkPayload.OffsetHoleSize;
                }
                else
                {
                    StructuredReplyHeader.Write(scratch.AsSpan(pending), flags, NbdReplyType.OffsetData, s.handle,
                        (uint)(ChunkPayload.OffsetDataPrefixSize + run.Length));
                    pending += StructuredReplyHeader.Size;
                    ChunkPayload.WriteOffsetDataPrefix(scratch.AsSpan(pending), runOffset);
                    pending += ChunkPayload.OffsetDataPrefixSize;
                    await c.SendLockedAsync(new(scratch, 0, pending), s.data.Slice(run.Start, run.Length)).ConfigureAwait(false);
                    pending = 0;
                }
            }
            if (pending > 0)
            {
                await c.SendLockedAsync(new(scratch, 0, pending)).ConfigureAwait(false);
            }
        });

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
        byte[] reply = ArrayPool<byte>.Shared.Rent(StructuredReplyHeader.Size + payloadLength);
        try
        {
            Span<byte> descriptors = reply.AsSpan(StructuredReplyHeader.Size + ChunkPayload.BlockStatusPrefixSize);
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
            StructuredReplyHeader.Write(reply, NbdReplyFlags.Done, NbdReplyType.BlockStatus, request.Handle, (uint)length32);
            ChunkPayload.WriteBlockStatusPrefix(reply.AsSpan(StructuredReplyHeader.Size), AllocationContextId);
            await SendGuardedAsync(new ArraySegment<byte>(reply, 0, StructuredReplyHeader.Size + length32),
                static (c, segment) => c.SendLockedAsync(segment)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(reply);
        }
    }

    private static uint ReadDescriptorLength(ReadOnlySpan<byte> descriptors, int index)
        => System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(descriptors[(index * ChunkPayload.BlockStatusDescriptorSize)..]);

    private ValueTask SendSimpleReplyAsync(ulong handle, NbdError error)
        => SendGuardedAsync((handle, error), static (c, s) =>
        {
            SimpleReplyHeader.Write(c._sendScratch, s.error, s.handle);
            return c.SendLockedAsync(new(c._sendScratch, 0, SimpleReplyHeader.Size));
        });

    /// <summary>Sends one structured chunk flagged as the last of its reply.</summary>
    private ValueTask SendChunkAsync(ulong handle, NbdReplyType type, ReadOnlyMemory<byte> payload)
        => SendGuardedAsync((handle, type, payload), static (c, s) =>
        {
            StructuredReplyHeader.Write(c._sendScratch, NbdReplyFlags.Done, s.type, s.handle, (uint)s.payload.Length);
            s.payload.Span.CopyTo(c._sendScratch.AsSpan(StructuredReplyHeader.Size));
            return c.SendLockedAsync(new(c._sendScratch, 0, StructuredReplyHeader.Size + s.payload.Length));
        });

    /// <summary>
    /// Replies with an error: a structured NBD_REPLY_TYPE_ERROR chunk carrying <paramref name="message"/> when
    /// structured replies are on (the spec's preference, and the only form allowed for READ), else a simple reply.
    /// </summary>
    private ValueTask SendErrorAsync(in NbdRequest request, NbdError error, string? message)
    {
        if (!_structuredReplies)
        {
            return SendSimpleReplyAsync(request.Handle, error);
        }
        // The message shares the scratch buffer with the chunk header and the error fields.
        const int MaxMessage = 4096 - StructuredReplyHeader.Size - ChunkPayload.ErrorPrefixSize;
        byte[] text = Encoding.UTF8.GetBytes((message ?? error.ToString()).Replace('\0', ' '));
        int messageLength = Math.Min(text.Length, MaxMessage);
        return SendGuardedAsync((request.Handle, error, text, messageLength), static (c, s) =>
        {
            int payloadLength = ChunkPayload.WriteError(c._sendScratch.AsSpan(StructuredReplyHeader.Size), s.error, s.text.AsSpan(0, s.messageLength));
            StructuredReplyHeader.Write(c._sendScratch, NbdReplyFlags.Done, NbdReplyType.Error, s.Handle, (uint)payloadLength);
            return c.SendLockedAsync(new(c._sendScratch, 0, StructuredReplyHeader.Size + payloadLength));
        });
    }
}
