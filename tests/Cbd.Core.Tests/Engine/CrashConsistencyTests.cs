using System.IO.Hashing;
using Cbd.Core.Engine;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Power cuts at every point of a recorded workload (FORMAT.md, "Consistency"): the image opens, every
/// lblk holds one of the contents it may hold at that instant, and the recovered device works on.
/// </summary>
public class CrashConsistencyTests
{
    private const int LblkSize = 16 * 1024;
    private const int Lblks = 24;

    private sealed record Step(int LogStart, int LogEnd, bool IsFlush, Dictionary<int, ulong> Changes);

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 3)]
    [InlineData(3, 1)]
    public async Task Every_cut_point_leaves_old_or_new_contents(int seed, int variantsPerCut)
    {
        var (recorder, steps) = await RecordWorkloadAsync(seed, operations: 60);
        await VerifyCutsAsync(recorder, steps, Enumerable.Range(0, recorder.Count + 1), variantsPerCut, seed);
    }

    [Fact]
    public async Task Sampled_cut_points_of_a_long_workload()
    {
        var (recorder, steps) = await RecordWorkloadAsync(seed: 42, operations: 400);
        var random = new Random(42);
        var cuts = Enumerable.Range(0, 1500).Select(_ => random.Next(recorder.Count + 1));
        await VerifyCutsAsync(recorder, steps, cuts, variantsPerCut: 1, seed: 42);
    }

    private static async Task<(RecordingStore, List<Step>)> RecordWorkloadAsync(int seed, int operations)
    {
        var store = new MemoryBackingStore(4 << 20);
        await CompressedDevice.FormatAsync(store, new FormatOptions { LblkSize = LblkSize, LogicalSize = 64 * LblkSize });
        var recorder = new RecordingStore(store);
        var random = new Random(seed);
        var steps = new List<Step>();
        // Tiny cache: write-back also runs under pressure, between flushes.
        var device = await DeviceTestKit.OpenAsync(recorder, new DeviceOptions { CacheBytes = 6 * LblkSize, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 2 });
        var contents = new byte[Lblks][];
        for (int i = 0; i < Lblks; i++)
            contents[i] = new byte[LblkSize];
        steps.Add(new Step(0, recorder.Count, false, []));
        for (int n = 0; n < operations; n++)
        {
            int start = recorder.Count;
            var changes = new Dictionary<int, ulong>();
            int choice = random.Next(10);
            if (choice < 6)
            {
                int first = random.Next(Lblks);
                int offset = first * LblkSize + (random.Next(3) == 0 ? random.Next(LblkSize) : 0);
                int length = Math.Min(random.Next(1, 3 * LblkSize), Lblks * LblkSize - offset);
                var data = random.Next(2) == 0 ? DeviceTestKit.Compressible(length, random.Next()) : DeviceTestKit.Random(length, random.Next());
                await device.WriteAsync(offset, data, fua: random.Next(8) == 0);
                Apply(contents, changes, offset, data);
            }
            else if (choice < 8)
            {
                int offset = random.Next(Lblks) * LblkSize;
                int length = Math.Min(random.Next(1, 2 * LblkSize), Lblks * LblkSize - offset);
                await device.TrimAsync(offset, length);
                Apply(contents, changes, offset, new byte[length]);
            }
            else
            {
                await device.FlushAsync();
            }
            steps.Add(new Step(start, recorder.Count, choice >= 8, changes));
        }
        int closeStart = recorder.Count;
        await device.DisposeAsync();
        steps.Add(new Step(closeStart, recorder.Count, true, []));
        return (recorder, steps);
    }

    private static void Apply(byte[][] contents, Dictionary<int, ulong> changes, int offset, byte[] data)
    {
        for (int done = 0; done < data.Length;)
        {
            int lblk = (offset + done) / LblkSize;
            int within = (offset + done) % LblkSize;
            int n = Math.Min(data.Length - done, LblkSize - within);
            data.AsSpan(done, n).CopyTo(contents[lblk].AsSpan(within));
            changes[lblk] = XxHash3.HashToUInt64(contents[lblk]);
            done += n;
        }
    }

    private static async Task VerifyCutsAsync(RecordingStore recorder, List<Step> steps, IEnumerable<int> cuts, int variantsPerCut, int seed)
    {
        ulong zeroHash = XxHash3.HashToUInt64(new byte[LblkSize]);
        var random = new Random(seed);
        int checkedCuts = 0;
        foreach (int cut in cuts)
        {
            // The newest flush (or FUA write, or clean close) that had returned by the cut: what it covers must survive.
            int durable = steps.FindLastIndex(s => s.IsFlush && s.LogEnd <= cut);
            var allowed = new HashSet<ulong>[Lblks];
            for (int lblk = 0; lblk < Lblks; lblk++)
            {
                ulong current = zeroHash;
                int flushStart = durable < 0 ? 0 : durable;
                for (int i = 0; i < flushStart; i++)
                {
                    if (steps[i].Changes.TryGetValue(lblk, out ulong h))
                        current = h;
                }
                allowed[lblk] = [current];
                for (int i = flushStart; i < steps.Count && steps[i].LogStart <= cut; i++)
                {
                    if (steps[i].Changes.TryGetValue(lblk, out ulong h))
                        allowed[lblk].Add(h);
                }
            }
            for (int variant = 0; variant < variantsPerCut; variant++)
            {
                var image = recorder.ImageAt(cut, random);
                // The consistency check first: at most a dirty image whose pbats and stats the next open rebuilds.
                var report = await DeviceChecker.CheckAsync(image);
                Assert.False(report.HasErrors, $"cut {cut}/{recorder.Count}, variant {variant}: check found " +
                    string.Join("; ", report.Problems.Where(p => p.Severity == CheckSeverity.Error).Select(p => p.Message)));
                var seen = new byte[Lblks][];
                await using (var device = await DeviceTestKit.OpenAsync(image))
                {
                    for (int lblk = 0; lblk < Lblks; lblk++)
                    {
                        seen[lblk] = new byte[LblkSize];
                        await device.ReadAsync((long)lblk * LblkSize, seen[lblk]);
                        Assert.True(allowed[lblk].Contains(XxHash3.HashToUInt64(seen[lblk])),
                            $"cut {cut}/{recorder.Count}, variant {variant}: lblk {lblk} holds contents it never had at that point");
                    }
                    // The recovered allocator must not hand out pblks that live lblks use.
                    for (int lblk = 0; lblk < Lblks; lblk += 3)
                    {
                        seen[lblk] = DeviceTestKit.Random(LblkSize, cut * 31 + lblk);
                        await device.WriteAsync((long)lblk * LblkSize, seen[lblk]);
                    }
                }
                await using (var device = await DeviceTestKit.OpenAsync(image))
                {
                    Assert.False(device.Recovered, "a clean close must need no recovery");
                    var back = new byte[LblkSize];
                    for (int lblk = 0; lblk < Lblks; lblk++)
                    {
                        await device.ReadAsync((long)lblk * LblkSize, back);
                        Assert.True(back.AsSpan().SequenceEqual(seen[lblk]), $"cut {cut}, variant {variant}: lblk {lblk} changed after recovery and new writes");
                    }
                }
            }
            checkedCuts++;
        }
        Assert.True(checkedCuts > 0);
    }
}
