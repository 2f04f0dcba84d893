using System.IO.Hashing;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using Xunit.Abstractions;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Power cuts at every point of a recorded workload (FORMAT.md, "Consistency"), on a store whose fsyncs
/// complete late and out of order (<see cref="RecordingStore"/>), so that checkpoints overlap as they do
/// on a real disk: the image opens, every lblk holds one of the contents it may hold at that instant,
/// nothing a completed flush or FUA write covered is lost, and the recovered device works on.
/// </summary>
public class CrashConsistencyTests(ITestOutputHelper output)
{
    private const int LblkSize = 16 * 1024;
    private const int Lblks = 24;

    /// <summary>
    /// 6 lblks, taken as they are (<see cref="DeviceOptions.ExactCacheSize"/>): write-back starts at the
    /// first dirty lblk and writers wait at 4, so checkpoints run under pressure between flushes.
    /// </summary>
    private const int CacheLblks = 6;

    private enum Durability { None, Flush, Fua }

    /// <summary>One operation: the log's length before it was called and after it returned, and the same
    /// instants on a clock both writers share (the log may not move between two operations).</summary>
    private sealed record Step(int LogStart, int LogEnd, long Begun, long Ended, Durability Durability, Dictionary<int, ulong> Changes);

    /// <param name="Patched">lblks the workload's merges stored patched (FORMAT.md, "Patched lblks").</param>
    private sealed record Workload(int Seed, RecordingStore Recorder, List<Step> Steps, Geometry Geometry, long Patched = 0);

    /// <summary>
    /// The write log of the workloads that have one (FORMAT.md, "The write log"): room for a few partial lblks, so that
    /// it fills, merges, wraps with pads and moves its tail many times in 60 operations.
    /// </summary>
    private const int LogBytes = 96 * 1024;

    /// <summary>Where the recorded log shows checkpoints overlapping.</summary>
    /// <param name="DataBeforeEarlierLbat">Data writes followed by an lbat write with no fsync completing in
    /// between. The lbat write is a commit's, after its publication, after the publications before it; had
    /// the data write's own checkpoint published by then, its data fsync would have completed in between.
    /// So a later checkpoint wrote its data before an earlier one wrote its lbat.</param>
    /// <param name="DataUnderTwoFsyncs">Data writes logged while two or more fsyncs were in flight.</param>
    private sealed record Overlap(int DataBeforeEarlierLbat, int DataUnderTwoFsyncs, int MaxFsyncsInFlight);

    /// <summary>Four workloads; CBD_CRASH_SEEDS=n adds n more for a longer run.</summary>
    public static TheoryData<int, int, int> Workloads()
    {
        var data = new TheoryData<int, int, int> { { 1, 1, CacheLblks }, { 2, 3, CacheLblks }, { 3, 1, CacheLblks }, { 4, 1, CacheLblks } };
        int more = int.TryParse(Environment.GetEnvironmentVariable("CBD_CRASH_SEEDS"), out int n) ? n : 0;
        for (int seed = 100; seed < 100 + more; seed++)
            data.Add(seed, 1, CacheLblks);
        return data;
    }

    [Theory]
    [MemberData(nameof(Workloads))]
    public async Task Every_cut_point_leaves_old_or_new_contents(int seed, int variantsPerCut, int cacheLblks)
    {
        var workload = await RecordOverlappingWorkloadAsync(seed, operations: 60, cacheLblks);
        // The commits gave freed pblks back to the store: the cuts go through those punches too.
        Assert.True(workload.Recorder.Punches > 0, "no freed pblk was punched");
        await VerifyCutsAsync(workload, Enumerable.Range(0, workload.Recorder.Count + 1), variantsPerCut);
    }

