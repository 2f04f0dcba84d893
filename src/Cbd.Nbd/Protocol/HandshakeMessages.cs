using System.Buffers.Binary;

namespace Cbd.Nbd.Protocol;

/// <summary>The server's opening message of fixed newstyle negotiation (18 bytes).</summary>
public static class ServerGreeting
{
    private static class Field
    {
        internal const int InitPassword = 0;                              // 0x00-0x07 u64 "NBDMAGIC"
        internal const int IHaveOpt = InitPassword + sizeof(ulong);       // 0x08-0x0f u64 "IHAVEOPT"
        internal const int HandshakeFlags = IHaveOpt + sizeof(ulong);     // 0x10-0x11 u16
        internal const int End = HandshakeFlags + sizeof(ushort);
    }

    public const int Size = Field.End;

    public static void Write(Span<byte> destination, NbdHandshakeFlags flags)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination[Field.InitPassword..], NbdMagic.InitPassword);
        BinaryPrimitives.WriteUInt64BigEndian(destination[Field.IHaveOpt..], NbdMagic.IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(destination[Field.HandshakeFlags..], (ushort)flags);
    }
}

/// <summary>An option request header sent by the client during negotiation (16 bytes, then <see cref="Length"/> bytes of data).</summary>
/// <param name="Option">Raw option number; may be one this server does not know.</param>
/// <param name="Length">Bytes of option data that follow, unchecked.</param>
public readonly record struct OptionHeader(NbdOption Option, uint Length)
{
    private static class Field
    {
        internal const int Magic = 0;                                     // 0x00-0x07 u64 "IHAVEOPT"
        internal const int Option = Magic + sizeof(ulong);                // 0x08-0x0b u32
        internal const int Length = Option + sizeof(uint);                // 0x0c-0x0f u32
        internal const int End = Length + sizeof(uint);
    }

    public const int Size = Field.End;

    /// <summary>Parses a header; false for a short buffer or a wrong magic.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out OptionHeader header)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt64BigEndian(source[Field.Magic..]) != NbdMagic.IHaveOpt)
        {
            header = default;
            return false;
        }
        header = new OptionHeader(
            (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(source[Field.Option..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[Field.Length..]));
        return true;
    }
}

/// <summary>Header of every option reply in fixed newstyle negotiation (20 bytes, then <c>length</c> bytes of data).</summary>
public static class OptionReplyHeader
{
    private static class Field
    {
        internal const int Magic = 0;                                     // 0x00-0x07 u64 0x3e889045565a9
        internal const int Option = Magic + sizeof(ulong);                // 0x08-0x0b u32, echoes the request
        internal const int ReplyType = Option + sizeof(uint);             // 0x0c-0x0f u32
        internal const int Length = ReplyType + sizeof(uint);             // 0x10-0x13 u32
        internal const int End = Length + sizeof(uint);
    }

    public const int Size = Field.End;

    public static void Write(Span<byte> destination, NbdOption option, NbdOptionReply replyType, uint length)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination[Field.Magic..], NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.Option..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.ReplyType..], (uint)replyType);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Field.Length..], length);
    }
}

/// <summary>
/// The reply that ends negotiation after <see cref="NbdOption.ExportName"/>: size, flags and, unless the
/// client negotiated <see cref="NbdClientFlags.NoZeroes"/>, 124 reserved zero bytes.
/// </summary>
public static class ExportNameReply
{
    private static class Field
    {
        internal const int ExportSize = 0;                                // 0x00-0x07 u64
        internal const int TransmissionFlags = ExportSize + sizeof(ulong); // 0x08-0x09 u16
        internal const int Reserved = TransmissionFlags + sizeof(ushort); // 0x0a-0x85 124 zero bytes
        internal const int End = Reserved + ReservedLength;
    }

    private const int ReservedLength = 124;

    public const int MaxSize = Field.End;

    /// <summary>Writes the reply and returns its length (10, or 134 with the zero padding).</summary>
    public static int Write(Span<byte> destination, ulong exportSize, NbdTransmissionFlags flags, bool noZeroes)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination[Field.ExportSize..], exportSize);
        BinaryPrimitives.WriteUInt16BigEndian(destination[Field.TransmissionFlags..], (ushort)flags);
        if (noZeroes)
        {
            return Field.Reserved;
        }
        destination[Field.Reserved..Field.End].Clear();
        return Field.End;
    }
}

/// <summary>Payloads of <see cref="NbdOptionReply.Info"/> replies; each starts with its 16-bit <see cref="NbdInfoType"/>.</summary>
public static class InfoPayload
{
    private static class ExportField
    {
        internal const int Type = 0;                                      // 0x00-0x01 u16 NBD_INFO_EXPORT
        internal const int ExportSize = Type + sizeof(ushort);            // 0x02-0x09 u64
        internal const int TransmissionFlags = ExportSize + sizeof(ulong); // 0x0a-0x0b u16
        internal const int End = TransmissionFlags + sizeof(ushort);
    }

    private static class BlockSizeField
    {
        internal const int Type = 0;                                      // 0x00-0x01 u16 NBD_INFO_BLOCK_SIZE
        internal const int Minimum = Type + sizeof(ushort);               // 0x02-0x05 u32
        internal const int Preferred = Minimum + sizeof(uint);            // 0x06-0x09 u32
        internal const int Maximum = Preferred + sizeof(uint);            // 0x0a-0x0d u32
        internal const int End = Maximum + sizeof(uint);
    }

    public const int ExportSize = ExportField.End;
    public const int BlockSizeSize = BlockSizeField.End;

    /// <summary>Bytes before the string of an <see cref="NbdInfoType.Name"/> or <see cref="NbdInfoType.Description"/> payload.</summary>
    public const int StringPrefixSize = sizeof(ushort);

    public static void WriteExport(Span<byte> destination, ulong exportSize, NbdTransmissionFlags flags)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination[ExportField.Type..], (ushort)NbdInfoType.Export);
        BinaryPrimitives.WriteUInt64BigEndian(destination[ExportField.ExportSize..], exportSize);
        BinaryPrimitives.WriteUInt16BigEndian(destination[ExportField.TransmissionFlags..], (ushort)flags);
    }

    public static void WriteBlockSize(Span<byte> destination, uint minimum, uint preferred, uint maximum)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination[BlockSizeField.Type..], (ushort)NbdInfoType.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(destination[BlockSizeField.Minimum..], minimum);
        BinaryPrimitives.WriteUInt32BigEndian(destination[BlockSizeField.Preferred..], preferred);
        BinaryPrimitives.WriteUInt32BigEndian(destination[BlockSizeField.Maximum..], maximum);
    }

    /// <summary>Writes the type of a string-valued info; the caller appends the UTF-8 string.</summary>
    public static void WriteStringPrefix(Span<byte> destination, NbdInfoType type)
        => BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)type);
}
