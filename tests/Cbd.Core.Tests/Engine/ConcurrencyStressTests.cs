using System.Buffers.Binary;
using Cbd.Core.Engine;
using Cbd.Core.Format;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Concurrent writers and readers over disjoint and shared ranges, with flushes and a small cache
/// forcing eviction and write-back under pressure; every read is checked against a model. With a write log
/// of the least size allowed, the partial writes go through the log, which wraps and merges all the time,
/// and the shared lblks also take partial writes, so whole-lblk writes meet pending records.
/// </summary>
public class ConcurrencyStressTests
{
    private const int LblkSize = 16 * 1024;
    private const int OwnedLblks = 8;
    private const int Owners = 4;
    private const int SharedFirst = Owners * OwnedLblks;
    private const int SharedLblks = 6;

    // The stamp's unit: a shared lblk is whole when each of its chunks is one whole version.
    private const int Chunk = 4096;
    private const int ChunksPerLblk = LblkSize / Chunk;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Concurrent_writers_and_readers_match_the_model(bool withLog)
    {
        long logSize = withLog ? (long)Geometry.MinLogPblks(LblkSize) * Layout.PblkSize : 0;
        var store = await DeviceTestKit.FormatAsync(16 << 20, new FormatOptions { LblkSize = LblkSize, LogSize = logSize });
        var geometry = await Geometry.ReadAsync(store);
        Assert.Equal(logSize, geometry.LogBytes);
        var options = new DeviceOptions { CacheBytes = 12 * LblkSize, FlushDelay = TimeSpan.FromMilliseconds(20), WriteBackParallelism = 2 };
        long logUsedSeen = 0;
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
                tasks.Add(Task.Run(() => SharedWriterAsync(device, versions, seed, 200, partial: withLog)));
            }
            var writers = Task.WhenAll(tasks);
            var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() => SharedReaderAsync(device, writers, r, whole: !withLog))).ToList();
            var flusher = Task.Run(async () =>
            {
                while (!writers.IsCompleted)
                {
                    await device.FlushAsync();
                    // Under way: the entries that requests or write-back hold are skipped, the rest must hold.
                    device.Cache.CheckInvariants();
                    logUsedSeen = Math.Max(logUsedSeen, device.GetStats().LogUsedBytes);
                    await Task.Delay(5);
                }
            });
            await Task.WhenAll([writers, flusher, .. readers]).WaitAsync(stop.Token);
            for (int i = 0; i < SharedLblks; i++)
            {
                sharedFinal[i] = new byte[LblkSize];
                await device.ReadAsync((long)(SharedFirst + i) * LblkSize, sharedFinal[i]);
                CheckStamped(sharedFinal[i], SharedFirst + i, whole: !withLog);
            }
            await device.FlushAsync();
            Assert.True(device.Cache.CheckInvariants() > 0, "no cache entry was checked");
            if (withLog)
                Assert.True(logUsedSeen > 0, "the log never held a record: the test did not exercise it");
        }
        // A clean close merges every record and moves the tail to the head.
        var end = await LogReader.ScanAsync(store, await Geometry.ReadAsync(store), onRecord: null);
        Assert.True(end.Records == 0, $"the log holds {end.Records} records after a clean close");
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

    /// <summary>
    /// Whole lblks (two in one request at times), and with <paramref name="partial"/> also runs of chunks within one
    /// lblk, which go to the log: each chunk a request writes carries that request's version.
    /// </summary>
    private static async Task SharedWriterAsync(CompressedDevice device, long[] versions, int seed, int operations, bool partial)
    {
        var random = new Random(100 + seed);
        for (int n = 0; n < operations; n++)
        {
            int i = random.Next(SharedLblks);
            long version = Interlocked.Increment(ref versions[i]);
            if (partial && random.Next(2) == 0)
            {
                int first = random.Next(ChunksPerLblk);
                int chunks = random.Next(1, ChunksPerLblk - first + (first == 0 ? 0 : 1));
                var part = new byte[chunks * Chunk];
                for (int c = 0; c < chunks; c++)
                    Stamp(part.AsSpan(c * Chunk, Chunk), SharedFirst + i, first + c, version * 10 + seed);
                await device.WriteAsync((long)(SharedFirst + i) * LblkSize + first * Chunk, part);
                continue;
            }
            // Two lblks in one request too: each lblk must still be one whole version.
            int count = i + 1 < SharedLblks && random.Next(3) == 0 ? 2 : 1;
            var data = new byte[count * LblkSize];
            for (int k = 0; k < count; k++)
            {
                for (int c = 0; c < ChunksPerLblk; c++)
                    Stamp(data.AsSpan(k * LblkSize + c * Chunk, Chunk), SharedFirst + i + k, c, version * 10 + seed);
            }
            await device.WriteAsync((long)(SharedFirst + i) * LblkSize, data);
        }
    }

    private static async Task SharedReaderAsync(CompressedDevice device, Task writers, int seed, bool whole)
    {
        var random = new Random(200 + seed);
        var back = new byte[LblkSize];
        while (!writers.IsCompleted)
        {
            int i = random.Next(SharedLblks);
            await device.ReadAsync((long)(SharedFirst + i) * LblkSize, back);
            CheckStamped(back, SharedFirst + i, whole);
        }
    }

    private static void Stamp(Span<byte> chunk, int number, int index, long version)
    {
        var random = new Random(HashCode.Combine(number, index, version));
        random.NextBytes(chunk[24..]);
        // Compressible tail so both stored forms occur.
        chunk[(Chunk / 2)..].Fill((byte)version);
        BinaryPrimitives.WriteInt64LittleEndian(chunk, number);
        BinaryPrimitives.WriteInt64LittleEndian(chunk[8..], index);
        BinaryPrimitives.WriteInt64LittleEndian(chunk[16..], version);
    }

    /// <summary>
    /// Every chunk is one whole version of itself, or zero if never written; with <paramref name="whole"/> (only whole
    /// lblks were written) every chunk carries the same version too.
    /// </summary>
    private static void CheckStamped(byte[] lblk, int number, bool whole)
    {
        var expected = new byte[Chunk];
        long first = BinaryPrimitives.ReadInt64LittleEndian(lblk.AsSpan(16));
        for (int c = 0; c < ChunksPerLblk; c++)
        {
            var chunk = lblk.AsSpan(c * Chunk, Chunk);
            long version = BinaryPrimitives.ReadInt64LittleEndian(chunk[16..]);
            if (whole)
                Assert.True(version == first, $"lblk {number}: chunk {c} has version {version}, chunk 0 {first} (torn or stale mix)");
            if (version == 0 && !chunk.ContainsAnyExcept((byte)0))
                continue; // never written
            Assert.Equal(number, BinaryPrimitives.ReadInt64LittleEndian(chunk));
            Assert.Equal(c, BinaryPrimitives.ReadInt64LittleEndian(chunk[8..]));
            Stamp(expected, number, c, version);
            Assert.True(chunk.SequenceEqual(expected), $"lblk {number}: chunk {c} is not one whole version (torn or stale mix)");
        }
    }
}
