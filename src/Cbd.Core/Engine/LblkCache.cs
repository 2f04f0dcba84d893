using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;

namespace Cbd.Core.Engine;

/// <summary>
/// The cache of decompressed lblks: the map from lblk to <see cref="CachedLblk"/>, the dirty set, pins, the
/// LRU clock and the memory budget, with eviction in <see cref="EvictIfNeeded"/>. It knows nothing of the
/// backing store: entries are loaded by <c>CompressedDevice</c> and written back by the checkpoints.
/// </summary>
/// <remarks>
/// <para>
/// Lock order: a <see cref="CachedLblk.Lock"/> may be held while taking the cache's lock, never the other way
/// round, and the cache's lock is never held across an await. So everything here is synchronous and short.
/// The full order of the engine is checkpoint lock, then <see cref="CachedLblk.Lock"/>, then this cache's lock
/// (docs/ARCHITECTURE.md).
/// </para>
/// <para>
/// Invariants (<see cref="CheckInvariants"/>): every entry is in the map under its own lblk; the dirty set
/// holds exactly the entries marked <see cref="CachedLblk.Dirty"/>, each of them in the map; pins are never
/// negative; a dirty entry is never evicted (it holds the only copy of acknowledged writes); an entry is
/// evicted only with no pins, so nobody holds or waits for its lock; a dirty entry is loaded, or awaits a patch
/// (<see cref="CachedLblk.Patch"/>) or its publication; an entry holds a
/// buffer exactly when it is loaded and not zero; an entry reserves at most one lblk's worth of pblks.
/// </para>
/// </remarks>
internal sealed class LblkCache
{
    /// <summary>
    /// lblks the budget keeps per write-back thread at least (unless <see cref="DeviceOptions.ExactCacheSize"/>):
    /// each thread pins an lblk while it compresses it, and buffers for its stored form.
    /// </summary>
    private const int LblksPerWriteBackThread = 4;

    /// <summary>lblks the budget keeps beyond the write-back threads, for the requests being served.</summary>
    private const int SpareLblks = 8;

    /// <summary>An eviction drops this fraction of the budget beyond the excess, so that it runs per batch, not per miss.</summary>
    private const int EvictionBatchDivisor = 8;

    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, CachedLblk> _entries = [];
    private readonly HashSet<CachedLblk> _dirty = [];
    private readonly int _lblkSize;
    private readonly int _pblksPerLblk;
    private long _useClock;
    private long _dirtySince;

    public LblkCache(int lblkSize, int pblksPerLblk, DeviceOptions options, int parallelism)
    {
        _lblkSize = lblkSize;
        _pblksPerLblk = pblksPerLblk;
        MaxCached = (int)Math.Clamp(options.CacheBytes / lblkSize, options.ExactCacheSize ? 1 : (long)LblksPerWriteBackThread * parallelism + SpareLblks, int.MaxValue / 2);
        // Write-back starts at a quarter of the cache so that it overlaps with writes; writers wait at three quarters.
        WriteBackThreshold = Math.Max(MaxCached / 4, 1);
        ThrottleThreshold = Math.Max(MaxCached * 3 / 4, 2);
        Buffers = new LblkBufferPool(lblkSize, MaxCached + LblksPerWriteBackThread * parallelism);
    }

    /// <summary>The budget: lblks the cache holds (clean and dirty) before it evicts.</summary>
    public int MaxCached { get; }

    /// <summary>Dirty lblks at which write-back starts without waiting for the flush delay.</summary>
    public int WriteBackThreshold { get; }

    /// <summary>Dirty lblks at which writers wait for write-back.</summary>
    public int ThrottleThreshold { get; }

    /// <summary>The most lblks one prefetch loads: more would only evict what it just loaded.</summary>
    public int PrefetchLimit => MaxCached / 2;

    /// <summary>Buffers of one lblk, for entries' contents and for stored forms.</summary>
    public LblkBufferPool Buffers { get; }

    public int DirtyCount
    {
        get
        {
            lock (_lock)
                return _dirty.Count;
        }
    }

