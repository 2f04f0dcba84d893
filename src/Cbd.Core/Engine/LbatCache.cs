using System.Collections.Concurrent;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>One lblk_alloc entry, decoded.</summary>
internal readonly struct LblkAlloc
{
    public LblkAlloc(uint length, uint crc, ulong[] pblks)
    {
        Length = length;
        Crc = crc;
        Pblks = pblks;
    }

    /// <summary>The length field: 0 unallocated, all ones uncompressed, else stored bytes.</summary>
    public uint Length { get; }
    public uint Crc { get; }

    /// <summary>The pblks in use, in order (unused slots dropped).</summary>
    public ulong[] Pblks { get; }
    public bool IsAllocated => Length != 0;

    public static LblkAlloc Unallocated { get; } = new(0, 0, []);
}

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

    /// <summary>Reads lblk's entry; throws <see cref="InvalidDataException"/> for an entry that cannot be valid.</summary>
    public async ValueTask<LblkAlloc> ReadAsync(ulong lblk, CancellationToken cancellationToken)
    {
        var (page, offset) = await GetPageAsync(lblk, cancellationToken).ConfigureAwait(false);
        var format = geometry.Alloc;
        Span<ulong> slots = format.PblksPerLblk <= 256 ? stackalloc ulong[format.PblksPerLblk] : new ulong[format.PblksPerLblk];
        uint length, crc;
        lock (page)
            format.Read(page.Data.AsSpan(offset), slots, out length, out crc);
        return Decode(geometry, lblk, slots, length, crc);
    }

    /// <summary>Validates and decodes raw entry fields (shared with the checker).</summary>
    public static LblkAlloc Decode(Geometry geometry, ulong lblk, ReadOnlySpan<ulong> slots, uint length, uint crc)
    {
        var format = geometry.Alloc;
        if (length == 0)
        {
            if (slots.ContainsAnyExcept(0UL) || crc != 0)
                throw new InvalidDataException($"lblk {lblk}: unallocated entry with non-zero pblk or crc fields");
            return LblkAlloc.Unallocated;
        }
        if (format.CheckLength(length) is { } why)
            throw new InvalidDataException($"lblk {lblk}: lblk_alloc {why}");
        int used = format.PblksFor(length);
        var pblks = new ulong[used];
        for (int i = 0; i < slots.Length; i++)
        {
            if (i < used)
            {
                if (!geometry.TryLocateDataPblk(slots[i], out _, out _))
                    throw new InvalidDataException($"lblk {lblk}: lblk_alloc pblk[{i}] = {slots[i]} is not a data pblk of the device");
                int twice = slots[..i].IndexOf(slots[i]);
                if (twice >= 0)
                    throw new InvalidDataException($"lblk {lblk}: lblk_alloc pblk[{twice}] and pblk[{i}] are both {slots[i]}");
                pblks[i] = slots[i];
            }
            else if (slots[i] != 0)
            {
                throw new InvalidDataException($"lblk {lblk}: lblk_alloc pblk[{i}] = {slots[i]}, expected 0 past the {used} pblks of length {length}");
            }
        }
        return new LblkAlloc(length, crc, pblks);
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
                geometry.Alloc.Write(page.Data.AsSpan(offset), entry.Pblks, entry.Length, entry.Crc);
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
