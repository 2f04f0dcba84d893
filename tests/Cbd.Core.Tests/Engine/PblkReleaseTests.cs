using System.Collections.Concurrent;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Freed pblks go back to the backing store (<see cref="PblkReleaser"/>): in few calls, after the commit that frees
/// them and before anyone may be handed them again, never when <see cref="DiscardMode.Ignore"/> says so, and a store
/// that cannot, or fails to, costs one log line and nothing else. The crash simulation covers the commit order
/// (<see cref="CrashConsistencyTests"/>); a real file's figures are in Storage/ThinBackingTests.
/// </summary>
public class PblkReleaseTests
{
    private const int LblkSize = 16 * 1024;

    /// <summary>
    /// The punch of the pblks a commit freed is held while the next checkpoint writes back new lblks: those must land in other pblks, or
    /// the punch, once let go, destroys them. With <see cref="CheckpointFault.FreeBeforePunch"/> the freed pblks are
    /// first fit for the new lblks, and the reads after reopening find them punched ("checksum mismatch"), which the
    /// second test shows; the crash simulation cannot, since the free and the punch follow each other with nothing in
    /// between on its synchronous store.
    /// </summary>
    [Fact]
    public async Task A_held_punch_never_reaches_pblks_written_by_the_next_checkpoint()
    {
        var failure = await Record.ExceptionAsync(() => PunchHeldWhileNextCheckpointWritesAsync(CheckpointFault.None));
        Assert.Null(failure);
    }

    [Fact]
    public async Task Held_punch_test_catches_pblks_freed_before_their_punch()
    {
        var failure = await Record.ExceptionAsync(() => PunchHeldWhileNextCheckpointWritesAsync(CheckpointFault.FreeBeforePunch));
        Assert.NotNull(failure);
        Assert.Contains("checksum mismatch", failure.Message);
    }

