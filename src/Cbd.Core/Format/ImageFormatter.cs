using Cbd.Core.Compression;
using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>Parameters of a new device.</summary>
public sealed record FormatOptions
{
    /// <summary>Logical lblk size when none is asked for (docs/FORMAT.md, "Terms": default 64 KiB).</summary>
    public const int DefaultLblkSize = 64 * 1024;

    /// <summary>Logical size in bytes, rounded down to whole lblks; default <see cref="ImageFormatter.DefaultLogicalFactor"/> x the physical size.</summary>
    public long? LogicalSize { get; init; }

    /// <summary>The largest logical size tune or resize can give the image later (its lbats hold that many lblks); default the logical size.</summary>
    public long? MaxLogicalSize { get; init; }

    /// <summary>Logical block size: a power of two from 4 KiB; the largest allowed depends on the device size.</summary>
    public int LblkSize { get; init; } = DefaultLblkSize;

    public CompressionAlgorithm Algorithm { get; init; } = CompressionAlgorithm.Lz4;

    /// <summary>Compression level; default per algorithm (lz4 0, zlib 6, zstd 3).</summary>
    public int? Level { get; init; }

    /// <summary>Store all-zero lblks as unallocated.</summary>
    public bool ZeroDetect { get; init; } = true;

    /// <summary>Keep a CRC32C of each stored lblk in its lblk_alloc entry and verify it on every read.</summary>
    public bool LblkChecksums { get; init; } = true;

    /// <summary>
    /// Bytes of the write log at the end of the device, rounded down to whole pblks (docs/FORMAT.md, "The write
    /// log"): writes smaller than an lblk are appended there and merged into their lblks later. 0, the default
    /// here, formats a version 1.0 image without one; <see cref="ImageFormatter.DefaultLogBytes"/> is the size
    /// `cbd format` gives.
    /// </summary>
    public long LogSize { get; init; }
}

/// <summary>
/// Makes a new image: <see cref="Plan"/> turns a physical size and <see cref="FormatOptions"/> into a
/// header (docs/FORMAT.md, "Choosing nr_zones and lblk_per_zone at format"), <see cref="FormatAsync"/>
/// writes it with zeroed pbats and lbats.
/// </summary>
public static class ImageFormatter
{
    /// <summary>The default logical size is this many times the physical size (docs/FORMAT.md, "Choosing nr_zones and lblk_per_zone at format").</summary>
    public const int DefaultLogicalFactor = 3;

    /// <summary>The default write log: this fraction of the physical size...</summary>
    public const int DefaultLogDivisor = 8;

    /// <summary>...but at most this much.</summary>
    public const long MaxDefaultLogBytes = 1L << 30;

    /// <summary>
    /// The write log `cbd format` gives a device of <paramref name="physicalBytes"/>: an eighth of it, at most
    /// 1 GiB, and no log where that is less than the smallest log <paramref name="lblkSize"/> allows.
    /// </summary>
    public static long DefaultLogBytes(long physicalBytes, int lblkSize)
    {
        long bytes = Math.Min(physicalBytes / DefaultLogDivisor, MaxDefaultLogBytes) / Layout.PblkSize * Layout.PblkSize;
        return (ulong)bytes / Layout.PblkSize < Geometry.MinLogPblks(lblkSize) ? 0 : bytes;
    }

    /// <summary>
    /// The header a format of <paramref name="physicalBytes"/> with <paramref name="options"/> writes.
    /// </summary>
    /// <exception cref="ArgumentException">The sizes or parameters cannot be formatted; the message says the limit.</exception>
    public static Header Plan(long physicalBytes, FormatOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        int level = options.Level ?? CodecLimits.Levels(options.Algorithm).Default;
        try
        {
            CodecLimits.Validate(options.Algorithm, level, "requested");
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException(e.Message, nameof(options), e);
        }
        long logical = options.LogicalSize ?? physicalBytes / Layout.PblkSize * Layout.PblkSize * DefaultLogicalFactor;
        var flags = (options.ZeroDetect ? HeaderFlags.ZeroDetect : 0) | (options.LblkChecksums ? HeaderFlags.LblkCrc : 0);
        if (options.LogSize < 0)
            throw new ArgumentException($"log size {options.LogSize}: must not be negative", nameof(options));
        ulong logPblks = (ulong)(options.LogSize / Layout.PblkSize);
        ulong logId = logPblks == 0 ? 0 : NewLogId();
        return Geometry.Plan(physicalBytes, logical, options.LblkSize, options.Algorithm, level, flags, options.MaxLogicalSize, logPblks, logId);
    }

    /// <summary>A random, non-zero log id: no record of another image (or of an earlier format of this one) matches it.</summary>
    public static ulong NewLogId()
    {
        ulong id;
        do
        {
            id = BitConverter.ToUInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(sizeof(ulong)));
        } while (id == 0);
        return id;
    }

    /// <summary>
    /// Formats <paramref name="store"/> (its whole length is the physical size). Only the header and the
    /// metadata pblks are written; data pblks are left as they are.
    /// </summary>
    /// <exception cref="ArgumentException">The sizes or parameters cannot be formatted; the message says the limit.</exception>
    public static async ValueTask<Header> FormatAsync(IBackingStore store, FormatOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        long physical = store.Length;
        var header = Plan(physical, options);
        var geometry = Geometry.FromHeader(header, physical);

        // Clear the header first: an interrupted format must not leave an old header over new metadata.
        await store.ZeroRangeAsync(0, Layout.HeaderSize, cancellationToken).ConfigureAwait(false);
        await store.FlushAsync(cancellationToken).ConfigureAwait(false);
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            long start = (long)geometry.ZoneStart(zone) * Layout.PblkSize;
            await store.ZeroRangeAsync(start, (long)(1 + geometry.LbatPblks) * Layout.PblkSize, cancellationToken).ConfigureAwait(false);
        }
        await store.FlushAsync(cancellationToken).ConfigureAwait(false);
        await header.WriteAsync(store, cancellationToken).ConfigureAwait(false);
        return header;
    }
}
