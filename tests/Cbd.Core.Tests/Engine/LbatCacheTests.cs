using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;

namespace Cbd.Core.Tests.Engine;

/// <summary>The lbat cache's two reads of an entry: into an array of its own, and into the caller's (pooled) slots.</summary>
public class LbatCacheTests
{
    [Fact]
    public async Task Both_reads_give_the_same_entry_and_the_same_fault()
    {
        var store = await DeviceTestKit.FormatAsync(64 << 20);
        var g = await Geometry.ReadAsync(store);
        ulong d = g.DataStart(0);
        await StoreIo.WriteEntriesAsync(store, g,
        [
            (3, new LblkAlloc(5000, 7, new[] { d + 4, d + 9 })),
            (4, new LblkAlloc(5000, 7, new[] { d + 4, d + 4 })), // one pblk twice: invalid
        ], CancellationToken.None);
        var lbat = new LbatCache(g, store, 16);
        var slots = new ulong[g.Alloc.PblksPerLblk];

        var owned = await lbat.ReadAsync(3, default);
        var viewed = await lbat.ReadAsync(3, slots, default);
        Assert.Equal((5000u, 7u), (owned.Length, owned.Crc));
        Assert.Equal((5000u, 7u), (viewed.Length, viewed.Crc));
        Assert.Equal(new[] { d + 4, d + 9 }, owned.Pblks.ToArray());
        Assert.Equal(new[] { d + 4, d + 9 }, viewed.Pblks.ToArray());
        Assert.False((await lbat.ReadAsync(5, slots, default)).IsAllocated);

        var a = await Assert.ThrowsAsync<InvalidDataException>(() => lbat.ReadAsync(4, default).AsTask());
        var b = await Assert.ThrowsAsync<InvalidDataException>(() => lbat.ReadAsync(4, slots, default).AsTask());
        Assert.Equal($"lblk 4: lblk_alloc pblk[0] and pblk[1] are both {d + 4}", a.Message);
        Assert.Equal(a.Message, b.Message);
    }

    [Fact]
    public async Task Reading_a_cached_entry_into_the_callers_slots_allocates_nothing()
    {
        var store = await DeviceTestKit.FormatAsync(64 << 20);
        var g = await Geometry.ReadAsync(store);
        await StoreIo.WriteEntriesAsync(store, g, [(3, new LblkAlloc(0xFFFF, 1, Enumerable.Range(0, 16).Select(i => g.DataStart(0) + (ulong)i).ToArray()))],
            CancellationToken.None);
        var lbat = new LbatCache(g, store, 16);
        var slots = new ulong[g.Alloc.PblksPerLblk];
        for (int i = 0; i < 10; i++)
            await lbat.ReadAsync(3, slots, default); // loads the page, and warms up
        int pblks = 0, synchronous = 0;
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            var read = lbat.ReadAsync(3, slots, default);
            synchronous += read.IsCompletedSuccessfully ? 1 : 0;
            pblks += (await read).Pblks.Length;
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal((100, 1600), (synchronous, pblks));
        Assert.True(allocated < 100, $"{allocated} bytes allocated by 100 reads");
    }
}
