using System.Buffers;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// Step 6 of a checkpoint (docs/FORMAT.md, "Consistency"): the pblks its commit replaced go back to the allocator,
/// and those that stay free go back to the backing store (<see cref="IBackingStore.DeallocateAsync"/>, in runs of
/// consecutive pblks). Without it a busy image's file grows to its full physical size whatever its data compresses
/// to, since every rewrite lands in other pblks.
/// </summary>
/// <remarks>
/// <para>
/// When: a hole punch costs a syscall and the file's next write there a block allocation, and under rewrites
/// most freed pblks are taken again soon; punching each commit's freed pblks at once ran random 4 KiB writes at
/// 0.4 of their speed without. So freed pblks are only noted here, and those still free are punched when the device
/// is idle (<see cref="WriteBackScheduler"/> finds nothing dirty), at a clean close, or when the noted pblks reach a
/// quarter of the data pblks, which bounds what the file holds beyond the data.
/// </para>
/// <para>
/// While writes flow, a round punches only runs of at least <see cref="MinRunUnderLoad"/> free pblks; shorter ones
/// wait for the idle round. Random writes free pblks a few at a time all over the zones: a round punching each of
/// them made tens of thousands of fallocate calls, each holding the file's lock against the writes, and every later
/// write there a block allocation (random 4 KiB writes at 0.8 and 1 MiB rewrites after them at 0.55 of their speed
/// without punching). Short gaps are also what first-fit allocation takes back soonest.
/// </para>
/// <para>
/// A punch destroys what the pblk holds, so it must reach no pblk that anything may still read:
/// <list type="bullet">
/// <item>not before the commit's fsync, which makes the entries that replaced the old ones durable: until then a
/// power cut brings the old entries back, and they must find their data (pblks are noted here only after it);</item>
/// <item>not after the pblk was handed out again: each punch first claims its pblks from the allocator
/// (<see cref="Allocator.ClaimFreeAsync"/>, only those still free), so nothing is allocated in them until the punch
/// is done and they are freed again;</item>
/// <item>never a pblk claimed by more than one lblk (<see cref="Allocator.StaysInUse"/>), which is never freed. The
/// pblks of an invalid entry are never in the list: the commit leaves them in use.</item>
/// </list>
/// A store that cannot deallocate (a filesystem without holes, a device without discard) is told once in the log and
/// not asked again; so is a punch that fails, which loses nothing (the pblks keep their old bytes) and must not fail
/// a checkpoint whose data is durable already.
/// </para>
/// </remarks>
internal sealed class PblkReleaser(Allocator allocator, IBackingStore store, DeviceOptions options, Action<string> log, long totalDataPblks)
{
    private volatile bool _punching = options.Discard == DiscardMode.Unmap && !options.ReadOnly;
    private readonly int _notedLimit = (int)Math.Clamp(totalDataPblks / 4, 4096, 1 << 24);
    private readonly Lock _lock = new();
    /// <summary>pblks freed since the last punch, some of them maybe taken again since.</summary>
    private List<ulong> _noted = [];
    /// <summary>Free pblks in runs too short for a round under load, left for the idle round; some maybe taken again since.</summary>
    private List<ulong> _waiting = [];

    /// <summary>The shortest run of free pblks a round punches while writes flow: 64 KiB.</summary>
    public const int MinRunUnderLoad = 16;

    /// <summary>
    /// Returns <paramref name="freed"/> to the allocator and notes them for punching; when a quarter of the data pblks
    /// are noted, punches those still free. Call only after the fsync of the commit that freed them.
    /// </summary>
    public async ValueTask ReleaseAsync(IReadOnlyList<ulong> freed, CancellationToken cancellationToken)
    {
        if (freed.Count > 0)
            await allocator.FreeAsync(freed, cancellationToken).ConfigureAwait(false);
        if (!_punching || freed.Count == 0)
            return;
        List<ulong> due;
        lock (_lock)
        {
            _noted.AddRange(freed);
            if (_noted.Count < _notedLimit)
                return;
            due = _noted;
            _noted = [];
        }
        var shortRuns = await PunchStillFreeAsync(due, MinRunUnderLoad).ConfigureAwait(false);
        if (shortRuns.Count == 0)
            return;
        List<ulong>? crowded = null;
        lock (_lock)
        {
            _waiting.AddRange(shortRuns);
            if (_waiting.Count > _notedLimit)
            {
                crowded = _waiting;
                _waiting = [];
            }
        }
        if (crowded is null)
            return;
        // Rounds under load can leave the same pblk behind again and again: keep one of each, and only the free ones.
        var stillFree = await allocator.KeepFreeAsync(crowded, CancellationToken.None).ConfigureAwait(false);
        lock (_lock)
            _waiting.AddRange(stillFree);
    }

