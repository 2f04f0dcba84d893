using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.BenchTool;

/// <summary>
/// <c>floor CORPUS</c>: what cbd's format needs at least to store a raw image, were every lblk written once
/// and compressed on its own: all-zero lblks take nothing, the others the engine's stored length (one tag
/// byte plus the codec's output, or the whole lblk when that does not save a pblk) rounded up to whole
/// pblks. Metadata (header, pbats, lbats) is not counted. Prints <c>key=value</c> lines for bench/run.
/// </summary>
internal static class FloorCommand
{
    private static readonly (string Name, CompressionAlgorithm Algorithm)[] s_codecs =
    [
        ("lz4", CompressionAlgorithm.Lz4),
        ("zstd", CompressionAlgorithm.Zstd),
    ];

    public static int Run(string[] args)
    {
        var (positional, named) = Options.Parse(args, "--lblk-size");
        if (positional.Count != 1)
            throw new ArgumentException("floor takes one corpus file");
        int lblkSize = named.TryGetValue("--lblk-size", out string? text) ? checked((int)Options.Size(text)) : 64 * 1024;
        if (lblkSize < 2 * Layout.PblkSize || !int.IsPow2(lblkSize))
            throw new ArgumentException($"--lblk-size {lblkSize}: a power of two of at least {2 * Layout.PblkSize}");

        // The engine's defaults: LZ4 level 0 (fast), zstd level 3.
        var codecs = s_codecs.Select(c => Codec.Create(c.Algorithm, CodecLimits.Levels(c.Algorithm).Default)).ToArray();
        int maxCompressed = lblkSize - Layout.PblkSize; // as LblkAllocFormat.MaxCompressedLength: must save a pblk

        using var corpus = File.OpenHandle(positional[0]);
        long length = RandomAccess.GetLength(corpus);
        const int batchLblks = 256;
        byte[] batch = new byte[batchLblks * lblkSize];
        long zeroLblks = 0, lblks = 0;
        long[] floor = new long[codecs.Length];
        long[] compressedBytes = new long[codecs.Length];
        var started = DateTime.UtcNow;

        for (long offset = 0; offset < length; offset += batch.Length)
        {
            int read = ReadFully(corpus, batch, offset);
            // A partial last lblk is padded with zeroes, as the device's last lblk reads.
            int count = (read + lblkSize - 1) / lblkSize;
            batch.AsSpan(read, count * lblkSize - read).Clear();
            lblks += count;
            Parallel.For(0, count, () => new Totals(codecs.Length, maxCompressed), (i, _, totals) =>
            {
                var data = new ReadOnlySpan<byte>(batch, i * lblkSize, lblkSize);
                if (!data.ContainsAnyExcept((byte)0))
                {
                    totals.ZeroLblks++;
                    return totals;
                }
                for (int c = 0; c < codecs.Length; c++)
                {
                    int n = codecs[c].Compress(data, totals.Scratch.AsSpan(0, maxCompressed - 1));
                    int stored = n > 0 ? 1 + n : lblkSize;
                    totals.CompressedBytes[c] += stored;
                    totals.Floor[c] += (stored + Layout.PblkSize - 1) / Layout.PblkSize * Layout.PblkSize;
                }
                return totals;
            }, totals =>
            {
                lock (floor)
                {
                    zeroLblks += totals.ZeroLblks;
                    for (int c = 0; c < codecs.Length; c++)
                    {
                        floor[c] += totals.Floor[c];
                        compressedBytes[c] += totals.CompressedBytes[c];
                    }
                }
            });
        }

        Console.WriteLine($"corpus_bytes={length}");
        Console.WriteLine($"lblk_size={lblkSize}");
        Console.WriteLine($"lblks={lblks}");
        Console.WriteLine($"zero_lblks={zeroLblks}");
        for (int c = 0; c < codecs.Length; c++)
        {
            Console.WriteLine($"{s_codecs[c].Name}_level={CodecLimits.Levels(s_codecs[c].Algorithm).Default}");
            Console.WriteLine($"{s_codecs[c].Name}_compressed_bytes={compressedBytes[c]}");
            Console.WriteLine($"{s_codecs[c].Name}_floor_bytes={floor[c]}");
        }
        Console.WriteLine($"seconds={(DateTime.UtcNow - started).TotalSeconds:F1}");
        return 0;
    }

    private static int ReadFully(Microsoft.Win32.SafeHandles.SafeFileHandle file, byte[] buffer, long offset)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = RandomAccess.Read(file, buffer.AsSpan(total), offset + total);
            if (n == 0)
                break;
            total += n;
        }
        return total;
    }

    /// <summary>One worker's running sums, merged once at the end of each batch.</summary>
    private sealed class Totals(int codecs, int maxCompressed)
    {
        public readonly byte[] Scratch = new byte[maxCompressed];
        public readonly long[] Floor = new long[codecs];
        public readonly long[] CompressedBytes = new long[codecs];
        public long ZeroLblks;
    }
}
