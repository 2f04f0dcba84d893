using Cbd.Core.Engine;

namespace Cbd.Core.Tests.Engine;

public class LblkCacheTests
{
    private const int LblkSize = 16 * 1024;

    private static LblkCache NewCache(int lblks) =>
        new(LblkSize, LblkSize / 4096, new DeviceOptions { CacheBytes = (long)lblks * LblkSize, ExactCacheSize = true }, parallelism: 1);

    [Fact]
    public void Eviction_keeps_dirty_and_pinned_entries_and_drops_the_least_recently_used()
    {
        var cache = NewCache(4);
        var dirty = cache.Pin(0);
        Load(cache, dirty);
        cache.MarkDirty(dirty);
        cache.Unpin(dirty);
        var pinned = cache.Pin(1);
        for (ulong lblk = 2; lblk < 12; lblk++)
        {
            var entry = cache.Pin(lblk);
            Load(cache, entry);
            cache.Unpin(entry);
        }
        Assert.True(cache.TryPin(0, out var stillDirty), "a dirty entry was evicted");
        Assert.Same(dirty, stillDirty);
        cache.Unpin(stillDirty);
        Assert.True(cache.TryPin(1, out var stillPinned), "a pinned entry was evicted");
        Assert.Same(pinned, stillPinned);
        cache.Unpin(stillPinned);
        Assert.False(cache.TryPin(2, out _), "the least recently used clean entry survived eviction");
        Assert.True(cache.TryPin(11, out var newest), "the newest entry was evicted");
        cache.Unpin(newest);
        cache.Unpin(pinned);
        Assert.True(cache.CheckInvariants() > 0);
    }

    [Fact]
    public void CheckInvariants_finds_a_dirty_entry_outside_the_dirty_set()
    {
        var cache = NewCache(4);
        var entry = cache.Pin(0);
        Load(cache, entry);
        entry.Dirty = true; // not through MarkDirty: write-back would never see it
        var e = Assert.Throws<InvalidOperationException>(() => cache.CheckInvariants());
        Assert.Contains("lblk 0: marked dirty but not in the dirty set", e.Message);
    }

    [Fact]
    public void CheckInvariants_finds_a_zero_entry_that_holds_a_buffer()
    {
        var cache = NewCache(4);
        var entry = cache.Pin(0);
        Load(cache, entry);
        entry.IsZero = true;
        var e = Assert.Throws<InvalidOperationException>(() => cache.CheckInvariants());
        Assert.Contains("lblk 0: loaded True, zero True, yet a buffer", e.Message);
    }

    [Fact]
    public void CheckInvariants_skips_an_entry_whose_lock_is_held()
    {
        var cache = NewCache(4);
        var entry = cache.Pin(0);
        entry.Lock.Wait();
        entry.Dirty = true; // mid-change, as a writer under the entry's lock may leave it for a moment
        Assert.Equal(0, cache.CheckInvariants());
        entry.Lock.Release();
        Assert.Throws<InvalidOperationException>(() => cache.CheckInvariants());
    }

    private static void Load(LblkCache cache, CachedLblk entry)
    {
        entry.Data = cache.Buffers.Rent();
        entry.Loaded = true;
    }
}