    /// <summary>
    /// The same with a write log: cuts fall during appends (torn records at 512 bytes, records durable out of order
    /// behind held fsyncs), during merges (patched ones among them) and during the header writes that move the log's tail.
    /// </summary>
    [Theory]
    [MemberData(nameof(Workloads))]
    public async Task Every_cut_point_of_a_workload_with_a_write_log_leaves_old_or_new_contents(int seed, int variantsPerCut, int cacheLblks)
    {
        var workload = await RecordWorkloadAsync(seed, operations: 60, cacheLblks, logBytes: LogBytes);
        var (appends, tailMoves) = MeasureLog(workload);
        Assert.True(appends > 20 && tailMoves > 2, $"seed {seed}: {appends} records appended, the tail moved {tailMoves} times");
        // Merges under pressure store lblks patched (FORMAT.md, "Patched lblks"): the cuts fall among those too.
        Assert.True(workload.Patched > 0, $"seed {seed}: no lblk was stored patched");
        output.WriteLine($"seed {workload.Seed}: {workload.Recorder.Count} log entries, {appends} records, {tailMoves} tail moves, {workload.Patched} lblks patched");
        await VerifyCutsAsync(workload, Enumerable.Range(0, workload.Recorder.Count + 1), variantsPerCut);
    }

    /// <summary>
    /// The simulation must fail on an engine that breaks the log's rules. What it caught while this test was written (at
    /// seed 1 in each run):
    /// - <see cref="CheckpointFault.RetireBeforeCommitFsync"/>: the tail written to the header before the merged entries were
    ///   durable; a cut there skips records a flush had made durable: "lblk 2 holds contents it never had at that point, or
    ///   lost what a flush or FUA write made durable".
    /// - <see cref="CheckpointFault.WholeWriteOverLiveRecords"/>: a whole-lblk write taken into the cache while older records
    ///   of the lblk were live; a cut after its write-back replays them over it: the same message, for lblk 23.
    /// Before log_tail_epoch existed, <see cref="Every_cut_point_of_a_workload_with_a_write_log_leaves_old_or_new_contents"/>
    /// failed in 3 of 4 workloads: a recovery appended a record that ended exactly where a record of the crashed session had
    /// been left unreached, the tail then moved to the head there, and the next open took the leftover for a new record.
    /// </summary>
    [Theory]
    [InlineData(nameof(CheckpointFault.RetireBeforeCommitFsync), 16)]
    [InlineData(nameof(CheckpointFault.WholeWriteOverLiveRecords), 16)]
    public async Task Simulation_catches_a_broken_log_rule(string faultName, int maxSeeds)
    {
        var fault = Enum.Parse<CheckpointFault>(faultName);
        for (int seed = 1; seed <= maxSeeds; seed++)
        {
            var workload = await RecordWorkloadAsync(seed, operations: 60, cacheLblks: 16, fault, logBytes: LogBytes);
            var failure = await Record.ExceptionAsync(() => VerifyCutsAsync(workload, Enumerable.Range(0, workload.Recorder.Count + 1), 1));
            if (failure is not null)
            {
                output.WriteLine($"{fault}: caught at seed {seed}: {failure.GetType().Name}: {failure.Message}");
                return;
            }
        }
        Assert.Fail($"{fault}: every cut of {maxSeeds} workloads passed");
    }

    /// <summary>Records appended to the log region, and header writes after the first (which sets DIRTY): the tail's moves.</summary>
    private static (int Appends, int TailMoves) MeasureLog(Workload workload)
    {
        var g = workload.Geometry;
        int appends = 0, headers = 0;
        foreach (var entry in workload.Recorder.Log)
        {
            if (entry is not RecordingStore.Write write)
                continue;
            if (write.Offset >= g.LogStartByte)
                appends++;
            else if (write.Offset == 0)
                headers++;
        }
        return (appends, Math.Max(0, headers - 2));
    }

    [Fact]
    public async Task Sampled_cut_points_of_a_long_workload()
    {
        var workload = await RecordOverlappingWorkloadAsync(seed: 42, operations: 250, CacheLblks);
        // Three stages at once: a checkpoint writing its data while two fsyncs of the ones before are held.
        Assert.True(MeasureOverlap(workload).DataUnderTwoFsyncs > 0, $"no data write with two fsyncs in flight: {MeasureOverlap(workload)}");
        var random = new Random(42);
        var cuts = Enumerable.Range(0, 1000).Select(_ => random.Next(workload.Recorder.Count + 1));
        await VerifyCutsAsync(workload, cuts, variantsPerCut: 1);
    }

