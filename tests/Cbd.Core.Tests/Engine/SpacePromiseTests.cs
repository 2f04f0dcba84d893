using Cbd.Core.Engine;
using Cbd.Core.Format;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// The promises block status and NO_HOLE zeroing make about space (NBD base:allocation: a write to an extent
/// reported without HOLE must not fail with ENOSPC; NO_HOLE: later writes to the range must not either).
/// </summary>
public class SpacePromiseTests
{
    private const int Lblk = 64 * 1024;
    private const long MiB = 1 << 20;

    private static readonly DeviceOptions s_options = new()
    {
        CacheBytes = 1 * MiB,
        FlushDelay = TimeSpan.FromHours(1),
        WriteBackParallelism = 1,
    };

    [Fact]
    public async Task Overcommitted_device_reports_its_data_as_holes_and_no_extent_reported_allocated_fails_for_space()
    {
        // A thin device (three times its physical size) filled with compressible data until it is full.
        var store = await DeviceTestKit.FormatAsync(8 * MiB);
        await using var device = await DeviceTestKit.OpenAsync(store, s_options);
        long filled = await FillAsync(device, 0, device.Size, random: false);
        await device.FlushAsync();
        Assert.True(filled / Lblk > device.Space.MaxBackedLblks, $"filled {filled / Lblk} lblks, backed {device.Space.MaxBackedLblks}");

        var extents = await device.GetBlockStatusAsync(0, device.Size);
        await OverwriteUnholedExtentsAsync(device, extents);
        // The data is there, but a write to it may fail for space: a hole that is not zero.
        Assert.Equal([new BlockExtent(filled, true, false), new BlockExtent(device.Size - filled, true, true)], extents);

        // The holes were warranted: incompressible data over them runs out of space.
        await Assert.ThrowsAsync<OutOfSpaceException>(() => FillAsync(device, 0, filled, random: true, stopWhenFull: false));
    }

    [Fact]
    public async Task Backed_device_reports_its_data_allocated_and_every_such_extent_takes_incompressible_data_also_after_a_restart()
    {
        var store = await DeviceTestKit.FormatAsync(8 * MiB);
        long backed;
        await using (var device = await DeviceTestKit.OpenAsync(store, s_options))
        {
            backed = device.Space.MaxBackedLblks;
            Assert.False(device.CanProvision);
            // As many lblks of compressible data as the device backs, with a hole between two of them.
            await device.WriteAsync(0, DeviceTestKit.Compressible(Lblk, 1));
            await device.WriteAsync(2 * Lblk, DeviceTestKit.Compressible((int)(backed - 1) * Lblk, 2));
            await device.FlushAsync();
            var extents = await device.GetBlockStatusAsync(0, device.Size);
            Assert.Equal(
                [new BlockExtent(Lblk, false, false), new BlockExtent(Lblk, true, true), new BlockExtent((backed - 1) * Lblk, false, false),
                 new BlockExtent(device.Size - (backed + 1) * Lblk, true, true)],
                extents);
            await OverwriteUnholedExtentsAsync(device, extents);
        }
        await using (var device = await DeviceTestKit.OpenAsync(store, s_options))
        {
            // Stored uncompressed now, and backed still: the same promise, and it is kept again.
            var extents = await device.GetBlockStatusAsync(0, device.Size);
            Assert.Equal(backed * Lblk, extents.Where(e => !e.IsHole).Sum(e => e.Length));
            await OverwriteUnholedExtentsAsync(device, extents);

            // One more lblk of data, not yet written back, and the device no longer backs its data.
            await device.WriteAsync(Lblk, DeviceTestKit.Compressible(100, 3));
            Assert.Equal(
                [new BlockExtent((backed + 1) * Lblk, true, false), new BlockExtent(device.Size - (backed + 1) * Lblk, true, true)],
                await device.GetBlockStatusAsync(0, device.Size));

            // Trimmed again, and once that is written back, backed again.
            await device.TrimAsync(Lblk, Lblk);
            await device.FlushAsync();
            Assert.Equal(backed * Lblk, (await device.GetBlockStatusAsync(0, device.Size)).Where(e => !e.IsHole).Sum(e => e.Length));
        }
    }

