using System.Buffers.Binary;

namespace Cbd.Nbd.Protocol;

/// <summary>A transmission request header (28 bytes; a WRITE is followed by <see cref="Length"/> bytes of data).</summary>
/// <param name="Flags">Command flags, unchecked: may hold bits this server rejects.</param>
/// <param name="Command">Raw request type; may be one this server does not know.</param>
/// <param name="Handle">Opaque value echoed in every reply to this request.</param>
/// <param name="Offset">Byte offset, unchecked against the export size.</param>
/// <param name="Length">Byte length, unchecked.</param>
public readonly record struct NbdRequest(NbdCommandFlags Flags, NbdCommand Command, ulong Handle, ulong Offset, uint Length)
{
    private static class Field
    {
        internal const int Magic = 0;                                     // 0x00-0x03 u32 NBD_REQUEST_MAGIC
        internal const int Flags = Magic + sizeof(uint);                  // 0x04-0x05 u16
        internal const int Type = Flags + sizeof(ushort);                 // 0x06-0x07 u16
        internal const int Handle = Type + sizeof(ushort);                // 0x08-0x0f u64
        internal const int Offset = Handle + sizeof(ulong);               // 0x10-0x17 u64
        internal const int Length = Offset + sizeof(ulong);               // 0x18-0x1b u32
        internal const int End = Length + sizeof(uint);
    }

    public const int Size = Field.End;

    /// <summary>Parses a request header; false for a short buffer or a wrong magic.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out NbdRequest request)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt32BigEndian(source[Field.Magic..]) != NbdMagic.Request)
        {
            request = default;
            return false;
        }
        request = new NbdRequest(
            (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(source[Field.Flags..]),
            (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(source[Field.Type..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[Field.Handle..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[Field.Offset..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[Field.Length..]));
        return true;
    }
}

/// <summary>A simple reply (16 bytes; a successful READ is followed by its data).</summary>
public static class SimpleReplyHeader
{
    private static class Field
    {
        internal const int Magic = 0;                                     // 0x00-0x03 u32 NBD_SIMPLE_REPLY_MAGIC
        internal const int Error = Magic + sizeof(uint);                  // 0x04-0x07 u32
        internal const int Handle = Error + sizeof(uint);                 // 0x08-0x0f u64
        internal const int End = Handle + sizeof(ulong);
    }

    public const int Size = Field.End;

    public static void Write(Span<byte> destination, NbdError error, ulong handle)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.Magic..], NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.Error..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[Field.Handle..], handle);
    }
}

/// <summary>The header of one structured reply chunk (20 bytes, then <c>length</c> bytes of payload).</summary>
public static class StructuredReplyHeader
{
    private static class Field
    {
        internal const int Magic = 0;                                     // 0x00-0x03 u32 NBD_STRUCTURED_REPLY_MAGIC
        internal const int Flags = Magic + sizeof(uint);                  // 0x04-0x05 u16
        internal const int Type = Flags + sizeof(ushort);                 // 0x06-0x07 u16
        internal const int Handle = Type + sizeof(ushort);                // 0x08-0x0f u64
        internal const int Length = Handle + sizeof(ulong);               // 0x10-0x13 u32
        internal const int End = Length + sizeof(uint);
    }

    public const int Size = Field.End;

    public static void Write(Span<byte> destination, NbdReplyFlags flags, NbdReplyType type, ulong handle, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.Magic..], NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(destination[Field.Flags..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[Field.Type..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[Field.Handle..], handle);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.Length..], length);
    }
}

/// <summary>Payloads of structured reply chunks, each written right after its <see cref="StructuredReplyHeader"/>.</summary>
public static class ChunkPayload
{
    private static class HoleField
    {
        internal const int Offset = 0;                                    // 0x00-0x07 u64
        internal const int HoleSize = Offset + sizeof(ulong);             // 0x08-0x0b u32, nonzero
        internal const int End = HoleSize + sizeof(uint);
    }

    private static class ErrorField
    {
        internal const int Error = 0;                                     // 0x00-0x03 u32, nonzero
        internal const int MessageLength = Error + sizeof(uint);          // 0x04-0x05 u16
        internal const int Message = MessageLength + sizeof(ushort);      // 0x06-... UTF-8, no NUL
    }

    private static class DescriptorField
    {
        internal const int Length = 0;                                    // 0x00-0x03 u32, nonzero
        internal const int Status = Length + sizeof(uint);                // 0x04-0x07 u32
        internal const int End = Status + sizeof(uint);
    }

    /// <summary>Payload of an <see cref="NbdReplyType.OffsetHole"/> chunk.</summary>
    public const int OffsetHoleSize = HoleField.End;

    /// <summary>Bytes of an <see cref="NbdReplyType.OffsetData"/> payload before its data: the 64-bit offset.</summary>
    public const int OffsetDataPrefixSize = sizeof(ulong);

    /// <summary>Bytes of an <see cref="NbdReplyType.Error"/> payload before its message.</summary>
    public const int ErrorPrefixSize = ErrorField.Message;

    /// <summary>Bytes of a <see cref="NbdReplyType.BlockStatus"/> payload before its descriptors: the context id.</summary>
    public const int BlockStatusPrefixSize = sizeof(uint);

    public const int BlockStatusDescriptorSize = DescriptorField.End;

    public static void WriteOffsetHole(Span<byte> destination, ulong offset, uint holeSize)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination[HoleField.Offset..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[HoleField.HoleSize..], holeSize);
    }

    public static void WriteOffsetDataPrefix(Span<byte> destination, ulong offset)
        => BinaryPrimitives.WriteUInt64BigEndian(destination, offset);

    /// <summary>Writes an error payload; <paramref name="message"/> is UTF-8 of at most <see cref="NbdLimits.MaxStringLength"/> bytes.</summary>
    public static int WriteError(Span<byte> destination, NbdError error, ReadOnlySpan<byte> message)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination[ErrorField.Error..], (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(destination[ErrorField.MessageLength..], (ushort)message.Length);
        message.CopyTo(destination[ErrorField.Message..]);
        return ErrorField.Message + message.Length;
    }

    public static void WriteBlockStatusPrefix(Span<byte> destination, uint contextId)
        => BinaryPrimitives.WriteUInt32BigEndian(destination, contextId);

    public static void WriteBlockStatusDescriptor(Span<byte> destination, uint length, NbdAllocationState status)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination[DescriptorField.Length..], length);
        BinaryPrimitives.WriteUInt32BigEndian(destination[DescriptorField.Status..], (uint)status);
    }
}
