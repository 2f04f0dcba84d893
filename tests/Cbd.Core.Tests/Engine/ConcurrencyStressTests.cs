using System.Buffers.Binary;
using Cbd.Core.Engine;
using Cbd.Core.Format;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Concurrent writers and readers over disjoint and shared ranges, with flushes and a small cache
/// forcing eviction and write-back under pressure; every read is checked against a model.
/// </summary>
public class ConcurrencyStressTests
{
    private const int LblkSize = 16 * 1024;
    private const int OwnedLblks = 8;
    private const int Owners = 4;
    private const int SharedFirst = Owners * OwnedLblks;
    private const int SharedLblks = 6;

    [Fact]
    public async Task Concurrent_writers_and_readers_match_the_model()
    {
        var store = await DeviceTestKit.FormatAsync(16 << 20, new FormatOptions { LblkSize = LblkSize });
        var options = new DeviceOptions { CacheBytes = 12 * LblkSize, FlushDelay = TimeSpan.FromMilliseconds(20), WriteBackParallelism = 2 };
        var owned = new byte[Owners][];
        var sharedFinal = new byte[SharedLblks][];
        await using (var device = await DeviceTestKit.OpenAsync(store, options))
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            var versions = new long[SharedLblks];
            var tasks = new List<Task>();
            for (int w = 0; w < Owners; w++)
            {
                int owner = w;
                owned[owner] = new byte[OwnedLblks * LblkSize];
                tasks.Add(Task.Run(() => OwnerAsync(device, owner, owned[owner], 300)));
            }
            for (int w = 0; w < 2; w++)
            {
                int seed = w;
                tasks.Add(Task.Run(() => SharedWriterAsync(device, versions, seed, 200)));
            }
            var writers = Task.WhenAll(tasks);
            var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() => SharedReaderAsync(device, writers, r))).ToList();
            var flusher = Task.Run(async () =>
            {
                while (!writers.IsCompleted)
                {
                    await device.FlushAsync();
                    // Under way: the entries that requests or write-back hold are skipped, the rest must hold.
                    device.Cache.CheckInvariants();
                    await Task.Delay(5);
                }
            });
            await Task.WhenAll([writers, flusher, .. readers]).WaitAsync(stop.Token);
            for (int i = 0; i < SharedLblks; i++)
            {
                sharedFinal[i] = new byte[LblkSize];
                await device.ReadAsync((long)(SharedFirst + i) * LblkSize, sharedFinal[i]);
                CheckStamped(sharedFinal[i], SharedFirst + i);
            }
            await device.FlushAsync();
            Assert.True(device.Cache.CheckInvariants() > 0, "no cache entry was checked");
        }
        await using (var device = await DeviceTestKit.OpenAsync(store, options))
        {
            Assert.False(device.Recovered);
            for (int owner = 0; owner < Owners; owner++)
            {
                var back = new byte[OwnedLblks * LblkSize];
                await device.ReadAsync((long)owner * OwnedLblks * LblkSize, back);
                Assert.True(back.AsSpan().SequenceEqual(owned[owner]), $"owner {owner}'s range differs after reopen");
            }
            for (int i = 0; i < SharedLblks; i++)
            {
                var back = new byte[LblkSize];
                await device.ReadAsync((long)(SharedFirst + i) * LblkSize, back);
                Assert.True(back.AsSpan().SequenceEqual(sharedFinal[i]), $"shared lblk {i} differs after reopen");
            }
        }
    }

    /// <summary>Random writes, trims and reads inside a range nobody else writes: reads must match exactly.</summary>
    private static async Task OwnerAsync(CompressedDevice device, int owner, byte[] model, int operations)
    {
        var random = new Random(owner);
        long baseOffset = (long)owner * OwnedLblks * LblkSize;
        for (int n = 0; n < operations; n++)
        {
            int offset = random.Next(model.Length);
            int length = Math.Min(random.Next(1, 2 * LblkSize), model.Length - offset);
            switch (random.Next(5))
            {
                case 0 or 1:
                    var data = random.Next(2) == 0 ? DeviceTestKit.Compressible(length, random.Next()) : DeviceTestKit.Random(length, random.Next());
                    await device.WriteAsync(baseOffset + offset, data);
                    data.CopyTo(model, offset);
                    break;
                case 2:
                    await device.TrimAsync(baseOffset + offset, length);
                    Array.Clear(model, offset, length);
                    break;
                default:
                    var back = new byte[length];
                    await device.ReadAsync(baseOffset + offset, back);
                    Assert.True(back.AsSpan().SequenceEqual(model.AsSpan(offset, length)), $"owner {owner}: read [{offset}, +{length}) differs from the model");
                    break;
            }
        }
    }

    private static async Task SharedWriterAsync(CompressedDevice device, long[] versions, int seed, int operations)
    {
        var random = new Random(100 + seed);
        for (int n = 0; n < operations; n++)
        {
            int i = random.Next(SharedLblks);
            long version = Interlocked.Increment(ref versions[i]);
            // Two lblks in one request too: each lblk must still be one whole version.
            int count = i + 1 < SharedLblks && random.Next(3) == 0 ? 2 : 1;
            var data = new byte[count * LblkSize];
            for (int k = 0; k < count; k++)
                Stamp(data.AsSpan(k * LblkSize, LblkSize), SharedFirst + i + k, version * 10 + seed);
            await device.WriteAsync((long)(SharedFirst + i) * LblkSize, data);
        }
    }

    private static async Task SharedReaderAsync(CompressedDevice device, Task writers, int seed)
    {
        var random = new Random(200 + seed);
        var back = new byte[LblkSize];
        while (!writers.IsCompleted)
        {
            int i = random.Next(SharedLblks);
            await device.ReadAsync((long)(SharedFirst + i) * LblkSize, back);
            CheckStamped(back, SharedFirst + i);
        }
    }

    private static void Stamp(Span<byte> lblk, int number, long version)
    {
        var random = new Random(HashCode.Combine(number, version));
        random.NextBytes(lblk[16..]);
        // Compressible tail so both stored forms occur.
        lblk[(LblkSize / 2)..].Fill((byte)version);
        BinaryPrimitives.WriteInt64LittleEndian(lblk, number);
        BinaryPrimitives.WriteInt64LittleEndian(lblk[8..], version);
    }

    private static void CheckStamped(byte[] lblk, int number)
    {
        long version = BinaryPrimitives.ReadInt64LittleEndian(lblk.AsSpan(8));
        if (version == 0 && !lblk.AsSpan().ContainsAnyExcept((byte)0))
            return; // never written
        Assert.Equal(number, BinaryPrimitives.ReadInt64LittleEndian(lblk));
        var expected = new byte[LblkSize];
        Stamp(expected, number, version);
        Assert.True(lblk.AsSpan().SequenceEqual(expected), $"lblk {number} is not one whole version (torn or stale mix)");
    }
}