    /// <summary>The entry of <paramref name="lblk"/>, created (not loaded) if missing, pinned and stamped as used.</summary>
    public CachedLblk Pin(ulong lblk)
    {
        CachedLblk? entry;
        bool added = false;
        lock (_lock)
        {
            if (!_entries.TryGetValue(lblk, out entry))
            {
                entry = new CachedLblk(lblk);
                _entries.Add(lblk, entry);
                added = true;
            }
            entry.Pins++;
            entry.LastUse = ++_useClock;
            if (added)
                DebugCheckStructure();
        }
        if (added)
            EvictIfNeeded();
        return entry;
    }

    /// <summary>Pins the entry of <paramref name="lblk"/> if it is cached, without making it used or adding it.</summary>
    public bool TryPin(ulong lblk, [NotNullWhen(true)] out CachedLblk? entry)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(lblk, out entry))
                return false;
            entry.Pins++;
            return true;
        }
    }

    public void Unpin(CachedLblk entry)
    {
        lock (_lock)
            entry.Pins--;
    }

    public void Unpin(List<CachedLblk> batch)
    {
        lock (_lock)
        {
            foreach (var entry in batch)
                entry.Pins--;
        }
    }

    /// <summary>Drops the least recently used clean, unpinned entries while the cache is over budget.</summary>
    public void EvictIfNeeded()
    {
        List<CachedLblk>? victims = null;
        lock (_lock)
        {
            int excess = _entries.Count - MaxCached;
            if (excess <= 0)
                return;
            excess += MaxCached / EvictionBatchDivisor; // evict in batches, not one entry per miss
            // The least recently used of the evictable entries, by one sort of their last uses.
            var lastUses = new long[_entries.Count];
            var candidates = new CachedLblk[_entries.Count];
            int count = 0;
            foreach (var entry in _entries.Values)
            {
                if (entry.Pins == 0 && !entry.Dirty)
                {
                    lastUses[count] = entry.LastUse;
                    candidates[count++] = entry;
                }
            }
            Array.Sort(lastUses, candidates, 0, count);
            int evict = Math.Min(excess, count);
            victims = new List<CachedLblk>(evict);
            for (int i = 0; i < evict; i++)
            {
                victims.Add(candidates[i]);
                _entries.Remove(candidates[i].Lblk);
            }
            DebugCheckStructure();
        }
        // Unpinned and unlisted: nobody holds or can reach these entries any more.
        foreach (var victim in victims)
            ReleaseData(victim);
    }

    /// <summary>Marks a changed entry dirty. Caller holds the entry's lock.</summary>
    public void MarkDirty(CachedLblk entry)
    {
        if (!entry.Dirty)
        {
            entry.Dirty = true;
            lock (_lock)
            {
                if (_dirty.Count == 0)
                    _dirtySince = Stopwatch.GetTimestamp();
                _dirty.Add(entry);
                DebugCheckStructure();
            }
        }
    }

    /// <summary>Marks an entry clean once what it holds is published. Caller holds the entry's lock.</summary>
    public void MarkClean(CachedLblk entry)
    {
        entry.Dirty = false;
        lock (_lock)
        {
            _dirty.Remove(entry);
            DebugCheckStructure();
        }
    }

    /// <summary>After a publication: the lblks still dirty are dated from now for the flush delay.</summary>
    public void RestartDirtyClock()
    {
        lock (_lock)
        {
            if (_dirty.Count > 0)
                _dirtySince = Stopwatch.GetTimestamp();
        }
    }

    /// <summary>True when write-back should start: enough dirty lblks, or one dirty for <paramref name="flushDelay"/>.</summary>
    public bool IsWriteBackDue(TimeSpan flushDelay)
    {
        lock (_lock)
        {
            return _dirty.Count >= WriteBackThreshold ||
                   (_dirty.Count > 0 && Stopwatch.GetElapsedTime(_dirtySince) >= flushDelay);
        }
    }

    /// <summary>
    /// Pins and returns the dirty entries for a checkpoint to write back. An entry being written back at this
    /// very version by the checkpoint before is left to it, and not pinned again, so that it can be evicted as
    /// soon as that checkpoint has published it.
    /// </summary>
    public List<CachedLblk> PinDirtyForWriteBack()
    {
        var batch = new List<CachedLblk>();
        lock (_lock)
        {
            foreach (var entry in _dirty)
            {
                if (Volatile.Read(ref entry.WriteBackVersion) == Volatile.Read(ref entry.Version))
                    continue;
                entry.Pins++;
                batch.Add(entry);
            }
        }
        return batch;
    }

    /// <summary>
    /// lblks that hold data: <paramref name="lblksUsed"/> (the allocated ones) plus the dirty ones. Publication
    /// counts an lblk in <paramref name="lblksUsed"/> before it leaves the dirty set, so under the cache's lock
    /// every such lblk is counted at least once.
    /// </summary>
    public long CountLblksWithData(ref long lblksUsed)
    {
        lock (_lock)
            return Interlocked.Read(ref lblksUsed) + _dirty.Count;
    }

    public void ReleaseData(CachedLblk entry)
    {
        if (entry.Data is { } data)
        {
            entry.Data = null;
            Buffers.Return(data);
        }
    }

    /// <summary>Drops every entry, at close.</summary>
    public void Clear()
    {
        lock (_lock)
        {
            foreach (var entry in _entries.Values)
                ReleaseData(entry);
            _entries.Clear();
            _dirty.Clear();
        }
    }

    /// <summary>
    /// Checks every invariant of the class remarks; throws <see cref="InvalidOperationException"/> on the first
    /// that is broken. Safe at any time, but complete only when nothing runs: the fields of an entry are guarded
    /// by its own lock, so an entry whose lock is held (by a request or write-back) is skipped.
    /// </summary>
    /// <returns>The entries checked in full.</returns>
    public int CheckInvariants()
    {
        int checkedEntries = 0;
        lock (_lock)
        {
            CheckStructure();
            foreach (var entry in _entries.Values)
            {
                // Only tried, never waited for: the lock order puts an entry's lock before the cache's.
                if (!entry.Lock.Wait(0))
                    continue;
                try
                {
                    CheckEntry(entry);
                    checkedEntries++;
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
        }
        return checkedEntries;
    }

    /// <summary>The invariants of one entry. Caller holds the cache's lock and the entry's.</summary>
    private void CheckEntry(CachedLblk entry)
    {
        Invariant.Check(entry.Dirty == _dirty.Contains(entry), $"lblk {entry.Lblk}: marked {(entry.Dirty ? "dirty" : "clean")} but {(entry.Dirty ? "not " : "")}in the dirty set");
        // A patch taken by its write-back leaves the entry dirty and unloaded until the publication.
        Invariant.Check(!entry.Dirty || entry.Loaded || entry.Patch is not null || entry.WriteBackVersion == entry.Version,
            $"lblk {entry.Lblk}: dirty but neither loaded nor patched");
        Invariant.Check(entry.Patch is null || entry.Dirty, $"lblk {entry.Lblk}: a patch on a clean entry");
        bool holdsData = entry.Loaded && !entry.IsZero;
        Invariant.Check(holdsData == entry.Data is not null, $"lblk {entry.Lblk}: loaded {entry.Loaded}, zero {entry.IsZero}, yet {(entry.Data is null ? "no" : "a")} buffer");
        Invariant.Check(entry.Data is null || entry.Data.Length == _lblkSize, $"lblk {entry.Lblk}: a buffer of {entry.Data?.Length} bytes");
        Invariant.Check(entry.ReservedPblks >= 0 && entry.ReservedPblks <= _pblksPerLblk, $"lblk {entry.Lblk}: {entry.ReservedPblks} pblks reserved, more than one lblk's worth");
    }

    /// <summary>What can be checked under the cache's lock alone. Caller holds it.</summary>
    private void CheckStructure()
    {
        foreach (var (lblk, entry) in _entries)
        {
            Invariant.Check(entry.Lblk == lblk, $"the entry of lblk {entry.Lblk} is mapped at lblk {lblk}");
            Invariant.Check(entry.Pins >= 0, $"lblk {lblk}: {entry.Pins} pins");
        }
        foreach (var entry in _dirty)
        {
            Invariant.Check(_entries.TryGetValue(entry.Lblk, out var mapped) && ReferenceEquals(mapped, entry),
                $"lblk {entry.Lblk}: dirty but not in the cache (evicted with unwritten data)");
        }
    }

    /// <summary>The structural check after each change, in debug builds: it walks the whole cache.</summary>
    [Conditional("DEBUG")]
    private void DebugCheckStructure() => CheckStructure();
}
