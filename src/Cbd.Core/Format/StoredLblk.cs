using Cbd.Core.Compression;

namespace Cbd.Core.Format;

/// <summary>
/// The one encoder and decoder of an lblk's stored form (docs/FORMAT.md, "lblk_alloc entries"): what its
/// pblks hold, and the length and crc fields of the entry that names them. Compressed: the algorithm id
/// byte, then the codec's output, at most lblk size - 4096 bytes in all; otherwise the lblk's bytes as they
/// are. The last pblk is padded with zeros. The crc is CRC32C over the lblk number (u64 little-endian) and
/// the stored bytes. Works on the caller's buffers only: nothing is allocated per lblk.
/// </summary>
public static class StoredLblk
{
    /// <summary>Bytes before the codec's output in a compressed lblk: the algorithm id.</summary>
    public const int AlgorithmIdBytes = 1;

    /// <summary>
    /// True when the lblk is stored as unallocated (length 0, no pblks): with <see cref="HeaderFlags.ZeroDetect"/>,
    /// an lblk of zeros.
    /// </summary>
    public static bool StoresAsUnallocated(ReadOnlySpan<byte> data, bool zeroDetect) => zeroDetect && !data.ContainsAnyExcept((byte)0);

    /// <summary>
    /// Encodes one lblk (<paramref name="data"/>, lblk size bytes) into <paramref name="destination"/> (at least
    /// lblk size bytes): compressed with <paramref name="codec"/> when that saves a pblk, else as it is; the
    /// bytes from the stored form's end to its last pblk's end are zeroed. Returns the entry's length and crc
    /// (pblks still to be allocated) and how many bytes and pblks to write.
    /// </summary>
    public static StoredForm Encode(LblkAllocFormat format, Codec codec, ulong lblk, ReadOnlySpan<byte> data, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(codec);
        if (data.Length != format.LblkSize)
            throw new ArgumentException($"lblk data: {data.Length} bytes, expected {format.LblkSize}", nameof(data));
        if (destination.Length < format.LblkSize)
            throw new ArgumentException($"destination: {destination.Length} bytes, expected at least {format.LblkSize}", nameof(destination));
        // A 4 KiB lblk can never save a pblk: it is always stored as it is.
        int room = format.MaxCompressedLength - AlgorithmIdBytes;
        int compressed = room < 1 ? -1 : codec.Compress(data, destination.Slice(AlgorithmIdBytes, room));
        uint length;
        int storedBytes;
        if (compressed > 0)
        {
            destination[0] = (byte)codec.Algorithm;
            storedBytes = AlgorithmIdBytes + compressed;
            length = (uint)storedBytes;
        }
        else
        {
            data.CopyTo(destination);
            storedBytes = format.LblkSize;
            length = format.UncompressedLength;
        }
        uint crc = format.WithCrc ? Checksum(lblk, destination[..storedBytes]) : 0;
        int pblks = format.PblksFor(length);
        destination[storedBytes..(pblks * Layout.PblkSize)].Clear();
        return new StoredForm(length, crc, storedBytes, pblks);
    }

    /// <summary>
    /// The pblks <see cref="Encode"/> would store <paramref name="data"/> in, without the crc or padding;
    /// <paramref name="scratch"/> takes the compressed bytes (at least lblk size bytes).
    /// </summary>
    public static int PblksNeeded(LblkAllocFormat format, Codec codec, ReadOnlySpan<byte> data, bool zeroDetect, Span<byte> scratch)
    {
        ArgumentNullException.ThrowIfNull(codec);
        if (StoresAsUnallocated(data, zeroDetect))
            return 0;
        int room = format.MaxCompressedLength - AlgorithmIdBytes;
        if (room < 1)
            return format.PblksPerLblk;
        int compressed = codec.Compress(data, scratch.Slice(AlgorithmIdBytes, room));
        return compressed > 0 ? format.PblksFor((uint)(AlgorithmIdBytes + compressed)) : format.PblksPerLblk;
    }

