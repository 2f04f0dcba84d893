using System.Buffers;
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
                return;
            }

            long cost = request.Command is NbdCommand.Read or NbdCommand.Write && request.Length <= NbdLimits.MaxRequestLength
                ? request.Length
                : 0;
            await _limiter.AcquireAsync(cost, cancellationToken).ConfigureAwait(false);
            byte[]? payload = null;
            try
            {
                if (request.Command == NbdCommand.Write && request.Length > 0)
                {
                    if (request.Length > NbdLimits.MaxRequestLength)
                    {
                        // Refused with NBD_EINVAL once dispatched; its data is read and dropped so that the
                        // next request header is found where the client put it.
                        await SkipAsync(request.Length, cancellationToken).ConfigureAwait(false);
                    }
                    else
                    {
                        payload = ArrayPool<byte>.Shared.Rent((int)request.Length);
                        await _input.ReadExactlyAsync(payload.AsMemory(0, (int)request.Length), cancellationToken).ConfigureAwait(false);
                    }
                }
            }
            catch
            {
                if (payload is not null)
                {
                    ArrayPool<byte>.Shared.Return(payload);
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

    /// <summary>Runs one request and sends its reply; never throws, and releases what the reader acquired.</summary>
    private async Task ProcessAsync(NbdRequest request, byte[]? payload, long cost)
    {
        try
        {
            await ExecuteAsync(request, payload).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Log($"{_peer}: unexpected failure in {request.Command}: {ex}");
            MarkBroken();
        }
        finally
        {
            if (payload is not null)
            {
                ArrayPool<byte>.Shared.Return(payload);
            }
            _limiter.Release(cost);
        }
    }

    private async ValueTask ExecuteAsync(NbdRequest request, byte[]? payload)
    {
        NbdError error = Validate(request, out string? message);
        if (error != NbdError.None)
        {
            await SendErrorAsync(request, error, message).ConfigureAwait(false);
            return;
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
                    return;
                case NbdCommand.BlockStatus:
                    await BlockStatusAsync(request).ConfigureAwait(false);
                    return;
                case NbdCommand.Write when request.Length > 0:
                    await device.WriteAsync(offset, payload.AsMemory(0, length), fua, abort).ConfigureAwait(false);
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
            return;
        }
        await SendSimpleReplyAsync(request.Handle, NbdError.None).ConfigureAwait(false);
    }

    /// <summary>
    /// Checks a request before it reaches the device; returns the error to reply with, or
    /// <see cref="NbdError.None"/>. The errno choices follow the spec's "Error values" section.
    /// </summary>
    private NbdError Validate(in NbdRequest request, out string? message)
    {
        message = null;
        NbdCommand command = request.Command;
        NbdCommandFlags allowed = command switch
        {
            NbdCommand.Read => _structuredReplies ? NbdCommandFlags.DontFragment : NbdCommandFlags.None,
            NbdCommand.WriteZeroes => NbdCommandFlags.NoHole | (_export.Device.CanProvision ? NbdCommandFlags.FastZero : 0),
            NbdCommand.BlockStatus => NbdCommandFlags.RequestOne,
            NbdCommand.Write or NbdCommand.Flush or NbdCommand.Trim or NbdCommand.Cache => NbdCommandFlags.None,
            _ => (NbdCommandFlags)ushort.MaxValue,
        };
        if (allowed == (NbdCommandFlags)ushort.MaxValue)
        {
            message = $"unknown command {(ushort)command}";
            return NbdError.Invalid;
        }
        // FUA is accepted on every command: the spec notes that clients set it on commands that do not write.
        allowed |= NbdCommandFlags.Fua;
        if ((request.Flags & ~allowed) != 0)
        {
            message = $"flags 0x{(ushort)request.Flags:x4} are not valid for {command}";
            return NbdError.Invalid;
        }

        bool writes = command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes;
        if (writes && _export.IsReadOnly)
        {
            message = "the export is read-only";
            return NbdError.Perm;
        }
        if (command == NbdCommand.BlockStatus && !_allocationContextSelected)
        {
            message = "no metadata context was selected with NBD_OPT_SET_META_CONTEXT";
            return NbdError.Invalid;
        }
        bool fastZero = (request.Flags & NbdCommandFlags.FastZero) != 0;
        // The maximum block size binds the commands that carry a payload (WRITE) or make one (READ), and CACHE,
        // which loads what it covers. TRIM, WRITE_ZEROES and BLOCK_STATUS carry none: the device zeroes lblk by
        // lblk without a buffer the size of the request, so they may span the whole export (nbdcopy zeroes a
        // whole hole of its source with one WRITE_ZEROES, however long).
        bool limited = command is NbdCommand.Read or NbdCommand.Write or NbdCommand.Cache;
        if (limited && request.Length > NbdLimits.MaxRequestLength)
        {
            message = $"length {request.Length} exceeds the maximum block size {NbdLimits.MaxRequestLength}";
            return NbdError.Invalid;
        }
        if (command == NbdCommand.Flush)
        {
            return NbdError.None;
        }
        if (request.Offset > _export.Size || request.Length > _export.Size - request.Offset)
        {
            message = $"range at offset {request.Offset} of length {request.Length} is beyond the export size {_export.Size}";
            // "The server SHOULD return NBD_ENOSPC if it receives a write request including one or more sectors
            // beyond the size of the device", and the same for write zeroes; NBD_EINVAL for everything else.
            return command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid;
        }
        if (command == NbdCommand.BlockStatus && request.Length == 0)
        {
            message = "block status of zero bytes";
            return NbdError.Invalid;
        }
        if (fastZero && (request.Flags & NbdCommandFlags.NoHole) != 0)
        {
            // Zeroing without a hole stores allocated blocks, which costs as much as writing them: the spec
            // then requires a quick NBD_ENOTSUP so that the client writes the zeroes itself.
            message = "zeroing with NBD_CMD_FLAG_NO_HOLE is not faster than a write";
            return NbdError.NotSupported;
        }
        return NbdError.None;
    }

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
    /// NBD_CMD_READ. With structured replies, zero runs found by the device's block status go out as
    /// NBD_REPLY_TYPE_OFFSET_HOLE chunks and the rest as NBD_REPLY_TYPE_OFFSET_DATA; everything is read before
    /// the first chunk is sent, so no error can follow a chunk and the last chunk carries NBD_REPLY_FLAG_DONE.
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

        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        ReadRun[]? runs = null;
        try
        {
            // One device call for the whole range. With structured replies, the lblks that read as zeros are
            // then sent as hole chunks: finding them in the data costs less than asking the device first.
            await device.ReadAsync(offset, buffer.AsMemory(0, length), _abort.Token).ConfigureAwait(false);
            int runCount = 1;
            if (_structuredReplies && (request.Flags & NbdCommandFlags.DontFragment) == 0)
            {
                runs = ArrayPool<ReadRun>.Shared.Rent(length / device.BlockSize + 2);
                runCount = BuildReadRuns(buffer.AsSpan(0, length), offset, device.BlockSize, runs);
            }

            if (!_structuredReplies)
            {
                await SendGuardedAsync((request.Handle, buffer, length), static async (c, s) =>
                {
                    SimpleReplyHeader.Write(c._sendScratch, NbdError.None, s.Handle);
                    await c.SendLockedAsync(new(c._sendScratch, 0, SimpleReplyHeader.Size), new(s.buffer, 0, s.length)).ConfigureAwait(false);
                }).ConfigureAwait(false);
            }
            else if (runs is null)
            {
                runs = ArrayPool<ReadRun>.Shared.Rent(1);
                runs[0] = new ReadRun(0, length, false);
                await SendReadChunksAsync(request.Handle, request.Offset, buffer, runs, 1).ConfigureAwait(false);
            }
            else
            {
                await SendReadChunksAsync(request.Handle, request.Offset, buffer, runs, runCount).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            if (runs is not null)
            {
                ArrayPool<ReadRun>.Shared.Return(runs);
            }
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

    private ValueTask SendReadChunksAsync(ulong handle, ulong offset, byte[] data, ReadRun[] runs, int runCount)
        => SendGuardedAsync((handle, offset, data, runs, runCount), static async (c, s) =>
        {
            // Small chunk headers (and whole hole chunks) gather in the scratch buffer and go out with the next
            // data run, so a reply costs about one send per data run.
            byte[] scratch = c._sendScratch;
            int pending = 0;
            for (int i = 0; i < s.runCount; i++)
            {
                ReadRun run = s.runs[i];
                NbdReplyFlags flags = i == s.runCount - 1 ? NbdReplyFlags.Done : NbdReplyFlags.None;
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
                    await c.SendLockedAsync(new(scratch, 0, pending), new(s.data, run.Start, run.Length)).ConfigureAwait(false);
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