    /// <summary>Punches every pblk noted so far that is still free: when the device is idle, and at a clean close.</summary>
    public async ValueTask ReleaseNotedAsync()
    {
        if (!_punching)
            return;
        List<ulong> due;
        lock (_lock)
        {
            if (_noted.Count == 0 && _waiting.Count == 0)
                return;
            due = _noted;
            due.AddRange(_waiting);
            _noted = [];
            _waiting = [];
        }
        await PunchStillFreeAsync(due, minRun: 1).ConfigureAwait(false);
    }

    /// <summary>pblks claimed and punched at once: few enough that writers hardly ever find the free space they need held by a punch.</summary>
    private const int PunchBatch = 4096;

    // Not cancellable: what is claimed must be freed again. Returns the pblks left unpunched in runs shorter than
    // minRun (some maybe taken again since).
    private async ValueTask<List<ulong>> PunchStillFreeAsync(List<ulong> pblks, int minRun)
    {
        pblks.Sort();
        var candidates = new List<ulong>(pblks.Count);
        var shortRuns = new List<ulong>();
        SplitRuns(pblks, minRun, candidates, shortRuns);
        var claimed = new List<ulong>(Math.Min(candidates.Count, PunchBatch));
        var punch = new List<ulong>(Math.Min(candidates.Count, PunchBatch));
        for (int at = 0; at < candidates.Count && _punching;)
        {
            // A batch ends at the end of a run, so that no run is cut in two.
            int end = Math.Min(at + PunchBatch, candidates.Count);
            while (end < candidates.Count && candidates[end] == candidates[end - 1] + 1)
                end++;
            claimed.Clear();
            await allocator.ClaimFreeAsync(candidates.GetRange(at, end - at), claimed, CancellationToken.None).ConfigureAwait(false);
            at = end;
            try
            {
                if (options.Fault == CheckpointFault.FreeBeforePunch)
                {
                    await allocator.FreeAsync(claimed, CancellationToken.None).ConfigureAwait(false);
                    var unclaimed = new List<ulong>(claimed);
                    claimed.Clear();
                    await PunchAsync(unclaimed, CancellationToken.None).ConfigureAwait(false);
                    continue;
                }
                // A run some of whose pblks were taken again may have become short.
                punch.Clear();
                SplitRuns(claimed, minRun, punch, shortRuns);
                await PunchAsync(punch, CancellationToken.None).ConfigureAwait(false);
            }
            finally
            {
                await allocator.FreeAsync(claimed, CancellationToken.None).ConfigureAwait(false);
            }
        }
        return shortRuns;
    }

    /// <summary>Sorts <paramref name="pblks"/> (duplicates allowed) into runs of consecutive pblks at least <paramref name="minRun"/> long and the rest.</summary>
    internal static void SplitRuns(IReadOnlyList<ulong> pblks, int minRun, List<ulong> longRuns, List<ulong> rest)
    {
        int i = 0;
        while (i < pblks.Count)
        {
            int end = i + 1, length = 1;
            while (end < pblks.Count && pblks[end] - pblks[end - 1] <= 1)
            {
                if (pblks[end] != pblks[end - 1])
                    length++;
                end++;
            }
            var into = length >= minRun ? longRuns : rest;
            for (int k = i; k < end; k++)
            {
                if (k == i || pblks[k] != pblks[k - 1])
                    into.Add(pblks[k]);
            }
            i = end;
        }
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
