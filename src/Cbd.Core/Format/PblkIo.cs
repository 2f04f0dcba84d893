using Cbd.Core.Storage;

namespace Cbd.Core.Format;

/// <summary>I/O of an lblk's pblks: one request per run of consecutive pblk numbers.</summary>
public static class PblkIo
{
    /// <summary>
    /// Reads pblks into consecutive 4 KiB slots of <paramref name="destination"/>. With
    /// <paramref name="zerosPastEnd"/>, bytes past the end of the store read as zeros (a truncated image
    /// is examined as far as it goes) instead of failing.
    /// </summary>
    public static async ValueTask ReadPblksAsync(this IBackingStore store, ReadOnlyMemory<ulong> pblks, Memory<byte> destination,
        bool zerosPastEnd = false, CancellationToken cancellationToken = default)
    {
        int i = 0;
        while (i < pblks.Length)
        {
            int run = RunLength(pblks.Span, i);
            long offset = (long)pblks.Span[i] * Layout.PblkSize;
            var slice = destination.Slice(i * Layout.PblkSize, run * Layout.PblkSize);
            if (zerosPastEnd)
                await store.ReadClampedAsync(offset, slice, cancellationToken).ConfigureAwait(false);
            else
                await store.ReadAsync(offset, slice, cancellationToken).ConfigureAwait(false);
            i += run;
        }
    }

    /// <summary>Writes consecutive 4 KiB slots of <paramref name="source"/> to pblks.</summary>
    public static async ValueTask WritePblksAsync(this IBackingStore store, ReadOnlyMemory<ulong> pblks, ReadOnlyMemory<byte> source,
        CancellationToken cancellationToken = default)
    {
        int i = 0;
        while (i < pblks.Length)
        {
            int run = RunLength(pblks.Span, i);
            await store.WriteAsync((long)pblks.Span[i] * Layout.PblkSize, source.Slice(i * Layout.PblkSize, run * Layout.PblkSize), cancellationToken)
                .ConfigureAwait(false);
            i += run;
        }
    }

    /// <summary>Reads like <see cref="IBackingStore.ReadAsync"/>, but bytes past the end of the store read as zeros.</summary>
    public static async ValueTask ReadClampedAsync(this IBackingStore store, long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        long inside = Math.Clamp(store.Length - offset, 0, buffer.Length);
        if (inside > 0)
            await store.ReadAsync(offset, buffer[..(int)inside], cancellationToken).ConfigureAwait(false);
        buffer.Span[(int)inside..].Clear();
    }

    private static int RunLength(ReadOnlySpan<ulong> pblks, int from)
    {
        int run = 1;
        while (from + run < pblks.Length && pblks[from + run] == pblks[from] + (ulong)run)
            run++;
        return run;
    }
}
