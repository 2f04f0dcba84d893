using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>What a request is checked against: the export, and what the handshake negotiated.</summary>
internal readonly record struct TransmissionState(ulong ExportSize, bool ReadOnly, bool StructuredReplies, bool AllocationContextSelected, bool CanProvision = true);

/// <summary>The checks a request passes before it reaches the device; pure, so that they can be tested and fuzzed without a socket.</summary>
internal static class RequestValidation
{
    /// <summary>
    /// Checks a request before it reaches the device; returns the error to reply with, or
    /// <see cref="NbdError.None"/>. The errno choices follow the spec's "Error values" section.
    /// </summary>
    public static NbdError Validate(in NbdRequest request, in TransmissionState state, out string? message)
    {
        message = null;
        NbdCommand command = request.Command;
        NbdCommandFlags allowed = command switch
        {
            NbdCommand.Read => state.StructuredReplies ? NbdCommandFlags.DontFragment : NbdCommandFlags.None,
            NbdCommand.WriteZeroes => NbdCommandFlags.NoHole | (state.CanProvision ? NbdCommandFlags.FastZero : 0),
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
        if (writes && state.ReadOnly)
        {
            message = "the export is read-only";
            return NbdError.Perm;
        }
        if (command == NbdCommand.BlockStatus && !state.AllocationContextSelected)
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
        if (request.Offset > state.ExportSize || request.Length > state.ExportSize - request.Offset)
        {
            message = $"range at offset {request.Offset} of length {request.Length} is beyond the export size {state.ExportSize}";
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
}