    /// <summary>
    /// Records the workload of <paramref name="seed"/> until its log shows a checkpoint's data written
    /// before the lbat of one before it, so that the cuts are really taken through overlapping checkpoints.
    /// The engine's threads decide how often that happens: one to three tries here (with a single writer
    /// and a 16-lblk cache, where write-back starts only at 4 dirty lblks, often more than 10).
    /// </summary>
    private async Task<Workload> RecordOverlappingWorkloadAsync(int seed, int operations, int cacheLblks)
    {
        var tries = new List<Overlap>();
        for (int attempt = 0; attempt < 20; attempt++)
        {
            var workload = await RecordWorkloadAsync(seed + 1001 * attempt, operations, cacheLblks);
            var overlap = MeasureOverlap(workload);
            tries.Add(overlap);
            if (overlap.DataBeforeEarlierLbat > 0)
            {
                output.WriteLine($"seed {workload.Seed}: {workload.Recorder.Count} log entries, {overlap}");
                return workload;
            }
        }
        Assert.Fail($"seed {seed}: no recorded log had a checkpoint overlap the one before: {string.Join(", ", tries)}");
        return null;
    }

    /// <summary>
    /// The simulation must fail on an engine that breaks the checkpoint order. What it caught over seeds
    /// 1-8 (60 operations, every cut) while this test was written, and what the same workloads found with
    /// every fsync completing as it was called (as in a simulation that does not hold them):
    /// - <see cref="CheckpointFault.FreeBeforeCommitFsync"/>: 7 of 8 seeds, against none. A cut while the
    ///   commit's lbat writes or fsync were still in flight brought back an old entry whose pblks the next
    ///   checkpoint had already filled: "lblk 19: checksum mismatch ... in pblks 24,25".
    /// - <see cref="CheckpointFault.PublishBeforeDataFsync"/>: 6 of 8 seeds, against none. The commit of
    ///   the checkpoint before wrote the new entries while their data fsync was still held, and a cut there
    ///   left an entry pointing at data that never landed: "lblk 22: checksum mismatch ... in pblks 25,26,27,28".
    /// - <see cref="CheckpointFault.PunchBeforeCommitFsync"/> (added with the punching of freed pblks): at seed 1 in each
    ///   run. A cut after the punch, with the commit's lbat writes or fsync still in flight, brought back an old entry
    ///   whose pblks read as zeros: "lblk 20: checksum mismatch ... in pblks 3,4,5". Pblks returned to the allocator
    ///   before their punch (<see cref="CheckpointFault.FreeBeforePunch"/>) pass here, since on this store the punch
    ///   follows the free with nothing in between: <see cref="PblkReleaseTests"/> holds a punch to catch that.
    /// A publication that did not wait for the one before (tried with a one-writer workload) was not
    /// caught in 8 seeds: it matters only when the later data fsync completes first and both checkpoints
    /// hold the same lblk. A FUA write that skips its flush (tried by hand) failed every workload of
    /// <see cref="Every_cut_point_leaves_old_or_new_contents"/> at the first cut after it returned.
    /// </summary>
    [Theory]
    [InlineData(nameof(CheckpointFault.FreeBeforeCommitFsync), 16)]
    [InlineData(nameof(CheckpointFault.PublishBeforeDataFsync), 16)]
    [InlineData(nameof(CheckpointFault.PunchBeforeCommitFsync), 16)]
    public async Task Simulation_catches_a_broken_checkpoint_order(string faultName, int maxSeeds)
    {
        var fault = Enum.Parse<CheckpointFault>(faultName);
        for (int seed = 1; seed <= maxSeeds; seed++)
        {
            var workload = await RecordWorkloadAsync(seed, operations: 60, cacheLblks: 16, fault);
            var failure = await Record.ExceptionAsync(() => VerifyCutsAsync(workload, Enumerable.Range(0, workload.Recorder.Count + 1), 1));
            if (failure is not null)
            {
                output.WriteLine($"{fault}: caught at seed {seed}, {MeasureOverlap(workload)}: {failure.GetType().Name}: {failure.Message}");
                return;
            }
        }
        Assert.Fail($"{fault}: every cut of {maxSeeds} workloads passed");
    }

