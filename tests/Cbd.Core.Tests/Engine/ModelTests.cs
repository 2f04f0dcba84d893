using System.IO.Hashing;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using CsCheck;
using Xunit.Abstractions;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Random sequences of operations against the device and against a plain byte array; every read must
/// agree. CsCheck shrinks a failure to a minimal sequence. The device is small enough to fill: a write
/// may fail with <see cref="OutOfSpaceException"/>, and then has changed exactly what the engine allows
/// (the lblks before the one that did not fit, in order). A crash reopens the image as a power cut
/// would leave it. A group of operations runs concurrently on ranges that may overlap, and the model
/// allows any serial order, lblk by lblk, of the operations touching the same lblk. Tried by hand, each
/// failed within 100 runs: a FUA write that skipped its flush ("after the crash lblk 24 holds contents it
/// never had since its last flush"), and a write refused for lack of space that did not put its lblk back.
/// </summary>
public class ModelTests(ITestOutputHelper output)
{
    public enum Kind { Write, Read, Trim, WriteZeroes, Flush, Reopen, Crash, Fill, Concurrent }

    public sealed record Op(Kind Kind, int Offset, int Length, int Seed, bool Flag, Op[]? Group = null)
    {
        public override string ToString() => Kind switch
        {
            Kind.Concurrent => $"Concurrent[{string.Join(" | ", Group!.Select(o => o.ToString()))}]",
            Kind.Flush or Kind.Reopen => Kind.ToString(),
            Kind.Crash => $"Crash({(Flag ? "after flush" : "")})",
            _ => $"{Kind}({Offset}, {Length}{(Kind is Kind.Write or Kind.Fill ? $", seed {Seed}" : "")}{(Flag ? ", flag" : "")})",
        };
    }

    private const int LblkSize = 16 * 1024;
    private const int LogicalSize = 64 * LblkSize;

    /// <summary>
    /// Iterations of the model test; CBD_MODEL_ITERATIONS sets more for a longer run.
    /// </summary>
    private static readonly int s_iterations = int.TryParse(Environment.GetEnvironmentVariable("CBD_MODEL_ITERATIONS"), out int n) && n > 0 ? n : 100;

    private static readonly Gen<int> s_offset = Gen.OneOf(
        Gen.Int[0, LogicalSize - 1],
        Gen.Int[0, LogicalSize / LblkSize - 1].Select(i => i * LblkSize),
        Gen.Int[0, LogicalSize / 512 - 1].Select(i => i * 512));

    private static readonly Gen<int> s_length = Gen.OneOf(Gen.Int[1, 3 * LblkSize], Gen.Const(LblkSize), Gen.Int[1, 64].Select(i => i * 512));

    /// <summary>Concurrent operations stay in the first 6 lblks, so that they overlap often.</summary>
    private static readonly Gen<int> s_nearOffset = Gen.OneOf(
        Gen.Int[0, 6 * LblkSize - 1],
        Gen.Int[0, 5].Select(i => i * LblkSize));

    private static readonly Gen<int> s_nearLength = Gen.OneOf(Gen.Int[1, 2 * LblkSize], Gen.Const(LblkSize));

    private static readonly Gen<Op> s_concurrentOp = Gen.Frequency(
        (4, Gen.Select(s_nearOffset, s_nearLength, Gen.Int[0, 1000], Gen.Bool, (o, l, s, f) => new Op(Kind.Write, o, l, s, f))),
        (2, Gen.Select(s_nearOffset, s_nearLength, (o, l) => new Op(Kind.Read, o, l, 0, false))),
        (1, Gen.Select(s_nearOffset, s_nearLength, (o, l) => new Op(Kind.Trim, o, l, 0, false))),
        (1, Gen.Select(s_nearOffset, s_nearLength, Gen.Bool, (o, l, f) => new Op(Kind.WriteZeroes, o, l, 0, f))));