    [Fact]
    public async Task Concurrent_incompressible_rewrites_of_every_extent_reported_allocated_never_fail_for_space()
    {
        var store = await DeviceTestKit.FormatAsync(8 * MiB);
        await using var device = await DeviceTestKit.OpenAsync(store, s_options with { WriteBackParallelism = 2 });
        long backed = device.Space.MaxBackedLblks;
        await device.WriteAsync(0, DeviceTestKit.Compressible((int)backed * Lblk, 8));
        await device.FlushAsync();
        var extents = await device.GetBlockStatusAsync(0, device.Size);
        Assert.Equal(new BlockExtent(backed * Lblk, false, false), extents[0]);

        // Eight writers, each over every lblk in its own order, so that they compete for the last free pblks.
        await Parallel.ForAsync(0, 8, async (writer, _) =>
        {
            var order = Enumerable.Range(0, (int)backed).OrderBy(i => (i * 7919 + writer * 104729) % backed).ToArray();
            foreach (int lblk in order)
                await device.WriteAsync((long)lblk * Lblk, DeviceTestKit.Random(Lblk, writer * 1000 + lblk));
        });
        await device.FlushAsync();
        // Every lblk is now stored uncompressed.
        Assert.Equal(backed * device.Space.PblksPerLblk, device.GetStats().PblksUsed);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task No_hole_zeroing_is_refused_on_a_thin_device_and_changes_nothing(bool zeroDetect)
    {
        var store = await DeviceTestKit.FormatAsync(8 * MiB, new FormatOptions { ZeroDetect = zeroDetect });
        await using var device = await DeviceTestKit.OpenAsync(store, s_options);
        byte[] before = DeviceTestKit.Compressible(4 * Lblk, 4);
        await device.WriteAsync(0, before);

        var refused = await Assert.ThrowsAsync<ProvisioningNotSupportedException>(
            async () => await device.WriteZeroesAsync(0, 4 * Lblk, mayDeallocate: false));
        Assert.Contains("cannot provision [0, 262144)", refused.Message);
        var back = new byte[4 * Lblk];
        await device.ReadAsync(0, back);
        Assert.Equal(before, back);

        // Zeroing that may deallocate is served as before.
        await device.WriteZeroesAsync(0, 4 * Lblk, mayDeallocate: true);
        await device.ReadAsync(0, back);
        Assert.Equal(new byte[4 * Lblk], back);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task No_hole_zeroing_on_a_fully_backed_device_keeps_the_range_writable_after_the_rest_is_filled_and_a_restart(bool zeroDetect)
    {
        // The logical size fits the data pblks stored uncompressed, with an lblk to spare.
        var store = await DeviceTestKit.FormatAsync(8 * MiB, new FormatOptions { ZeroDetect = zeroDetect, LogicalSize = 7 * MiB });
        await using (var device = await DeviceTestKit.OpenAsync(store, s_options))
        {
            Assert.True(device.CanProvision, $"{device.Space.TotalLblks} lblks, {device.Space.MaxBackedLblks} backed");
            await device.WriteAsync(0, DeviceTestKit.Random(4 * Lblk, 5));
            await device.WriteZeroesAsync(0, 4 * Lblk, mayDeallocate: false);
            // Everything else filled with incompressible data.
            await FillAsync(device, 4 * Lblk, device.Size - 4 * Lblk, random: true, stopWhenFull: false);
            await device.WriteAsync(0, DeviceTestKit.Random(4 * Lblk, 6));
            await device.WriteZeroesAsync(0, 4 * Lblk, mayDeallocate: false);
        }
        await using (var device = await DeviceTestKit.OpenAsync(store, s_options))
        {
            var back = new byte[4 * Lblk];
            await device.ReadAsync(0, back);
            Assert.Equal(new byte[4 * Lblk], back);
            byte[] data = DeviceTestKit.Random(4 * Lblk, 7);
            await device.WriteAsync(0, data);
            await device.FlushAsync();
            await device.ReadAsync(0, back);
            Assert.Equal(data, back);
        }
    }

    [Fact]
    public async Task A_device_can_provision_exactly_when_its_data_pblks_store_every_lblk_uncompressed_and_one_more()
    {
        foreach (long logical in new[] { 7 * MiB, 8 * MiB })
        {
            var store = await DeviceTestKit.FormatAsync(8 * MiB, new FormatOptions { LogicalSize = logical });
            await using var device = await DeviceTestKit.OpenAsync(store, s_options);
            long needed = (device.Space.TotalLblks + 1) * device.Space.PblksPerLblk;
            Assert.Equal(needed <= (long)device.Geometry.TotalDataPblks, device.CanProvision);
            Assert.Equal(logical == 7 * MiB, device.CanProvision);
        }
    }

    /// <summary>Writes lblk after lblk from <paramref name="offset"/>; returns the bytes written before the device was full.</summary>
    private static async Task<long> FillAsync(CompressedDevice device, long offset, long length, bool random, bool stopWhenFull = true)
    {
        long written = 0;
        for (int i = 0; written < length; i++)
        {
            byte[] data = random ? DeviceTestKit.Random(Lblk, 100 + i) : DeviceTestKit.Compressible(Lblk, 100 + i);
            try
            {
                await device.WriteAsync(offset + written, data);
            }
            catch (OutOfSpaceException) when (stopWhenFull)
            {
                break;
            }
            written += Lblk;
        }
        return written;
    }

    /// <summary>Overwrites every extent not reported as a hole with incompressible data: none may fail for space.</summary>
    private static async Task OverwriteUnholedExtentsAsync(CompressedDevice device, IReadOnlyList<BlockExtent> extents)
    {
        long at = 0;
        foreach (var extent in extents)
        {
            if (!extent.IsHole)
            {
                for (long o = at; o < at + extent.Length; o += Lblk)
                {
                    byte[] data = DeviceTestKit.Random(Lblk, (int)(o / Lblk));
                    await device.WriteAsync(o, data);
                }
            }
            at += extent.Length;
        }
        await device.FlushAsync();
    }
}