    private static async Task<Workload> RecordWorkloadAsync(int seed, int operations, int cacheLblks = CacheLblks, CheckpointFault fault = CheckpointFault.None,
        long logBytes = 0)
    {
        var store = new MemoryBackingStore(4 << 20);
        await ImageFormatter.FormatAsync(store, new FormatOptions { LblkSize = LblkSize, LogicalSize = 64 * LblkSize, LogSize = logBytes });
        var geometry = await Geometry.ReadAsync(store);
        // How eagerly fsyncs complete while writes go on differs from seed to seed.
        double[] releaseOnWrite = [0, 0.02, 0.1, 0.3];
        var recorder = new RecordingStore(store, seed, releaseOnWrite[seed % releaseOnWrite.Length]);
        var steps = new List<Step>();
        var options = new DeviceOptions
        {
            CacheBytes = cacheLblks * LblkSize,
            ExactCacheSize = true,
            FlushDelay = TimeSpan.FromHours(1),
            WriteBackParallelism = 2,
            Fault = fault,
        };
        var open = DeviceTestKit.OpenAsync(recorder, options).AsTask();
        await recorder.DriveAsync(open);
        var device = await open;
        var contents = new byte[Lblks][];
        for (int i = 0; i < Lblks; i++)
            contents[i] = new byte[LblkSize];
        long clock = 0;
        steps.Add(new Step(0, recorder.Count, 0, 0, Durability.None, []));
        // Two writers on their own halves of the lblks, so that one dirties lblks while a checkpoint of the
        // other's is being written: each lblk still sees one operation at a time, in the order of its steps.
        const int LaneLblks = Lblks / 2;
        async Task RunLaneAsync(int lane, int laneOperations)
        {
            var random = new Random(seed * 2 + lane);
            int laneStart = lane * LaneLblks * LblkSize, laneEnd = laneStart + LaneLblks * LblkSize;
            for (int n = 0; n < laneOperations; n++)
            {
                int start = recorder.Count;
                long begun = Interlocked.Increment(ref clock);
                var changes = new Dictionary<int, ulong>();
                var durability = Durability.None;
                int choice = random.Next(10);
                if (choice < 6)
                {
                    int offset = laneStart + random.Next(LaneLblks) * LblkSize + (random.Next(3) == 0 ? random.Next(LblkSize) : 0);
                    int length = Math.Min(random.Next(1, 3 * LblkSize), laneEnd - offset);
                    var data = random.Next(2) == 0 ? DeviceTestKit.Compressible(length, random.Next()) : DeviceTestKit.Random(length, random.Next());
                    bool fua = random.Next(8) == 0;
                    await recorder.DriveAsync(device.WriteAsync(offset, data, fua));
                    Apply(contents, changes, offset, data);
                    durability = fua ? Durability.Fua : Durability.None;
                }
                else if (choice < 8)
                {
                    int offset = laneStart + random.Next(LaneLblks) * LblkSize + (random.Next(3) == 0 ? random.Next(LblkSize) : 0);
                    int length = Math.Min(random.Next(1, 2 * LblkSize), laneEnd - offset);
                    if (random.Next(2) == 0)
                    {
                        await recorder.DriveAsync(device.TrimAsync(offset, length));
                    }
                    else
                    {
                        bool fua = random.Next(4) == 0;
                        await recorder.DriveAsync(device.WriteZeroesAsync(offset, length, mayDeallocate: random.Next(2) == 0, fua));
                        durability = fua ? Durability.Fua : Durability.None;
                    }
                    Apply(contents, changes, offset, new byte[length]);
                }
                else
                {
                    await recorder.DriveAsync(device.FlushAsync());
                    durability = Durability.Flush;
                }
                long ended = Interlocked.Increment(ref clock);
                lock (steps)
                    steps.Add(new Step(start, recorder.Count, begun, ended, durability, changes));
            }
        }
        await Task.WhenAll(Task.Run(() => RunLaneAsync(0, operations / 2)), Task.Run(() => RunLaneAsync(1, operations - operations / 2)));
        int closeStart = recorder.Count;
        long patched = device.Counters.Patches;
        await recorder.DriveAsync(device.DisposeAsync());
        steps.Add(new Step(closeStart, recorder.Count, clock + 1, clock + 2, Durability.Flush, []));
        return new Workload(seed, recorder, steps, geometry, patched);
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

    private static Overlap MeasureOverlap(Workload workload)
    {
        var geometry = workload.Geometry;
        int dataBeforeLbat = 0, dataUnderTwo = 0, sinceFlushEnd = 0, inFlight = 0;
        foreach (var entry in workload.Recorder.Log)
        {
            switch (entry)
            {
                case RecordingStore.FlushStart:
                    inFlight++;
                    break;
                case RecordingStore.FlushEnd:
                    inFlight--;
                    sinceFlushEnd = 0;
                    break;
                case RecordingStore.Write write:
                    ulong pblk = (ulong)(write.Offset / Layout.PblkSize);
                    if (geometry.TryLocateDataPblk(pblk, out _, out _))
                    {
                        sinceFlushEnd++;
                        if (inFlight >= 2)
                            dataUnderTwo++;
                    }
                    else if (IsLbat(geometry, pblk))
                    {
                        dataBeforeLbat += sinceFlushEnd;
                        sinceFlushEnd = 0;
                    }
                    break;
            }
        }
        return new Overlap(dataBeforeLbat, dataUnderTwo, workload.Recorder.MaxFsyncsInFlight);
    }

    private static bool IsLbat(Geometry geometry, ulong pblk)
    {
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            if (pblk >= geometry.LbatStart(zone) && pblk < geometry.LbatStart(zone) + geometry.LbatPblks)
                return true;
        }
        return false;
    }