    private static readonly Gen<Op> s_op = Gen.Frequency(
        (6, Gen.Select(s_offset, s_length, Gen.Int[0, 1000], Gen.Bool, (o, l, s, f) => new Op(Kind.Write, o, l, s, f))),
        (4, Gen.Select(s_offset, s_length, (o, l) => new Op(Kind.Read, o, l, 0, false))),
        (1, Gen.Select(s_offset, s_length, (o, l) => new Op(Kind.Trim, o, l, 0, false))),
        (1, Gen.Select(s_offset, s_length, Gen.Bool, (o, l, f) => new Op(Kind.WriteZeroes, o, l, 0, f))),
        (1, Gen.Const(new Op(Kind.Flush, 0, 0, 0, false))),
        (1, Gen.Const(new Op(Kind.Reopen, 0, 0, 0, false))),
        (1, Gen.Bool.Select(f => new Op(Kind.Crash, 0, 0, 0, f))),
        // Incompressible data over many lblks: a few of these fill the small device.
        (1, Gen.Select(s_offset, Gen.Int[4, 24].Select(i => i * LblkSize), Gen.Int[0, 1000], (o, l, s) => new Op(Kind.Fill, o, l, s, false))),
        (2, s_concurrentOp.Array[2, 4].Select(g => new Op(Kind.Concurrent, 0, 0, 0, false, g))));

    /// <summary>Physical sizes: room for the whole device stored uncompressed, or for about half of it.</summary>
    /// <summary>A write log of a few partial lblks (FORMAT.md, "The write log"), so that it fills and merges within a run.</summary>
    private const int LogBytes = 96 << 10;

    private static readonly Gen<(Op[] Ops, bool ZeroDetect, int Cache, int Physical, int Log)> s_case =
        Gen.Select(s_op.Array[1, 40], Gen.Bool, Gen.OneOf(Gen.Const(1), Gen.Const(64)), Gen.OneOf(Gen.Const(2 << 20), Gen.Const(640 << 10)),
            Gen.OneOf(Gen.Const(0), Gen.Const(LogBytes)),
            (ops, z, c, p, l) => (ops, z, c, p, l));

    /// <summary>What the runs exercised, so that the test can show it reached what it is meant to.</summary>
    private sealed class Tally
    {
        public int Runs, OutOfSpace, Crashes, Groups, OverlappingGroups;

        public override string ToString() =>
            $"{Runs} runs: {OutOfSpace} writes failed for lack of space, {Crashes} crashes, {Groups} concurrent groups ({OverlappingGroups} with changes to one lblk overlapping)";
    }

    /// <summary>
    /// One run that reaches every case the tally asks for whatever the sampling draws: incompressible data
    /// over the whole device (more than the 640 KiB physical holds), a crash, two writes to one lblk at once.
    /// </summary>
    private static readonly Op[] s_everyCase =
    [
        new(Kind.Fill, 0, 24 * LblkSize, 1, false),
        new(Kind.Fill, 24 * LblkSize, 24 * LblkSize, 2, false),
        new(Kind.Fill, 48 * LblkSize, 16 * LblkSize, 3, false),
        new(Kind.Crash, 0, 0, 0, true),
        new(Kind.Concurrent, 0, 0, 0, false, [new(Kind.Write, 0, LblkSize, 4, false), new(Kind.Write, 0, LblkSize, 5, false)]),
        new(Kind.Read, 0, LogicalSize, 0, false),
    ];

    [Fact]
    public async Task Device_agrees_with_a_byte_array_model()
    {
        var tally = new Tally();
        await RunAsync(s_everyCase, zeroDetect: false, cacheLblks: 1, physical: 640 << 10, logBytes: 0, tally);
        await RunAsync(s_everyCase, zeroDetect: false, cacheLblks: 1, physical: 640 << 10, logBytes: LogBytes, tally);
        // A case that hangs fails, named by its seed, instead of holding the test run for ever.
        await s_case.SampleAsync(async c => await RunAsync(c.Ops, c.ZeroDetect, c.Cache, c.Physical, c.Log, tally).WaitAsync(TimeSpan.FromSeconds(60)),
            iter: s_iterations, threads: 1,
            print: c => $"zeroDetect={c.ZeroDetect} cacheLblks={c.Cache} physical={c.Physical} log={c.Log}: " + string.Join(", ", c.Ops.Select(o => o.ToString())));
        output.WriteLine(tally.ToString());
        Assert.True(tally.OutOfSpace > 0 && tally.Crashes > 0 && tally.OverlappingGroups > 0, $"the runs missed a case: {tally}");
    }

