using System.Buffers.Binary;
using System.Numerics;
using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>
/// The pbat on disk (docs/FORMAT.md, "pbat"): zone z's pbat is pblk S(z), one bit per data pblk of the zone,
/// bit i (bit i mod 8 of byte i / 8) set when data pblk D(z) + i is in use; bits at or past the zone's data
/// pblk count are 0. Read as little-endian u64 words, bit i is bit i mod 64 of word i / 64: the same bits.
/// </summary>
public static class PbatLayout
{
    /// <summary>Bytes of one zone's pbat: one pblk.</summary>
    public const int Bytes = Layout.PblkSize;

    /// <summary>Bits of one zone's pbat: one per data pblk of a full zone.</summary>
    public const int Bits = Bytes * BitsPerByte;

    /// <summary>Bits per u64 word of the in-memory form.</summary>
    public const int BitsPerWord = sizeof(ulong) * BitsPerByte;

    /// <summary>u64 words of one zone's pbat.</summary>
    public const int Words = Bits / BitsPerWord;

    private const int BitsPerByte = 8;

    /// <summary>Byte offset of zone <paramref name="zone"/>'s pbat on the backing store.</summary>
    public static long Offset(Geometry geometry, uint zone) => (long)geometry.ZoneStart(zone) * Layout.PblkSize;

    public static bool IsSet(ReadOnlySpan<byte> pbat, int bit) => (pbat[bit / BitsPerByte] & (1 << (bit % BitsPerByte))) != 0;

    public static void Clear(Span<byte> pbat, int bit) => pbat[bit / BitsPerByte] &= (byte)~(1 << (bit % BitsPerByte));

    /// <summary>Decodes a pbat (<see cref="Bytes"/> bytes) into <see cref="Words"/> words; returns how many bits are set.</summary>
    public static int ReadWords(ReadOnlySpan<byte> pbat, Span<ulong> words)
    {
        int set = 0;
        for (int w = 0; w < Words; w++)
        {
            ulong word = BinaryPrimitives.ReadUInt64LittleEndian(pbat[(w * sizeof(ulong))..]);
            words[w] = word;
            set += BitOperations.PopCount(word);
        }
        return set;
    }

    /// <summary>Encodes <see cref="Words"/> words as a pbat of <see cref="Bytes"/> bytes.</summary>
    public static void WriteWords(ReadOnlySpan<ulong> words, Span<byte> pbat)
    {
        for (int w = 0; w < Words; w++)
            BinaryPrimitives.WriteUInt64LittleEndian(pbat[(w * sizeof(ulong))..], words[w]);
    }

    /// <summary>Set bits among the first <paramref name="dataPblks"/>; bits past them would be corruption, which check reports.</summary>
    public static int CountSet(ReadOnlySpan<byte> pbat, int dataPblks)
    {
        int set = 0;
        int words = dataPblks / BitsPerWord;
        for (int w = 0; w < words; w++)
            set += BitOperations.PopCount(BinaryPrimitives.ReadUInt64LittleEndian(pbat[(w * sizeof(ulong))..]));
        for (int bit = words * BitsPerWord; bit < dataPblks; bit++)
            set += IsSet(pbat, bit) ? 1 : 0;
        return set;
    }

    /// <summary>
    /// The length of the run of bits from <paramref name="from"/> (below <paramref name="end"/>) in which
    /// <paramref name="a"/> and <paramref name="b"/> differ the same way as at <paramref name="from"/>
    /// (set in <paramref name="a"/> and clear in <paramref name="b"/>, or the reverse); 0 when they agree there.
    /// </summary>
    public static int DifferingRun(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b, int from, int end)
    {
        bool inA = IsSet(a, from);
        if (inA == IsSet(b, from))
            return 0;
        int bit = from + 1;
        while (bit < end && IsSet(a, bit) == inA && IsSet(b, bit) != inA)
            bit++;
        return bit - from;
    }

    /// <summary>Reads zone <paramref name="zone"/>'s pbat; bytes past the end of a truncated store read as zeros.</summary>
    public static ValueTask ReadAsync(IBackingStore store, Geometry geometry, uint zone, Memory<byte> pbat, CancellationToken cancellationToken) =>
        store.ReadClampedAsync(Offset(geometry, zone), pbat[..Bytes], cancellationToken);

    public static ValueTask WriteAsync(IBackingStore store, Geometry geometry, uint zone, ReadOnlyMemory<byte> pbat, CancellationToken cancellationToken) =>
        store.WriteAsync(Offset(geometry, zone), pbat[..Bytes], cancellationToken);
}
