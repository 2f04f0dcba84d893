using System.Buffers;
using System.Collections.Concurrent;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// Cached lbat pblks. A page is loaded once (under its own lock) and changed only by write-back, one
/// checkpoint at a time, while the previous checkpoint's commit may be writing pages out; a page with
/// unwritten changes is never evicted.
/// </summary>
internal sealed class LbatCache(Geometry geometry, IBackingStore store, int maxCleanPages)
{
    private sealed class Page(ulong pblk)
    {
        public readonly ulong Pblk = pblk;
        public readonly byte[] Data = new byte[Layout.PblkSize];
        public readonly SemaphoreSlim LoadLock = new(1, 1);
        public volatile bool Loaded;
        public bool Dirty;
        /// <summary>Dropped from the cache: a change must go to the page that replaces it.</summary>
        public bool Removed;
        public long LastUse;
    }

    private readonly ConcurrentDictionary<ulong, Page> _pages = new();
    private long _clock;

    /// <summary>
    /// Reads lblk's entry into an array of its own; throws <see cref="InvalidDataException"/> naming the
    /// field for an entry that cannot be valid (<see cref="LblkAlloc.TryValidate"/>).
    /// </summary>
    public async ValueTask<LblkAlloc> ReadAsync(ulong lblk, CancellationToken cancellationToken)
    {
        ulong[] slots = ArrayPool<ulong>.Shared.Rent(geometry.Alloc.PblksPerLblk);
        try
        {
            var alloc = await ReadAsync(lblk, slots, cancellationToken).ConfigureAwait(false);
            return alloc.IsAllocated ? new LblkAlloc(alloc.Length, alloc.Crc, alloc.Pblks.ToArray()) : LblkAlloc.Unallocated;
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(slots);
        }
    }

    /// <summary>
    /// Reads lblk's entry without allocating: the pblk numbers go to <paramref name="slots"/> (at least
    /// <see cref="LblkAllocFormat.PblksPerLblk"/> long, e.g. pooled), which the result refers to. Throws
    /// <see cref="InvalidDataException"/> naming the field for an entry that cannot be valid.
    /// </summary>
    public async ValueTask<LblkAlloc> ReadAsync(ulong lblk, Memory<ulong> slots, CancellationToken cancellationToken)
    {
        var (page, offset) = await GetPageAsync(lblk, cancellationToken).ConfigureAwait(false);
        bool valid;
        LblkAlloc alloc;
        LblkAllocError error;
        lock (page)
            valid = LblkAlloc.TryDecode(geometry, page.Data.AsSpan(offset), slots, out alloc, out error);
        if (!valid)
            throw new InvalidDataException(error.Describe(geometry, lblk));
        return alloc;
    }

    /// <summary>Replaces lblk's entry in memory; the page is written by <see cref="WriteDirtyAsync"/>.</summary>
    public async ValueTask WriteAsync(ulong lblk, LblkAlloc entry, CancellationToken cancellationToken)
    {
        while (true)
        {
            var (page, offset) = await GetPageAsync(lblk, cancellationToken).ConfigureAwait(false);
            lock (page)
            {
                // A commit trimming clean pages may have dropped this one since it was looked up.
                if (page.Removed)
                    continue;
                entry.Encode(geometry.Alloc, page.Data.AsSpan(offset));
                page.Dirty = true;
                return;
            }
        }
    }

    /// <summary>Writes every changed page; a torn write leaves each entry old or new, as entries never cross a sector.</summary>
    public async ValueTask WriteDirtyAsync(CancellationToken cancellationToken)
    {
        var dirty = new List<(Page Page, byte[] Copy)>();
        foreach (var page in _pages.Values)
        {
            lock (page)
            {
                if (page.Dirty)
                {
                    dirty.Add((page, (byte[])page.Data.Clone()));
                    page.Dirty = false;
                }
            }
        }
        dirty.Sort((a, b) => a.Page.Pblk.CompareTo(b.Page.Pblk));
        try
        {
            foreach (var (page, copy) in dirty)
                await store.WriteAsync((long)page.Pblk * Layout.PblkSize, copy, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            foreach (var (page, _) in dirty)
            {
                lock (page)
                    page.Dirty = true;
            }
            throw;
        }
        TrimClean();
    }

    public bool HasDirty => _pages.Values.Any(p => p.Dirty);

    private void TrimClean()
    {
        int excess = _pages.Count - maxCleanPages;
        if (excess <= 0)
            return;
        var victims = _pages.Values.Where(p => !p.Dirty && p.Loaded).OrderBy(p => p.LastUse).Take(excess).ToList();
        foreach (var page in victims)
        {
            lock (page)
            {
                if (!page.Dirty)
                {
                    page.Removed = true;
                    _pages.TryRemove(page.Pblk, out _);
                }
            }
        }
    }

    private async ValueTask<(Page Page, int Offset)> GetPageAsync(ulong lblk, CancellationToken cancellationToken)
    {
        long byteOffset = geometry.EntryByteOffset(lblk);
        ulong pblk = (ulong)byteOffset / Layout.PblkSize;
        int offset = (int)(byteOffset % Layout.PblkSize);
        var page = _pages.GetOrAdd(pblk, static p => new Page(p));
        page.LastUse = Interlocked.Increment(ref _clock);
        if (!page.Loaded)
        {
            await page.LoadLock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (!page.Loaded)
                {
                    await store.ReadAsync((long)pblk * Layout.PblkSize, page.Data, cancellationToken).ConfigureAwait(false);
                    page.Loaded = true;
                }
            }
            finally
            {
                page.LoadLock.Release();
            }
        }
        return (page, offset);
    }
}
