using System.Buffers.Binary;
using System.IO.Compression;
using System.IO.Hashing;
using K4os.Compression.LZ4;
using ZstdSharp;

namespace Cbd.Core.Compression;

/// <summary>Compression algorithm ids, as stored in the header and in each compressed lblk's first byte.</summary>
public enum CompressionAlgorithm : byte
{
    Lz4 = 1,
    Zlib = 2,
    Zstd = 3,
}

/// <summary>Valid levels per algorithm (docs/FORMAT.md, "Header": the level field).</summary>
public static class CodecLimits
{
    public static (int Min, int Max, int Default) Levels(CompressionAlgorithm algorithm) => algorithm switch
    {
        CompressionAlgorithm.Lz4 => (0, 12, 0),   // 0-2 fast LZ4, 3-12 LZ4 HC
        CompressionAlgorithm.Zlib => (1, 9, 6),
        CompressionAlgorithm.Zstd => (1, 22, 3),
        _ => throw new InvalidDataException($"compression algorithm: {(byte)algorithm}, expected 1 (lz4), 2 (zlib) or 3 (zstd)"),
    };

    /// <summary>Throws <see cref="InvalidDataException"/> when the algorithm or level is not valid.</summary>
    public static void Validate(CompressionAlgorithm algorithm, int level, string where)
    {
        if (algorithm is not (CompressionAlgorithm.Lz4 or CompressionAlgorithm.Zlib or CompressionAlgorithm.Zstd))
            throw new InvalidDataException($"{where} compression algorithm: {(byte)algorithm}, expected 1 (lz4), 2 (zlib) or 3 (zstd)");
        var (min, max, _) = Levels(algorithm);
        if (level < min || level > max)
            throw new InvalidDataException($"{where} compression level: {level} for {algorithm.ToString().ToLowerInvariant()}, expected {min}..{max}");
    }
}

/// <summary>
/// Compresses one lblk into a bounded buffer and decompresses it back. Implementations are stateless or
/// thread-safe: the engine calls them from many threads at once.
/// </summary>
public abstract class Codec
{
    public abstract CompressionAlgorithm Algorithm { get; }

    /// <summary>
    /// Compresses <paramref name="source"/> into <paramref name="destination"/>; returns the compressed
    /// length, or -1 when it does not fit (the caller then stores the lblk uncompressed).
    /// </summary>
    public abstract int Compress(ReadOnlySpan<byte> source, Span<byte> destination);

    /// <summary>
    /// Decompresses <paramref name="source"/>; returns false unless it yields exactly
    /// <paramref name="destination"/>.Length bytes.
    /// </summary>
    public abstract bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination);

    /// <summary>
    /// Decompresses at least the first <paramref name="prefix"/> bytes of what <paramref name="source"/> holds into
    /// <paramref name="destination"/> (room for all of it); false when they do not decode. Codecs that cannot stop early
    /// decode everything, and then also fail unless it is exactly <paramref name="destination"/>.Length bytes.
    /// </summary>
    public virtual bool TryDecompressPrefix(ReadOnlySpan<byte> source, Span<byte> destination, int prefix) =>
        TryDecompress(source, destination);

    /// <summary>A codec for writing at <paramref name="level"/>.</summary>
    public static Codec Create(CompressionAlgorithm algorithm, int level)
    {
        CodecLimits.Validate(algorithm, level, "requested");
        return algorithm switch
        {
            CompressionAlgorithm.Lz4 => NativeLz4Codec.IsAvailable ? new NativeLz4Codec(level) : new Lz4Codec(level),
            CompressionAlgorithm.Zlib => new ZlibCodec(level),
            _ => new ZstdCodec(level),
        };
    }

    /// <summary>
    /// The codec for lblks written back while writes outrun compression (a merge of the write log under pressure), to be
    /// recompressed with the device's codec once it is idle: LZ4 in fast mode at acceleration 8, whatever the device's
    /// algorithm (each stored lblk names its own). Measured on 64 KiB lblks of an ext4 image of libraries and docs: 50 us
    /// and 6.6 pblks an lblk against 65 us and 5.7 at acceleration 1; half of them replaced by random 4 KiB blocks, 28 us
    /// and 11.8 pblks against 40 us and 11.3. Null when only the managed LZ4 is there, which has no acceleration.
    /// </summary>
    public static Codec? CreateFast() => NativeLz4Codec.IsAvailable ? new NativeLz4Codec(0, FastAcceleration) : null;

    /// <summary>LZ4's acceleration for <see cref="CreateFast"/>: at 32, fewer CPU cycles bought less than the larger writes cost.</summary>
    public const int FastAcceleration = 8;

    /// <summary>A codec able to read what any level of <paramref name="algorithm"/> wrote, or null for an unknown id.</summary>
    public static Codec? ForReading(byte algorithm) => (CompressionAlgorithm)algorithm switch
    {
        CompressionAlgorithm.Lz4 => s_lz4Reader,
        CompressionAlgorithm.Zlib => s_zlibReader,
        CompressionAlgorithm.Zstd => s_zstdReader,
        _ => null,
    };

    private static readonly Codec s_lz4Reader = NativeLz4Codec.IsAvailable ? new NativeLz4Codec(0) : new Lz4Codec(0);
    private static readonly Codec s_zlibReader = new ZlibCodec(6);
    private static readonly Codec s_zstdReader = new ZstdCodec(3);
}

