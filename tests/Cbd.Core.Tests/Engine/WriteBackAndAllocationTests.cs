using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

public class WriteBackAndAllocationTests
{
    private const int LblkSize = 64 * 1024;

    [Fact]
    public async Task Dirty_lblks_are_written_back_after_the_flush_delay_without_a_flush()
    {
        var store = await DeviceTestKit.FormatAsync(64 << 20);
        var data = DeviceTestKit.Compressible(3 * LblkSize, 5);
        await using var device = await DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromMilliseconds(200) });
        await device.WriteAsync(0, data);
        Assert.Equal(3, device.GetStats().DirtyLblks);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (device.GetStats().DirtyLblks > 0 && DateTime.UtcNow < deadline)
            await Task.Delay(50);
        Assert.Equal(0, device.GetStats().DirtyLblks);
        Assert.Equal(3, device.GetStats().LblksUsed);

        // The lblks are clean once their entries are published in memory; the lbat pblks that carry those entries
        // reach the store a moment later, when the checkpoint commits. Reached without any flush, a copy of the
        // store taken while the device is still open then reads the data after recovery.
        var back = new byte[data.Length];
        while (true)
        {
            await using var copy = await DeviceTestKit.OpenAsync(store.Clone(), new DeviceOptions { ReadOnly = true });
            Assert.True(copy.Recovered);
            if (copy.GetStats().LblksUsed == 3 || DateTime.UtcNow >= deadline)
            {
                await copy.ReadAsync(0, back);
                break;
            }
            await Task.Delay(50);
        }
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task Checkpoints_overlap_slow_fsyncs_and_lose_nothing()
    {
        const int Lblks = 48, Writers = 4, WritesEach = 80;
        var store = await DeviceTestKit.FormatAsync(64 << 20);
        var slow = new SlowFlushStore(store, TimeSpan.FromMilliseconds(10));
        var expected = new byte[Lblks][];
        for (int i = 0; i < Lblks; i++)
            expected[i] = new byte[LblkSize];
        // A small cache keeps write-back busy; each writer owns the lblks congruent to its number, so the
        // contents each lblk must end with are known whatever the interleaving.
        await using (var device = await DeviceTestKit.OpenAsync(slow, new DeviceOptions { CacheBytes = 16 * LblkSize, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 2 }))
        {
            await Task.WhenAll(Enumerable.Range(0, Writers).Select(w => Task.Run(async () =>
            {
                var random = new Random(w);
                for (int n = 0; n < WritesEach; n++)
                {
                    int lblk = random.Next(Lblks / Writers) * Writers + w;
                    int within = random.Next(2) == 0 ? 0 : random.Next(LblkSize);
                    int length = within == 0 ? LblkSize : random.Next(1, LblkSize - within + 1);
                    var data = DeviceTestKit.Compressible(length, w * 100_000 + n);
                    await device.WriteAsync((long)lblk * LblkSize + within, data);
                    data.CopyTo(expected[lblk].AsSpan(within));
                }
            })));
            await device.FlushAsync();
            var back = new byte[LblkSize];
            for (int lblk = 0; lblk < Lblks; lblk++)
            {
                await device.ReadAsync((long)lblk * LblkSize, back);
                Assert.True(back.AsSpan().SequenceEqual(expected[lblk]), $"lblk {lblk} differs before the reopen");
            }
        }
        // The next checkpoint compressed and wrote while an earlier one waited for its fsync.
        Assert.True(slow.WroteDuringFlush, "no write-back overlapped an fsync");
        await using var reopened = await DeviceTestKit.OpenAsync(store);
        Assert.False(reopened.Recovered);
        var again = new byte[LblkSize];
        for (int lblk = 0; lblk < Lblks; lblk++)
        {
            await reopened.ReadAsync((long)lblk * LblkSize, again);
            Assert.True(again.AsSpan().SequenceEqual(expected[lblk]), $"lblk {lblk} differs after the reopen");
        }
    }

    /// <summary>A store whose fsync takes a while, like a disk's, and which notes writes made meanwhile.</summary>
    private sealed class SlowFlushStore(IBackingStore inner, TimeSpan flushTime) : IBackingStore
    {
        private int _flushing;
        public bool WroteDuringFlush { get; private set; }
        public long Length => inner.Length;
        public bool CanWrite => inner.CanWrite;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
        {
            if (Volatile.Read(ref _flushing) > 0)
                WroteDuringFlush = true;
            return inner.WriteAsync(offset, data, cancellationToken);
        }

        public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _flushing);
            try
            {
                await Task.Delay(flushTime, cancellationToken);
                await inner.FlushAsync(cancellationToken);
            }
            finally
            {
                Interlocked.Decrement(ref _flushing);
            }
        }

        public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.ZeroRangeAsync(offset, length, cancellationToken);
        public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => inner.SetLengthAsync(length, cancellationToken);
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    [Fact]
    public async Task An_lblk_takes_pblks_from_its_home_zone_while_it_has_room_then_from_others()
    {
        var store = new MemoryBackingStore(3L * 129 << 20);
        await ImageFormatter.FormatAsync(store, new FormatOptions());
        var options = new DeviceOptions { CacheBytes = 8 << 20, FlushDelay = TimeSpan.FromHours(1) };
        await using var device = await DeviceTestKit.OpenAsync(store, options);
        var g = device.Geometry;
        Assert.True(g.NrZones >= 3);
        ulong first = g.LblkPerZone; // the first lblk whose home is zone 1
        int fits = Layout.PblksPerZoneData / g.Alloc.PblksPerLblk;
        Assert.True(g.LblkPerZone > (ulong)fits + 8, "zone 1 must be home to more lblks than its data holds");

        // Incompressible lblks homed in zone 1: the first `fits` fill it, the rest go elsewhere.
        var data = DeviceTestKit.Random(LblkSize, 9);
        for (ulong lblk = first; lblk < first + (ulong)fits + 8; lblk++)
        {
            data[0] = (byte)lblk;
            data[1] = (byte)(lblk >> 8);
            await device.WriteAsync((long)lblk * LblkSize, data);
        }
        await device.FlushAsync();

        var lbat = new LbatCache(g, store, 16);
        int home = 0, elsewhere = 0;
        for (ulong lblk = first; lblk < first + (ulong)fits + 8; lblk++)
        {
            var alloc = await lbat.ReadAsync(lblk, default);
            Assert.Equal(g.Alloc.UncompressedLength, alloc.Length);
            Assert.True(g.TryLocateDataPblk(alloc.Pblks[0], out uint zone, out _));
            Assert.All(alloc.Pblks, p => Assert.True(g.TryLocateDataPblk(p, out uint z, out _) && z == zone, "an lblk split over zones although one had room"));
            if (zone == 1)
                home++;
            else
                elsewhere++;
        }
        Assert.Equal(fits, home);
        Assert.Equal(8, elsewhere);

        var back = new byte[LblkSize];
        await device.ReadAsync((long)(first + (ulong)fits + 3) * LblkSize, back);
        Assert.Equal((byte)(first + (ulong)fits + 3), back[0]);
    }
}