    private static async Task RunAsync(Op[] ops, bool zeroDetect, int cacheLblks, int physical, int logBytes, Tally tally)
    {
        tally.Runs++;
        var store = new SnapshotStore(await DeviceTestKit.FormatAsync(physical,
            new FormatOptions { LblkSize = LblkSize, LogicalSize = LogicalSize, ZeroDetect = zeroDetect, LogSize = logBytes }));
        // The cache as asked for: with 1 lblk, every write-back runs under pressure.
        var options = new DeviceOptions { CacheBytes = (long)cacheLblks * LblkSize, ExactCacheSize = true, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 2 };
        var model = new Model();
        var device = await DeviceTestKit.OpenAsync(store, options);
        try
        {
            foreach (var op in ops)
            {
                switch (op.Kind)
                {
                    case Kind.Read:
                        var (offset, length) = Clamp(op);
                        var back = new byte[length];
                        await device.ReadAsync(offset, back);
                        model.CheckRead(op, offset, back);
                        break;
                    case Kind.Flush:
                        await device.FlushAsync();
                        model.Durable();
                        break;
                    case Kind.Reopen:
                        await device.DisposeAsync();
                        device = await DeviceTestKit.OpenAsync(store, options);
                        Assert.False(device.Recovered, "a clean close must need no recovery");
                        model.Durable();
                        break;
                    case Kind.Crash:
                        if (op.Flag)
                        {
                            await device.FlushAsync();
                            model.Durable();
                        }
                        // A power cut now: every completed write is on the in-memory disk, the rest of the
                        // cache is lost, the image is left marked dirty. The old device closes on the old store.
                        var crashed = new SnapshotStore(store.Snapshot());
                        await device.DisposeAsync();
                        store = crashed;
                        device = await DeviceTestKit.OpenAsync(store, options);
                        Assert.True(device.Recovered, "an image cut off while open must be recovered");
                        await model.RecoverAsync(device);
                        tally.Crashes++;
                        break;
                    case Kind.Concurrent:
                        tally.Groups++;
                        if (await RunConcurrentAsync(device, model, op.Group!))
                            tally.OverlappingGroups++;
                        break;
                    default:
                        if (!await RunChangeAsync(device, model, op))
                            tally.OutOfSpace++;
                        break;
                }
                // Between operations nothing but write-back runs: the cache's invariants hold.
                device.Cache.CheckInvariants();
            }
            // Everything, after one more clean close and open.
            await device.DisposeAsync();
            device = await DeviceTestKit.OpenAsync(store, options);
            var all = new byte[LogicalSize];
            await device.ReadAsync(0, all);
            model.CheckRead(new Op(Kind.Read, 0, LogicalSize, 0, false), 0, all);
            // Stats agree with what block status reports. Unallocated lblks are holes that read as zeros; an overcommitted
            // device reports its data as holes too, but never as zeros (docs/NBD.md, "Space").
            var stats = device.GetStats();
            var extents = await device.GetBlockStatusAsync(0, LogicalSize);
            long holes = extents.Where(e => e.IsHole && e.IsZero).Sum(e => e.Length);
            // lblks whose log records could not be merged for want of space hold data but no pblks (yet).
            if (stats.LogPendingLblks == 0)
                Assert.Equal(LogicalSize - holes, stats.LblksUsed * LblkSize);
            else
                Assert.InRange(LogicalSize - holes, stats.LblksUsed * LblkSize, (stats.LblksUsed + stats.LogPendingLblks) * LblkSize);
        }
        finally
        {
            await device.DisposeAsync();
        }
    }

    private static (int Offset, int Length) Clamp(Op op) => (op.Offset, Math.Min(op.Length, LogicalSize - op.Offset));

    /// <summary>What a write-type operation does to each lblk it touches, in the order the device applies them.</summary>
    private static List<Piece> PiecesOf(Op op)
    {
        var (offset, length) = Clamp(op);
        byte[] data = op.Kind switch
        {
            Kind.Write => op.Flag ? DeviceTestKit.Random(length, op.Seed) : DeviceTestKit.Compressible(length, op.Seed),
            Kind.Fill => DeviceTestKit.Random(length, op.Seed),
            _ => new byte[length],
        };
        var pieces = new List<Piece>();
        for (int done = 0; done < length;)
        {
            int lblk = (offset + done) / LblkSize;
            int within = (offset + done) % LblkSize;
            int n = Math.Min(length - done, LblkSize - within);
            pieces.Add(new Piece(lblk, within, data.AsMemory(done, n)));
            done += n;
        }
        return pieces;
    }

