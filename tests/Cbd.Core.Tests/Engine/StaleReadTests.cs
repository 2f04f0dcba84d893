using Cbd.Core.Engine;
using Cbd.Core.Storage;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// The original cbd's stale read: an lblk is written back, its cache object is reused for another lblk,
/// the lblk is taken into a new object and read from disk before the write-back landed: old data. Here
/// the write-back is held in flight while the cache is churned, then the lblk is read: whole, or 4 KiB of it (a small
/// read of an lblk not in the cache decodes its stored form without loading it).
/// </summary>
public class StaleReadTests
{
    private const int LblkSize = 64 * 1024;

    [Theory]
    [InlineData(GatedStore.Phase.DataWrite, LblkSize)]
    [InlineData(GatedStore.Phase.MetadataWrite, LblkSize)]
    [InlineData(GatedStore.Phase.DataWrite, 4096)]
    [InlineData(GatedStore.Phase.MetadataWrite, 4096)]
    public async Task Read_during_write_back_under_cache_churn_sees_the_newest_data(GatedStore.Phase holdAt, int readLength)
    {
        int within = readLength == LblkSize ? 0 : 8192;
        bool IsNewest(byte[] back, byte[] v2) => back.AsSpan().SequenceEqual(v2.AsSpan(within, readLength));
        var inner = await DeviceTestKit.FormatAsync(64 << 20);
        var store = new GatedStore(inner);
        var options = new DeviceOptions { CacheBytes = LblkSize, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 1 };
        var v1 = DeviceTestKit.Compressible(LblkSize, 1);
        var v2 = DeviceTestKit.Compressible(LblkSize, 2);
        const long X = 5L * LblkSize;
        await using (var device = await DeviceTestKit.OpenAsync(store, options))
        {
            await device.WriteAsync(X, v1);
            await device.FlushAsync();
            await device.WriteAsync(X, v2);

            // Object x flushes: its write-back is held in flight.
            store.Hold(holdAt);
            var flush = device.FlushAsync().AsTask();
            await store.Held.WaitAsync(TimeSpan.FromSeconds(30));

            // The cache is reused for many other lblks (it holds only a dozen or so).
            var other = new byte[LblkSize];
            for (int round = 0; round < 3; round++)
            {
                for (long lblk = 100; lblk < 160; lblk++)
                    await device.ReadAsync(lblk * LblkSize, other);
            }

            // x is taken again and read before its write landed.
            var back = new byte[readLength];
            try
            {
                await device.ReadAsync(X + within, back);
                Assert.True(IsNewest(back, v2), "read returned stale data while the write-back was in flight");
                Assert.False(flush.IsCompleted);
            }
            finally
            {
                store.Release();
                await flush;
            }
            await device.ReadAsync(X + within, back);
            Assert.True(IsNewest(back, v2));
            for (long lblk = 100; lblk < 160; lblk++)
                await device.ReadAsync(lblk * LblkSize, other);
            await device.ReadAsync(X + within, back);
            Assert.True(IsNewest(back, v2), "read after the write-back completed and the entry was evicted");
        }
        await using (var device = await DeviceTestKit.OpenAsync(inner))
        {
            var back = new byte[readLength];
            await device.ReadAsync(X + within, back);
            Assert.True(IsNewest(back, v2));
        }
    }

    /// <summary>Holds the first data or metadata write until released.</summary>
    public sealed class GatedStore(MemoryBackingStore inner) : IBackingStore
    {
        public enum Phase { DataWrite, MetadataWrite }

        private Phase? _holdAt;
        private TaskCompletionSource _held = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _writesSinceHold;

        public Task Held => _held.Task;
        public long Length => inner.Length;
        public bool CanWrite => true;

        public void Hold(Phase phase)
        {
            _writesSinceHold = 0;
            _held = new(TaskCreationOptions.RunContinuationsAsynchronously);
            _holdAt = phase;
        }

        public void Release()
        {
            _holdAt = null;
            _gate.TrySetResult();
        }

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);

        public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
        {
            if (_holdAt is { } phase)
            {
                // Write-back writes data first, then (after a flush) the lbat pblk: the second write.
                int n = Interlocked.Increment(ref _writesSinceHold);
                if ((phase == Phase.DataWrite && n == 1) || (phase == Phase.MetadataWrite && n == 2))
                {
                    if (phase == Phase.MetadataWrite)
                        await inner.WriteAsync(offset, data, cancellationToken); // half-landed: visible to a naive reader
                    _held.TrySetResult();
                    await _gate.Task;
                    if (phase == Phase.MetadataWrite)
                        return;
                }
            }
            await inner.WriteAsync(offset, data, cancellationToken);
        }

        public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.ZeroRangeAsync(offset, length, cancellationToken);
        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);
        public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => inner.SetLengthAsync(length, cancellationToken);
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