    /// <summary>
    /// Decodes the stored form of an allocated entry: <paramref name="stored"/> holds its pblks' bytes (at
    /// least <see cref="LblkAllocFormat.StoredBytes"/> of its length), <paramref name="data"/> receives the
    /// lblk (lblk size bytes). The crc, when the format keeps one, is verified before anything is
    /// decompressed; on failure <paramref name="data"/> holds nothing meaningful. With <paramref name="prefix"/>, only that
    /// many leading bytes of <paramref name="data"/> are meant (LZ4 stops decoding there): a format with a crc only, since
    /// without one a damaged end of the stored form would go unseen.
    /// </summary>
    public static StoredLblkResult Decode(LblkAllocFormat format, ulong lblk, in LblkAlloc alloc, ReadOnlySpan<byte> stored, Span<byte> data, int prefix = 0)
    {
        if (prefix != 0 && (!format.WithCrc || prefix < 0 || prefix > format.LblkSize))
            throw new ArgumentOutOfRangeException(nameof(prefix), prefix, "a prefix needs a format with a crc, and at most one lblk");
        if (!alloc.IsAllocated)
            throw new ArgumentException($"lblk {lblk}: an unallocated entry has no stored form", nameof(alloc));
        int storedBytes = format.StoredBytes(alloc.Length);
        if (stored.Length < storedBytes)
            throw new ArgumentException($"stored: {stored.Length} bytes, expected at least {storedBytes}", nameof(stored));
        var bytes = stored[..storedBytes];
        // A patched form keeps a crc of its patch area and one of its base, so that a merge need not read the base.
        if (alloc.Length != format.UncompressedLength && PatchedLblk.IsPatched(bytes))
            return PatchedLblk.Decode(format, lblk, alloc.Crc, bytes, data, prefix);
        if (format.WithCrc)
        {
            uint actual = Checksum(lblk, bytes);
            if (actual != alloc.Crc)
                return new StoredLblkResult(StoredLblkFault.ChecksumMismatch, storedBytes, actual, bytes[0]);
        }
        if (alloc.Length == format.UncompressedLength)
        {
            (prefix == 0 ? bytes : bytes[..prefix]).CopyTo(data);
            return new StoredLblkResult(StoredLblkFault.None, storedBytes, alloc.Crc, bytes[0]);
        }
        var codec = Codec.ForReading(bytes[0]);
        bool ok = codec is not null && (prefix == 0
            ? codec.TryDecompress(bytes[AlgorithmIdBytes..], data[..format.LblkSize])
            : codec.TryDecompressPrefix(bytes[AlgorithmIdBytes..], data[..format.LblkSize], prefix));
        return new StoredLblkResult(ok ? StoredLblkFault.None : StoredLblkFault.Undecodable, storedBytes, alloc.Crc, bytes[0]);
    }

    /// <summary>The crc field of an lblk_alloc entry: CRC32C of the lblk number (u64 little-endian) followed by the stored bytes.</summary>
    public static uint Checksum(ulong lblk, ReadOnlySpan<byte> stored) => Checksums.LblkCrc(lblk, stored);
}

/// <summary>An encoded lblk: the entry's length and crc fields, the stored bytes and the pblks they fill.</summary>
public readonly record struct StoredForm(uint Length, uint Crc, int StoredBytes, int Pblks);

/// <summary>Why a stored lblk cannot be read.</summary>
public enum StoredLblkFault : byte
{
    None,

    /// <summary>The crc over the lblk number and the stored bytes differs from the entry's.</summary>
    ChecksumMismatch,

    /// <summary>An unknown algorithm id, or bytes that do not decompress to exactly one lblk.</summary>
    Undecodable,
}

/// <summary>The outcome of <see cref="StoredLblk.Decode"/>, with what a message about a failure names.</summary>
public readonly record struct StoredLblkResult(StoredLblkFault Fault, int StoredBytes, uint ComputedCrc, byte AlgorithmId)
{
    public bool Ok => Fault == StoredLblkFault.None;
}
