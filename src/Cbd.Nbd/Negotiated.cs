using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>The block size constraints announced with NBD_INFO_BLOCK_SIZE.</summary>
internal readonly record struct BlockSizeConstraints(uint Minimum, uint Preferred, uint Maximum);

/// <summary>
/// What option haggling agreed, fixed from the moment the client enters the transmission phase (NBD_OPT_GO or
/// NBD_OPT_EXPORT_NAME); the transmission phase only reads it. Extended headers are never negotiated.
/// </summary>
/// <param name="StructuredReplies">NBD_OPT_STRUCTURED_REPLY was acknowledged.</param>
/// <param name="AllocationContextSelected"><c>base:allocation</c> was selected by the last NBD_OPT_SET_META_CONTEXT.</param>
/// <param name="NoZeroes">The client set NBD_FLAG_C_NO_ZEROES.</param>
/// <param name="Tls">NBD_OPT_STARTTLS succeeded: the options after it, and the transmission phase, go over TLS.</param>
/// <param name="TransmissionFlags">The export's flags as sent to the client.</param>
/// <param name="BlockSize">The block size constraints the client was told, or would have been.</param>
internal sealed record Negotiated(
    bool StructuredReplies,
    bool AllocationContextSelected,
    bool NoZeroes,
    bool Tls,
    NbdTransmissionFlags TransmissionFlags,
    BlockSizeConstraints BlockSize);