internal sealed class Lz4Codec(int level) : Codec
{
    private readonly LZ4Level _level = (LZ4Level)level;

    public override CompressionAlgorithm Algorithm => CompressionAlgorithm.Lz4;

    public override int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        int n = LZ4Codec.Encode(source, destination, _level);
        return n <= 0 ? -1 : n;
    }

    public override bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination) =>
        LZ4Codec.Decode(source, destination) == destination.Length;

    public override bool TryDecompressPrefix(ReadOnlySpan<byte> source, Span<byte> destination, int prefix) =>
        LZ4Codec.PartialDecode(source, destination[..prefix]) == prefix;
}

internal sealed class ZstdCodec(int level) : Codec
{
    // ZstdSharp contexts are not thread-safe and hold hundreds of KiB each. They are pooled and shared by
    // all threads rather than kept one per thread: a busy server runs dozens of pool threads, and per-thread
    // contexts cost it about 15 MiB more at peak than with LZ4.
    private static readonly ContextPool<Decompressor> s_decompressors = new(() => new Decompressor());
    private readonly ContextPool<Compressor> _compressors = new(() => new Compressor(level));

    public override CompressionAlgorithm Algorithm => CompressionAlgorithm.Zstd;

    public override int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var compressor = _compressors.Rent();
        try
        {
            return compressor.TryWrap(source, destination, out int written) ? written : -1;
        }
        finally
        {
            _compressors.Return(compressor);
        }
    }

    public override bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        var decompressor = s_decompressors.Rent();
        try
        {
            return decompressor.TryUnwrap(source, destination, out int written) && written == destination.Length;
        }
        catch (ZstdException)
        {
            return false;
        }
        finally
        {
            s_decompressors.Return(decompressor);
        }
    }

    /// <summary>Up to two contexts per core kept for reuse; more are made when needed and disposed after.</summary>
    private sealed class ContextPool<T>(Func<T> create) where T : class, IDisposable
    {
        private readonly BoundedStack<T> _free = new(2 * Environment.ProcessorCount);

        public T Rent() => _free.TryPop(out var context) ? context : create();

        public void Return(T context)
        {
            if (!_free.TryPush(context))
                context.Dispose();
        }
    }
}

internal sealed class ZlibCodec(int level) : Codec
{
    public override CompressionAlgorithm Algorithm => CompressionAlgorithm.Zlib;

    public override unsafe int Compress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (destination.IsEmpty)
            return -1; // even empty input has a zlib header; and an empty span pins to null, which the stream refuses
        fixed (byte* dst = destination)
        {
            using var output = new UnmanagedMemoryStream(dst, 0, destination.Length, FileAccess.Write);
            try
            {
                using (var zlib = new ZLibStream(output, new ZLibCompressionOptions { CompressionLevel = level }, leaveOpen: true))
                    zlib.Write(source);
                return (int)output.Position;
            }
            catch (NotSupportedException)
            {
                return -1; // the output stream is full: the data does not compress enough
            }
        }
    }

    public override unsafe bool TryDecompress(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        if (source.IsEmpty)
            return false; // not a zlib stream; and an empty span pins to null, which the stream refuses
        fixed (byte* src = source)
        {
            using var input = new UnmanagedMemoryStream(src, source.Length);
            try
            {
                using var zlib = new ZLibStream(input, CompressionMode.Decompress);
                int total = 0;
                while (total < destination.Length)
                {
                    int n = zlib.Read(destination[total..]);
                    if (n == 0)
                        return false;
                    total += n;
                }
                Span<byte> extra = stackalloc byte[1];
                // A stream cut inside its Adler-32 trailer still inflates in full and unchecked: check the trailer here.
                return zlib.Read(extra) == 0 && source.Length >= 6 &&
                       BinaryPrimitives.ReadUInt32BigEndian(source[^4..]) == Adler32.HashToUInt32(destination);
            }
            catch (Exception e) when (e is InvalidDataException or IOException)
            {
                return false; // corrupt stream; some inflate errors surface as an IOException (ZLibException)
            }
        }
    }
}
