using System.Buffers.Binary;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd.Tests;

/// <summary>
/// Fuzz targets for the NBD parsers, shaped for a coverage-guided fuzzer (SharpFuzz's
/// <c>static void Fuzz(ReadOnlySpan&lt;byte&gt;)</c>) and run by <see cref="FuzzTests"/> on generated streams.
/// Each cuts a byte stream into messages as the server's reader does, passes every message to the server's
/// own parsing and validation code, and checks what those promise. Any exception is a finding.
/// </summary>
public static class NbdFuzzTargets
{
    private const ulong ExportSize = 1 << 20;

    private static readonly NbdExport s_export = new(new MemoryBlockDevice((long)ExportSize), "disk", readOnly: false, description: null);

    /// <summary>Option haggling: option headers and their data, through the option parsers.</summary>
    public static void FuzzOptions(ReadOnlySpan<byte> stream)
    {
        while (OptionHeader.TryRead(stream, out OptionHeader option))
        {
            stream = stream[OptionHeader.Size..];
            if (option.Length > NbdLimits.MaxOptionLength)
            {
                // The server drops such data unread into any buffer.
                stream = stream[(int)Math.Min(option.Length, (uint)stream.Length)..];
                continue;
            }
            ReadOnlySpan<byte> data = stream[..(int)Math.Min(option.Length, (uint)stream.Length)];
            stream = stream[data.Length..];
            switch (option.Option)
            {
                case NbdOption.Info or NbdOption.Go:
                    if (NbdConnection.TryParseInfoRequest(data, out int nameLength, out _, out _))
                    {
                        // The name the server then slices out must lie inside the data.
                        Check(nameLength >= 0 && sizeof(uint) + nameLength + sizeof(ushort) <= data.Length, "info request name outside its data");
                    }
                    break;
                case NbdOption.ListMetaContext or NbdOption.SetMetaContext:
                    NbdConnection.MetaContextQuery query = NbdConnection.ParseMetaContextQuery(data, option.Option == NbdOption.SetMetaContext, s_export);
                    Check(Enum.IsDefined(query), $"meta context query result {query}");
                    break;
            }
        }
    }

    /// <summary>
    /// Transmission: the first byte picks what the handshake negotiated, then request headers (a WRITE's data
    /// skipped as the server skips it), each through the request validation.
    /// </summary>
    public static void FuzzRequests(ReadOnlySpan<byte> stream)
    {
        if (stream.IsEmpty)
        {
            return;
        }
        var state = new TransmissionState(ExportSize, ReadOnly: (stream[0] & 1) != 0, StructuredReplies: (stream[0] & 2) != 0,
            AllocationContextSelected: (stream[0] & 4) != 0);
        stream = stream[1..];
        while (NbdRequest.TryRead(stream, out NbdRequest request))
        {
            stream = stream[NbdRequest.Size..];
            NbdError error = RequestValidation.Validate(request, state, out string? message);
            Check((error == NbdError.None) == (message is null), $"{request}: error {error} with message \"{message}\"");
            if (error == NbdError.None)
            {
                bool limited = request.Command is NbdCommand.Read or NbdCommand.Write or NbdCommand.Cache;
                Check(!limited || request.Length <= NbdLimits.MaxRequestLength, $"{request} accepted over the maximum length");
                Check(request.Command == NbdCommand.Flush || (request.Offset <= ExportSize && request.Length <= ExportSize - request.Offset), $"{request} accepted beyond the export");
                Check(!state.ReadOnly || request.Command is not (NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes),
                    $"{request} accepted on a read-only export");
                Check(request.Command != NbdCommand.BlockStatus || state.AllocationContextSelected, $"{request} accepted without a meta context");
            }
            if (request.Command == NbdCommand.Write)
            {
                stream = stream[(int)Math.Min(request.Length, (uint)stream.Length)..];
            }
        }
    }

    /// <summary>Builds an option message; <paramref name="declaredLength"/> may disagree with the data, as a hostile client's may.</summary>
    public static byte[] Option(uint option, byte[] data, uint? declaredLength = null)
    {
        byte[] message = new byte[OptionHeader.Size + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(message, RawNbdClient.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(12), declaredLength ?? (uint)data.Length);
        data.CopyTo(message, OptionHeader.Size);
        return message;
    }

    /// <summary>Builds a request header followed by <paramref name="payload"/>, whatever <paramref name="length"/> says.</summary>
    public static byte[] Request(ushort flags, ushort command, ulong handle, ulong offset, uint length, byte[] payload)
    {
        byte[] message = new byte[NbdRequest.Size + payload.Length];
        BinaryPrimitives.WriteUInt32BigEndian(message, RawNbdClient.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(message.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(message.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(message.AsSpan(8), handle);
        BinaryPrimitives.WriteUInt64BigEndian(message.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(24), length);
        payload.CopyTo(message, NbdRequest.Size);
        return message;
    }

    private static void Check(bool condition, string message)
    {
        if (!condition)
        {
            throw new InvalidOperationException(message);
        }
    }
}