    private static async Task PunchHeldWhileNextCheckpointWritesAsync(CheckpointFault fault)
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize, LogicalSize = 256 * LblkSize });
        var store = new GatedStore(memory);
        var options = new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Fault = fault };
        const int Lblks = 16;
        var model = new Dictionary<long, byte[]>();
        await using (var device = await DeviceTestKit.OpenAsync(store, options))
        {
            for (int lblk = 0; lblk < Lblks; lblk++)
                await device.WriteAsync(lblk * LblkSize, DeviceTestKit.Compressible(LblkSize, lblk));
            await device.FlushAsync();

            // Rewrite them: this commit frees the first pblks of the zone, and their punch, once the device is idle, is held.
            store.HoldPunches();
            for (int lblk = 0; lblk < Lblks; lblk++)
                await device.WriteAsync(lblk * LblkSize, model[lblk] = DeviceTestKit.Compressible(LblkSize, 100 + lblk));
            var first = device.FlushAsync().AsTask();
            await store.PunchHeld.WaitAsync(TimeSpan.FromSeconds(30));

            // The next checkpoint writes new lblks and publishes them (its data fsync) while that punch waits.
            var fsyncs = store.Fsyncs;
            for (int lblk = Lblks; lblk < 2 * Lblks; lblk++)
                await device.WriteAsync(lblk * LblkSize, model[lblk] = DeviceTestKit.Compressible(LblkSize, 100 + lblk));
            var second = device.FlushAsync().AsTask();
            await store.WaitForFsyncAsync(fsyncs + 1, TimeSpan.FromSeconds(30));

            store.ReleasePunches();
            await Task.WhenAll(first, second);
        }
        Assert.True(store.Punches > 0, "nothing was punched");
        await using (var device = await DeviceTestKit.OpenAsync(memory))
        {
            var back = new byte[LblkSize];
            foreach (var (lblk, data) in model)
            {
                await device.ReadAsync(lblk * LblkSize, back);
                Assert.True(back.AsSpan().SequenceEqual(data), $"lblk {lblk} does not read back what was written");
            }
        }
    }

    /// <summary>64 lblks written one after another take consecutive pblks: trimming them all frees them in a handful of runs.</summary>
    [Fact]
    public async Task A_checkpoint_punches_consecutive_freed_pblks_in_one_call_per_run()
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize, LogicalSize = 256 * LblkSize });
        var store = new GatedStore(memory);
        long before;
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await device.WriteAsync(0, DeviceTestKit.Compressible(64 * LblkSize, 1));
            await device.FlushAsync();
            before = memory.AllocatedBytes;
            await device.TrimAsync(0, 64 * LblkSize);
            await device.FlushAsync();
        }
        Assert.InRange(store.Punches, 1, 4);
        Assert.True(store.PunchedBytes >= 64 * LblkSize / 3, $"{store.PunchedBytes} bytes punched");
        // What is left is the metadata: the header, the pbat and the lbat pages written.
        Assert.True(memory.AllocatedBytes < before / 4, $"{memory.AllocatedBytes} bytes still allocated of {before}");
    }

    /// <summary>
    /// A round while writes flow (enough pblks noted) punches the long runs of free pblks in one call each and leaves
    /// the scattered ones, which would cost a call each, to the idle round; pblks taken again meanwhile are never punched.
    /// </summary>
    [Fact]
    public async Task A_round_under_load_punches_long_runs_and_leaves_scattered_pblks_to_the_idle_round()
    {
        var memory = await DeviceTestKit.FormatAsync(64 << 20, new FormatOptions { LblkSize = LblkSize, LogicalSize = 256 * LblkSize });
        var store = new GatedStore(memory);
        var geometry = await Geometry.ReadAsync(store);
        var allocator = new Allocator(geometry, store, 0, _ => { });
        var releaser = new PblkReleaser(allocator, store, new DeviceOptions(), _ => { }, 16384);
        var pblks = new ulong[8192];
        Assert.True(allocator.TryReserve(pblks.Length));
        await allocator.AllocateAsync(0, pblks, pblks.Length, CancellationToken.None);

        // Every other pblk of the first 8000 (scattered), and the last 192 in one run: 4,192 noted, past the round's 4,096.
        var scattered = pblks[..8000].Where((_, i) => i % 2 == 0).ToList();
        var run = pblks[8000..].ToList();
        await releaser.ReleaseAsync(scattered, CancellationToken.None);
        Assert.Equal(0, store.Punches);
        await releaser.ReleaseAsync(run, CancellationToken.None);
        Assert.Equal(1, store.Punches);
        Assert.Equal(run.Count * Layout.PblkSize, store.PunchedBytes);

        // One scattered pblk is handed out again before the device goes idle: the idle round punches all the others.
        var again = new ulong[1];
        Assert.True(allocator.TryReserve(1));
        await allocator.AllocateAsync(0, again, 1, CancellationToken.None);
        Assert.Contains(again[0], scattered);
        await releaser.ReleaseNotedAsync();
        Assert.Equal(1 + scattered.Count - 1, store.Punches);
        Assert.Equal((run.Count + scattered.Count - 1) * Layout.PblkSize, store.PunchedBytes);
    }

    [Theory]
    [InlineData(new ulong[] { 1, 2, 3, 3, 4, 9, 20, 21 }, 3, new ulong[] { 1, 2, 3, 4 }, new ulong[] { 9, 20, 21 })]
    [InlineData(new ulong[] { 5, 5, 5 }, 2, new ulong[0], new ulong[] { 5 })]
    [InlineData(new ulong[] { 7, 8 }, 1, new ulong[] { 7, 8 }, new ulong[0])]
    public void Runs_are_split_by_length_counting_each_pblk_once(ulong[] pblks, int minRun, ulong[] longRuns, ulong[] rest)
    {
        var (l, r) = (new List<ulong>(), new List<ulong>());
        PblkReleaser.SplitRuns(pblks, minRun, l, r);
        Assert.Equal(longRuns, l);
        Assert.Equal(rest, r);
    }

    [Fact]
    public async Task Discard_ignore_punches_nothing()
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize, LogicalSize = 256 * LblkSize });
        var store = new GatedStore(memory);
        await using (var device = await DeviceTestKit.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Discard = DiscardMode.Ignore }))
        {
            await device.WriteAsync(0, DeviceTestKit.Compressible(32 * LblkSize, 1));
            await device.FlushAsync();
            await device.WriteAsync(0, DeviceTestKit.Compressible(32 * LblkSize, 2));
            await device.TrimAsync(0, 16 * LblkSize);
            await device.FlushAsync();
        }
        Assert.Equal(0, store.Punches);
    }

    /// <summary>A filesystem without holes answers false, a failing one throws: either way one line, no more calls, and the device works on.</summary>
    [Theory]
    [InlineData(false, "cannot deallocate")]
    [InlineData(true, "injected punch failure")]
    public async Task A_store_that_cannot_punch_is_told_once_and_the_device_works_on(bool throws, string expected)
    {
        var memory = await DeviceTestKit.FormatAsync(8 << 20, new FormatOptions { LblkSize = LblkSize, LogicalSize = 256 * LblkSize });
        var store = new GatedStore(memory) { Refuse = throws ? GatedStore.Refusal.Throw : GatedStore.Refusal.Unsupported };
        var log = new ConcurrentQueue<string>();
        var options = new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Log = log.Enqueue };
        var last = DeviceTestKit.Compressible(8 * LblkSize, 9);
        await using (var device = await DeviceTestKit.OpenAsync(store, options))
        {
            for (int round = 0; round < 3; round++)
            {
                await device.WriteAsync(0, round == 2 ? last : DeviceTestKit.Compressible(8 * LblkSize, round));
                await device.FlushAsync();
            }
        }
        Assert.Equal(1, store.Refused);
        var line = Assert.Single(log);
        Assert.Contains(expected, line);
        await using (var device = await DeviceTestKit.OpenAsync(memory))
        {
            var back = new byte[last.Length];
            await device.ReadAsync(0, back);
            Assert.True(back.AsSpan().SequenceEqual(last));
        }
    }

    /// <summary>Passes everything to a memory store; counts punches, can hold them at a gate or refuse them, and counts fsyncs.</summary>
    private sealed class GatedStore(MemoryBackingStore inner) : IBackingStore
    {
        public enum Refusal { None, Unsupported, Throw }

        private readonly TaskCompletionSource _punchHeld = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private TaskCompletionSource? _gate;
        private TaskCompletionSource _fsync = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _punches;
        private long _punchedBytes;
        private int _fsyncs;
        private int _refused;

        public Refusal Refuse { get; init; }
        public int Punches => Volatile.Read(ref _punches);
        public long PunchedBytes => Interlocked.Read(ref _punchedBytes);
        public int Fsyncs => Volatile.Read(ref _fsyncs);
        public int Refused => Volatile.Read(ref _refused);

        /// <summary>Completes when a punch is waiting at the gate.</summary>
        public Task PunchHeld => _punchHeld.Task;

        public void HoldPunches() => _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public void ReleasePunches() => _gate?.TrySetResult();

        public async Task WaitForFsyncAsync(int count, TimeSpan timeout)
        {
            while (true)
            {
                var next = Volatile.Read(ref _fsync).Task;
                if (Fsyncs >= count)
                    return;
                await next.WaitAsync(timeout);
            }
        }

        public long Length => inner.Length;
        public bool CanWrite => true;
        public long? AllocatedBytes => inner.AllocatedBytes;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => inner.WriteAsync(offset, data, cancellationToken);
        public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.ZeroRangeAsync(offset, length, cancellationToken);
        public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => inner.SetLengthAsync(length, cancellationToken);
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;

        public ValueTask FlushAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _fsyncs);
            Interlocked.Exchange(ref _fsync, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
            return ValueTask.CompletedTask;
        }

        public async ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default)
        {
            if (Refuse != Refusal.None)
            {
                Interlocked.Increment(ref _refused);
                return Refuse == Refusal.Unsupported ? false : throw new IOException("injected punch failure");
            }
            if (_gate is { } gate)
            {
                _punchHeld.TrySetResult();
                await gate.Task;
            }
            Interlocked.Increment(ref _punches);
            Interlocked.Add(ref _punchedBytes, length);
            return await inner.DeallocateAsync(offset, length, cancellationToken);
        }
    }
}
