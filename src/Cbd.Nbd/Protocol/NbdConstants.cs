namespace Cbd.Nbd.Protocol;

/// <summary>
/// Magic numbers and fixed limits of the NBD protocol (doc/proto.md of the NBD project). Every value
/// here is sent on the wire big-endian.
/// </summary>
public static class NbdMagic
{
    /// <summary>ASCII "NBDMAGIC": opens the server greeting.</summary>
    public const ulong InitPassword = 0x4e42444d41474943;

    /// <summary>ASCII "IHAVEOPT": second word of the newstyle greeting and the magic of every option request.</summary>
    public const ulong IHaveOpt = 0x49484156454F5054;

    /// <summary>Magic of every option reply in fixed newstyle negotiation.</summary>
    public const ulong OptionReply = 0x0003e889045565a9;

    public const uint Request = 0x25609513;
    public const uint SimpleReply = 0x67446698;
    public const uint StructuredReply = 0x668e33ef;
}

/// <summary>Limits this server enforces; docs/NBD.md explains each.</summary>
public static class NbdLimits
{
    /// <summary>
    /// Largest READ, WRITE, CACHE or WRITE_ZEROES length accepted, advertised as the maximum block size.
    /// 2^25 is the size the spec says a client may always send without it being deemed a denial of service.
    /// </summary>
    public const int MaxRequestLength = 32 << 20;

    /// <summary>Longest string (export name, query, message) the spec allows.</summary>
    public const int MaxStringLength = 4096;

    /// <summary>
    /// Largest option payload read into memory. The largest legitimate option is a meta context request
    /// carrying a 4 KiB name and a few 4 KiB queries; anything longer is skipped unread and refused.
    /// </summary>
    public const int MaxOptionLength = 64 << 10;

    /// <summary>Upper bound on descriptors in one block status reply (the spec lets a server return fewer).</summary>
    public const int MaxBlockStatusDescriptors = 16 << 10;
}

/// <summary>Handshake flags, sent by the server after the greeting magic (16 bits).</summary>
[Flags]
public enum NbdHandshakeFlags : ushort
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

/// <summary>Client flags, the client's 32-bit answer to the greeting.</summary>
[Flags]
public enum NbdClientFlags : uint
{
    None = 0,
    FixedNewstyle = 1 << 0,
    NoZeroes = 1 << 1,
}

/// <summary>Transmission flags describing an export (16 bits).</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0,
    HasFlags = 1 << 0,
    ReadOnly = 1 << 1,
    SendFlush = 1 << 2,
    SendFua = 1 << 3,
    Rotational = 1 << 4,
    SendTrim = 1 << 5,
    SendWriteZeroes = 1 << 6,
    SendDf = 1 << 7,
    CanMultiConn = 1 << 8,
    SendResize = 1 << 9,
    SendCache = 1 << 10,
    SendFastZero = 1 << 11,
    BlockStatusPayload = 1 << 12,
}

/// <summary>Option types of the handshake phase (32 bits).</summary>
public enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    PeekExport = 4,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
    ExtendedHeaders = 11,
}

/// <summary>Option reply types (32 bits); errors have bit 31 set.</summary>
public enum NbdOptionReply : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrUnsup = 0x8000_0001,
    ErrPolicy = 0x8000_0002,
    ErrInvalid = 0x8000_0003,
    ErrPlatform = 0x8000_0004,
    ErrTlsReqd = 0x8000_0005,
    ErrUnknown = 0x8000_0006,
    ErrShutdown = 0x8000_0007,
    ErrBlockSizeReqd = 0x8000_0008,
    ErrTooBig = 0x8000_0009,
}

/// <summary>Information types inside an <see cref="NbdOptionReply.Info"/> reply (16 bits).</summary>
public enum NbdInfoType : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

/// <summary>Request types of the transmission phase (16 bits).</summary>
public enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
}

/// <summary>Command flags of a request (16 bits).</summary>
[Flags]
public enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 1 << 0,
    NoHole = 1 << 1,
    DontFragment = 1 << 2,
    RequestOne = 1 << 3,
    FastZero = 1 << 4,
}

/// <summary>Structured reply chunk types (16 bits); error chunks have bit 15 set.</summary>
public enum NbdReplyType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    Error = 0x8001,
    ErrorOffset = 0x8002,
}

/// <summary>Structured reply chunk flags (16 bits).</summary>
[Flags]
public enum NbdReplyFlags : ushort
{
    None = 0,
    Done = 1 << 0,
}

/// <summary>Error values of replies (32 bits). The spec fixes them to these Linux errno numbers.</summary>
public enum NbdError : uint
{
    None = 0,
    Perm = 1,
    IO = 5,
    NoMem = 12,
    Invalid = 22,
    NoSpace = 28,
    Overflow = 75,
    NotSupported = 95,
    Shutdown = 108,
}

/// <summary>Status flags of the <c>base:allocation</c> metadata context.</summary>
[Flags]
public enum NbdAllocationState : uint
{
    None = 0,
    Hole = 1 << 0,
    Zero = 1 << 1,
}