    private static async Task StartChangeAsync(CompressedDevice device, Op op, bool fua)
    {
        var (offset, length) = Clamp(op);
        switch (op.Kind)
        {
            case Kind.Write:
                var data = op.Flag ? DeviceTestKit.Random(length, op.Seed) : DeviceTestKit.Compressible(length, op.Seed);
                await device.WriteAsync(offset, data, fua);
                break;
            case Kind.Fill:
                await device.WriteAsync(offset, DeviceTestKit.Random(length, op.Seed));
                break;
            case Kind.Trim:
                await device.TrimAsync(offset, length);
                break;
            case Kind.WriteZeroes:
                await device.WriteZeroesAsync(offset, length, mayDeallocate: op.Flag, fua);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(op), op, "not a change");
        }
    }

    /// <summary>
    /// One change on its own. When it fails for lack of space, the engine promises that the lblk that did
    /// not fit and every lblk after it are as they were, and that the ones before hold the change.
    /// </summary>
    /// <returns>False when the change failed for lack of space.</returns>
    private static async Task<bool> RunChangeAsync(CompressedDevice device, Model model, Op op)
    {
        bool fua = op.Kind is Kind.Write or Kind.WriteZeroes && op.Seed % 7 == 0;
        var pieces = PiecesOf(op);
        try
        {
            await StartChangeAsync(device, op, fua);
        }
        catch (OutOfSpaceException)
        {
            await model.ApplyFailedAsync(device, op, pieces);
            return false;
        }
        catch (ProvisioningNotSupportedException)
        {
            // Zeroing that must leave the range provisioned, on a device that cannot promise it: refused whole.
            Assert.True(IsRefusedProvisioning(device, op), $"refused: {op}");
            return true;
        }
        Assert.False(IsRefusedProvisioning(device, op), $"not refused: {op}");
        model.Apply(pieces, durable: fua);
        return true;
    }

    /// <summary>Two to four operations at once; the model takes any order, lblk by lblk, of those that overlap.</summary>
    /// <returns>True when two changes touched the same lblk.</returns>
    private static async Task<bool> RunConcurrentAsync(CompressedDevice device, Model model, Op[] group)
    {
        var tasks = new Task<byte[]?>[group.Length];
        for (int i = 0; i < group.Length; i++)
        {
            var op = group[i];
            // On the pool, so that they really run at the same time rather than one after another.
            tasks[i] = Task.Run(async () =>
            {
                if (op.Kind is not Kind.Read)
                {
                    await StartChangeAsync(device, op, fua: false);
                    return null;
                }
                var (offset, length) = Clamp(op);
                var back = new byte[length];
                await device.ReadAsync(offset, back);
                return back;
            });
        }
        try
        {
            await Task.WhenAll(tasks);
        }
        catch (Exception e) when (e is OutOfSpaceException or ProvisioningNotSupportedException)
        {
            // Looked at op by op below.
        }
        var changes = new List<(List<Piece> Pieces, bool Optional)>();
        for (int i = 0; i < group.Length; i++)
        {
            if (group[i].Kind is Kind.Read)
                continue;
            if (tasks[i].Exception is { InnerException: ProvisioningNotSupportedException } && IsRefusedProvisioning(device, group[i]))
                continue; // refused whole: changed nothing
            if (tasks[i].Exception is { } e && e.InnerException is not OutOfSpaceException)
                throw e.InnerException!;
            changes.Add((PiecesOf(group[i]), tasks[i].IsFaulted));
        }
        var reads = new List<(Op Op, byte[] Back)>();
        for (int i = 0; i < group.Length; i++)
        {
            if (group[i].Kind is Kind.Read)
                reads.Add((group[i], tasks[i].Result!));
        }
        await model.ApplyConcurrentAsync(device, changes, reads, group);
        var lblks = changes.SelectMany(c => c.Pieces.Select(p => p.Lblk)).ToList();
        return lblks.Count > lblks.Distinct().Count();
    }

    /// <summary>Zeroing without deallocation (NBD_CMD_FLAG_NO_HOLE) is refused by a device that cannot provision.</summary>
    private static bool IsRefusedProvisioning(CompressedDevice device, Op op) =>
        op.Kind is Kind.WriteZeroes && !op.Flag && !device.CanProvision;

    private readonly record struct Piece(int Lblk, int Within, ReadOnlyMemory<byte> Data);

    /// <summary>
    /// The byte array, and for each lblk the contents a crash may bring back: those at its last durability
    /// point (flush, clean close, FUA write) and every one it has had since.
    /// </summary>
    private sealed class Model
    {
        private readonly byte[] _bytes = new byte[LogicalSize];
        private readonly HashSet<ulong>[] _sinceDurable = new HashSet<ulong>[LogicalSize / LblkSize];

        public Model()
        {
            for (int lblk = 0; lblk < _sinceDurable.Length; lblk++)
                _sinceDurable[lblk] = [Hash(lblk)];
        }

        private Span<byte> Lblk(int lblk) => _bytes.AsSpan(lblk * LblkSize, LblkSize);

        private ulong Hash(int lblk) => XxHash3.HashToUInt64(Lblk(lblk));

        public void CheckRead(Op op, int offset, byte[] back)
        {
            var expected = _bytes.AsSpan(offset, back.Length);
            if (!back.AsSpan().SequenceEqual(expected))
                throw new Xunit.Sdk.XunitException($"read {op} differs from the model at byte {offset + back.AsSpan().CommonPrefixLength(expected)}");
        }

        public void Durable()
        {
            for (int lblk = 0; lblk < _sinceDurable.Length; lblk++)
                _sinceDurable[lblk] = [Hash(lblk)];
        }

        public void Apply(List<Piece> pieces, bool durable)
        {
            foreach (var piece in pieces)
                Set(piece.Lblk, piece.Within, piece.Data.Span, durable);
        }

        private void Set(int lblk, int within, ReadOnlySpan<byte> data, bool durable)
        {
            data.CopyTo(Lblk(lblk)[within..]);
            if (durable)
                _sinceDurable[lblk].Clear();
            _sinceDurable[lblk].Add(Hash(lblk));
        }

        /// <summary>Takes a failed change: some leading pieces landed, each whole, and never the last one.</summary>
        public async Task ApplyFailedAsync(CompressedDevice device, Op op, List<Piece> pieces)
        {
            var asBefore = new bool[pieces.Count];
            var asAfter = new bool[pieces.Count];
            var back = new byte[LblkSize];
            for (int i = 0; i < pieces.Count; i++)
            {
                var piece = pieces[i];
                await device.ReadAsync((long)piece.Lblk * LblkSize, back);
                asBefore[i] = back.AsSpan().SequenceEqual(Lblk(piece.Lblk));
                asAfter[i] = back.AsSpan(piece.Within, piece.Data.Length).SequenceEqual(piece.Data.Span) &&
                    back.AsSpan(0, piece.Within).SequenceEqual(Lblk(piece.Lblk)[..piece.Within]) &&
                    back.AsSpan(piece.Within + piece.Data.Length).SequenceEqual(Lblk(piece.Lblk)[(piece.Within + piece.Data.Length)..]);
                if (!asBefore[i] && !asAfter[i])
                    throw new Xunit.Sdk.XunitException($"{op} failed for lack of space and left lblk {piece.Lblk} neither as it was nor as written");
            }
            // Pieces that change nothing read the same either way, so any k that fits gives the same model.
            int landed = Enumerable.Range(0, pieces.Count)
                .FirstOrDefault(k => asAfter.Take(k).All(a => a) && asBefore.Skip(k).All(b => b), -1);
            if (landed < 0)
                throw new Xunit.Sdk.XunitException($"{op} failed for lack of space, and the lblks it changed are not the ones before the lblk that did not fit");
            Apply(pieces[..landed], durable: false);
        }

        /// <summary>
        /// Takes the outcome of a concurrent group: each lblk must hold its contents with the pieces of the
        /// changes touching it applied in some order (a failed change's piece may be missing), and each read
        /// must have seen, lblk by lblk, some ordered subset of those pieces applied.
        /// </summary>
        public async Task ApplyConcurrentAsync(CompressedDevice device, List<(List<Piece> Pieces, bool Optional)> changes,
            List<(Op Op, byte[] Back)> reads, Op[] group)
        {
            var touched = changes.SelectMany(c => c.Pieces.Select(p => p.Lblk)).Concat(reads.SelectMany(r => LblksOf(r.Op))).Distinct().Order().ToList();
            var back = new byte[LblkSize];
            var finals = new Dictionary<int, byte[]>();
            foreach (int lblk in touched)
            {
                var onLblk = changes.Select(c => (Piece: c.Pieces.FirstOrDefault(p => p.Lblk == lblk), c.Optional))
                    .Where(c => !c.Piece.Data.IsEmpty).ToList();
                var states = new List<(byte[] State, bool Complete)>();
                Orders(Lblk(lblk).ToArray(), onLblk, 0, states);
                await device.ReadAsync((long)lblk * LblkSize, back);
                if (!states.Any(s => s.Complete && s.State.AsSpan().SequenceEqual(back)))
                    throw new Xunit.Sdk.XunitException($"after {string.Join(" | ", group.Select(o => o.ToString()))}, lblk {lblk} holds no serial order of the changes to it");
                foreach (var (op, data) in reads)
                {
                    var (offset, _) = Clamp(op);
                    int start = Math.Max(offset, lblk * LblkSize), end = Math.Min(offset + data.Length, (lblk + 1) * LblkSize);
                    if (start >= end)
                        continue;
                    var seen = data.AsMemory(start - offset, end - start);
                    if (!states.Any(s => s.State.AsSpan(start - lblk * LblkSize, end - start).SequenceEqual(seen.Span)))
                        throw new Xunit.Sdk.XunitException($"in {string.Join(" | ", group.Select(o => o.ToString()))}, {op} saw lblk {lblk} in a state no order of the changes gives");
                }
                // Write-back may have stored any state in between; a crash may bring it back.
                foreach (var (state, _) in states)
                    _sinceDurable[lblk].Add(XxHash3.HashToUInt64(state));
                finals[lblk] = back.ToArray();
            }
            foreach (var (lblk, state) in finals)
                Set(lblk, 0, state, durable: false);
        }

        /// <summary>Every state reachable by applying an ordered subset of <paramref name="pieces"/>; complete when no mandatory piece is left out.</summary>
        private static void Orders(byte[] state, List<(Piece Piece, bool Optional)> pieces, int used, List<(byte[], bool)> states)
        {
            bool complete = true;
            for (int i = 0; i < pieces.Count; i++)
            {
                if ((used & (1 << i)) == 0 && !pieces[i].Optional)
                    complete = false;
            }
            states.Add((state, complete));
            for (int i = 0; i < pieces.Count; i++)
            {
                if ((used & (1 << i)) != 0)
                    continue;
                var next = (byte[])state.Clone();
                pieces[i].Piece.Data.Span.CopyTo(next.AsSpan(pieces[i].Piece.Within));
                Orders(next, pieces, used | (1 << i), states);
            }
        }

        private static IEnumerable<int> LblksOf(Op op)
        {
            var (offset, length) = Clamp(op);
            return Enumerable.Range(offset / LblkSize, (offset + length - 1) / LblkSize - offset / LblkSize + 1);
        }

        /// <summary>After a crash: each lblk must hold a content it may hold (as of its last durability point or since), which then becomes the model.</summary>
        public async Task RecoverAsync(CompressedDevice device)
        {
            var back = new byte[LblkSize];
            for (int lblk = 0; lblk < _sinceDurable.Length; lblk++)
            {
                await device.ReadAsync((long)lblk * LblkSize, back);
                if (!_sinceDurable[lblk].Contains(XxHash3.HashToUInt64(back)))
                    throw new Xunit.Sdk.XunitException($"after the crash lblk {lblk} holds contents it never had since its last flush");
                back.CopyTo(Lblk(lblk));
            }
            Durable();
        }
    }

    /// <summary>
    /// An in-memory disk on which a power cut can be taken at any instant: a snapshot holds every write
    /// completed before it and none after (the memory store has no volatile cache to lose).
    /// </summary>
    private sealed class SnapshotStore(MemoryBackingStore inner) : IBackingStore
    {
        private readonly Lock _lock = new();

        public long Length => inner.Length;
        public bool CanWrite => true;

        public MemoryBackingStore Snapshot()
        {
            lock (_lock)
                return inner.Clone();
        }

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
        {
            lock (_lock)
                inner.Write(offset, data.Span);
            return ValueTask.CompletedTask;
        }

        public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            lock (_lock)
                return inner.ZeroRangeAsync(offset, length, cancellationToken);
        }

        /// <summary>Freed pblks are punched as on a file, so the model sees the engine's punches too.</summary>
        public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            lock (_lock)
                inner.Deallocate(offset, length);
            return ValueTask.FromResult(true);
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
        public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => throw new NotSupportedException();
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
