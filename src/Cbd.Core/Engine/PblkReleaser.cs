using System.Buffers;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// Step 6 of a checkpoint (docs/FORMAT.md, "Consistency"): the pblks its commit replaced go back to the backing
/// store (<see cref="IBackingStore.DeallocateAsync"/>, in runs of consecutive pblks, so a checkpoint makes few calls),
/// then to the allocator. Without it a busy image's file grows to its full physical size whatever its data
/// compresses to, since every rewrite lands in other pblks.
/// </summary>
/// <remarks>
/// A punch destroys what the pblk holds, so it must reach no pblk that anything may still read:
/// <list type="bullet">
/// <item>not before the commit's fsync, which makes the entries that replaced the old ones durable: until then a
/// power cut brings the old entries back, and they must find their data (the caller's order);</item>
/// <item>not after the pblk was handed out again and written: the pblks go back to the allocator only once their
/// punch is done, and until then nobody can be given them. Commits run one at a time, and a later checkpoint's
/// write-back, which may run meanwhile, allocates only pblks already free;</item>
/// <item>never a pblk claimed by more than one lblk (<see cref="Allocator.StaysInUse"/>), which is never freed. The
/// pblks of an invalid entry are never in the list: the commit leaves them in use.</item>
/// </list>
/// A store that cannot deallocate (a filesystem without holes, a device without discard) is told once in the log and
/// not asked again; so is a punch that fails, which loses nothing (the pblks keep their old bytes) and must not fail
/// a checkpoint whose data is durable already.
/// </remarks>
internal sealed class PblkReleaser(Allocator allocator, IBackingStore store, DeviceOptions options, Action<string> log)
{
    private volatile bool _punching = options.Discard == DiscardMode.Unmap && !options.ReadOnly;

    /// <summary>Punches <paramref name="freed"/> out of the store, then returns them to the allocator. Call only after the fsync of the commit that freed them.</summary>
    public async ValueTask ReleaseAsync(IReadOnlyList<ulong> freed, CancellationToken cancellationToken)
    {
        if (freed.Count == 0)
            return;
        if (options.Fault == CheckpointFault.FreeBeforePunch)
        {
            await allocator.FreeAsync(freed, cancellationToken).ConfigureAwait(false);
            await PunchAsync(freed, cancellationToken).ConfigureAwait(false);
            return;
        }
        await PunchAsync(freed, cancellationToken).ConfigureAwait(false);
        await allocator.FreeAsync(freed, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Punches <paramref name="pblks"/> (any order, duplicates allowed) out of the store in runs of consecutive pblks.</summary>
    public async ValueTask PunchAsync(IReadOnlyList<ulong> pblks, CancellationToken cancellationToken)
    {
        if (!_punching || pblks.Count == 0)
            return;
        ulong[] sorted = ArrayPool<ulong>.Shared.Rent(pblks.Count);
        try
        {
            int count = 0;
            foreach (ulong pblk in pblks)
            {
                if (!allocator.StaysInUse(pblk))
                    sorted[count++] = pblk;
            }
            Array.Sort(sorted, 0, count);
            int i = 0;
            while (i < count)
            {
                int run = 1;
                // Consecutive pblks, or the same one twice, extend the run.
                while (i + run < count && sorted[i + run] - sorted[i + run - 1] <= 1)
                    run++;
                long first = (long)sorted[i] * Layout.PblkSize;
                long bytes = ((long)sorted[i + run - 1] - (long)sorted[i] + 1) * Layout.PblkSize;
                if (!await TryDeallocateAsync(first, bytes, cancellationToken).ConfigureAwait(false))
                    return;
                i += run;
            }
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(sorted);
        }
    }

    private async ValueTask<bool> TryDeallocateAsync(long offset, long length, CancellationToken cancellationToken)
    {
        string? stop;
        try
        {
            if (await store.DeallocateAsync(offset, length, cancellationToken).ConfigureAwait(false))
                return true;
            stop = "the backing store cannot deallocate (no hole punching in this filesystem, or no discard on this device)";
        }
        catch (IOException e)
        {
            stop = e.Message;
        }
        _punching = false;
        log($"freed pblks are no longer given back to the backing store in this session: {stop}; the image works on, its file keeps its size");
        return false;
    }
}