    /// <summary>
    /// The contents each lblk may hold after a cut once <paramref name="cut"/> log entries were logged:
    /// those as of its newest durability point (its last step that returned before a flush or clean close
    /// that returned had started, or its last FUA step that returned), and every newer one whose operation
    /// had started. An lblk's steps are in its order in the list: one writer touches it.
    /// </summary>
    private static HashSet<ulong>[] Allowed(List<Step> steps, int cut)
    {
        ulong zeroHash = XxHash3.HashToUInt64(new byte[LblkSize]);
        long flushedFrom = steps.Where(s => s.Durability == Durability.Flush && s.LogEnd <= cut).Select(s => s.Begun).DefaultIfEmpty(0).Max();
        var allowed = new HashSet<ulong>[Lblks];
        for (int lblk = 0; lblk < Lblks; lblk++)
        {
            int floor = steps.FindLastIndex(s => s.Changes.ContainsKey(lblk) &&
                (s.Ended < flushedFrom || (s.Durability == Durability.Fua && s.LogEnd <= cut)));
            allowed[lblk] = [floor < 0 ? zeroHash : steps[floor].Changes[lblk]];
            for (int i = floor + 1; i < steps.Count; i++)
            {
                if (steps[i].LogStart <= cut && steps[i].Changes.TryGetValue(lblk, out ulong h))
                    allowed[lblk].Add(h);
            }
        }
        return allowed;
    }

    private static async Task VerifyCutsAsync(Workload workload, IEnumerable<int> cuts, int variantsPerCut)
    {
        var (seed, recorder, steps, _, _) = workload;
        var random = new Random(seed);
        int checkedCuts = 0;
        foreach (int cut in cuts)
        {
            var allowed = Allowed(steps, cut);
            for (int variant = 0; variant < variantsPerCut; variant++)
            {
                string where = $"seed {seed}, cut {cut}/{recorder.Count}, variant {variant}";
                var image = recorder.ImageAt(cut, random);
                // The consistency check first: at most a dirty image whose pbats and stats the next open rebuilds.
                var report = await DeviceChecker.CheckAsync(image);
                Assert.False(report.HasErrors, $"{where}: check found " +
                    string.Join("; ", report.Problems.Where(p => p.Severity == CheckSeverity.Error).Select(p => p.Message)));
                var seen = new byte[Lblks][];
                await using (var device = await DeviceTestKit.OpenAsync(image))
                {
                    for (int lblk = 0; lblk < Lblks; lblk++)
                    {
                        seen[lblk] = new byte[LblkSize];
                        await device.ReadAsync((long)lblk * LblkSize, seen[lblk]);
                        Assert.True(allowed[lblk].Contains(XxHash3.HashToUInt64(seen[lblk])),
                            $"{where}: lblk {lblk} holds contents it never had at that point, or lost what a flush or FUA write made durable");
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
                        Assert.True(back.AsSpan().SequenceEqual(seen[lblk]), $"{where}: lblk {lblk} changed after recovery and new writes");
                    }
                }
            }
            checkedCuts++;
        }
        Assert.True(checkedCuts > 0);
    }
}
