using Cbd.Core.Compression;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// A compressed block device on a backing store: lblks are cached decompressed, written back compressed
/// into free pblks, and published through their lblk_alloc entries (docs/FORMAT.md, "Consistency").
/// </summary>
/// <remarks>
/// The front door of the engine and its open and close order; each job behind it has one type
/// (docs/ARCHITECTURE.md): <see cref="LblkCache"/> (cached lblks, eviction), <see cref="LblkIo"/> (an lblk's
/// stored form in and out), <see cref="WriteAdmission"/> (a change to one lblk: throttling, space),
/// <see cref="CheckpointPipeline"/> (the write order), <see cref="WriteBackScheduler"/> (when a checkpoint
/// starts), <see cref="DeviceRecovery"/> (pbats and stats against the lbats at open). A request over a byte
/// range walks it lblk by lblk with <see cref="LblkRange"/>.
/// </remarks>
public sealed partial class CompressedDevice : IBlockDevice
{
    /// <summary>Clean lbat pblks the lbat cache keeps: 16 MiB of lblk_alloc entries.</summary>
    private const int LbatCachePages = 4096;

    private readonly IBackingStore _store;
    private readonly Geometry _geometry;
    private readonly DeviceOptions _options;
    private readonly bool _zeroDetect;
    private readonly LbatCache _lbat;
    private readonly int _lblkSize;
    private readonly SpacePromise _space;
    private readonly UsedCounts _used;

    private readonly LblkCache _cache;
    private readonly LblkIo _io;
    private readonly DeviceRecovery _recovery;
    private readonly CheckpointPipeline _pipeline;
    private readonly WriteBackScheduler _scheduler;
    private readonly WriteAdmission _admission;
    private readonly WriteLog? _log;
    private readonly LogMerger? _merger;
    private readonly SemaphoreSlim _headerWrite = new(1, 1);
    private int _disposed;

    private CompressedDevice(IBackingStore store, Header header, Geometry geometry, DeviceOptions options, WriteLog? log)
    {
        _log = log;
        _store = store;
        _geometry = geometry;
        Header = header;
        _options = options;
        var codec = Codec.Create(header.Algorithm, header.Level);
        _zeroDetect = header.Flags.HasFlag(HeaderFlags.ZeroDetect);
        _lblkSize = geometry.LblkSize;
        int parallelism = Math.Max(1, options.WriteBackParallelism ?? Environment.ProcessorCount);
        _cache = new LblkCache(_lblkSize, geometry.Alloc.PblksPerLblk, options, parallelism);
        _lbat = new LbatCache(geometry, store, maxCleanPages: LbatCachePages);
        var damage = new DamageLog(options.Log);
        var alloc = new Allocator(geometry, store, (long)header.PblkUsed, damage.Log);
        _space = new SpacePromise(geometry);
        _used = new UsedCounts((long)header.LblkUsed, (long)header.PblkUsed);
        _recovery = new DeviceRecovery(geometry, store, alloc, _used, damage);
        _io = new LblkIo(geometry, store, _lbat, alloc, _cache.Buffers, codec, log is null ? null : Codec.CreateFast(), _zeroDetect, damage, Counters, log,
            patching: geometry.Header.VersionMinor >= Header.PatchedVersionMinor);
        var releaser = new PblkReleaser(alloc, store, options, damage.Log, (long)geometry.TotalDataPblks);
        _pipeline = new CheckpointPipeline(store, _lbat, alloc, releaser, _cache, _io, _used, _recovery, damage, parallelism, options.Fault, Counters,
            log, WriteLogTailAsync);
        _scheduler = new WriteBackScheduler(_cache, _pipeline, options.FlushDelay, () => log is null || log.PendingLblks == 0);
        _admission = new WriteAdmission(geometry, _cache, _io, alloc, _space, _used, _pipeline, _scheduler, log,
            () => _merger?.WantRoom(), pending => _merger?.Appended(pending), () => _pipeline.Failed ?? _merger?.Stuck);
        if (log is not null && !options.ReadOnly)
            _merger = new LogMerger(log, _admission, _io, _pipeline, damage, WriteLogTailAsync, options.FlushDelay, _cache.WriteBackThreshold,
                _cache.ThrottleThreshold - 1, parallelism, Counters);
    }

    /// <summary>The header as last written (stats are as of open or last clean close).</summary>
    public Header Header { get; private set; }
    public Geometry Geometry => _geometry;
    public long Size => _geometry.LogicalBytes;
    public int BlockSize => _lblkSize;
    public bool IsReadOnly => _options.ReadOnly;

    /// <summary>True when the geometry backs every lblk stored uncompressed (<see cref="SpacePromise"/>).</summary>
    public bool CanProvision => _space.FullyBacked;

    /// <summary>A read waits only on locks and the store, and the locks are waited for asynchronously.</summary>
    public bool ReadsWithoutWaiting => _store.ReadsWithoutWaiting;

    internal SpacePromise Space => _space;

    /// <summary>The lblk cache, for tests that check its invariants.</summary>
    internal LblkCache Cache => _cache;

    /// <summary>True when open found the image not closed clean and rebuilt its pbats and stats.</summary>
    public bool Recovered { get; private set; }

    /// <summary>Cache and checkpoint totals since open, for monitoring.</summary>
    public EngineCounters Counters { get; } = new();

    /// <summary>
    /// Opens a device and takes ownership of <paramref name="store"/>. A bad image throws
    /// <see cref="InvalidDataException"/> naming the field, its value and what was expected, and nothing
    /// is written to it. An image not closed clean is recovered (pbats and stats rebuilt from the lbats).
    /// Damage below the header never refuses the image: an lblk with an invalid entry reads as
    /// <see cref="LblkCorruptException"/>, and the pbats of a clean image are checked against every lbat
    /// before write-back first allocates (docs/FORMAT.md, "Damage"); findings go to
    /// <see cref="DeviceOptions.Log"/>.
    /// </summary>
    public static async ValueTask<CompressedDevice> OpenAsync(IBackingStore store, DeviceOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        options ??= new DeviceOptions();
        if (!options.ReadOnly && !store.CanWrite)
            throw new ArgumentException("the backing store is read-only; open the device read-only", nameof(options));
        var geometry = await Geometry.ReadAsync(store, cancellationToken).ConfigureAwait(false);
        // The log's records from its tail on become pending on their lblks; a session that writes numbers its own records anew.
        WriteLog? log = null;
        if (geometry.Header.HasLog)
        {
            uint epoch = geometry.Header.LogEpoch + (options.ReadOnly ? 0u : 1u);
            log = await WriteLog.OpenAsync(store, geometry, epoch, cancellationToken).ConfigureAwait(false);
        }
        var device = new CompressedDevice(store, geometry.Header, geometry, options, log);
        bool dirty = geometry.Header.Flags.HasFlag(HeaderFlags.Dirty);
        if (dirty)
        {
            await device._recovery.RebuildAsync(cancellationToken).ConfigureAwait(false);
            device.Recovered = true;
        }
        if (!options.ReadOnly)
        {
            // From here until a clean close the image says it may hold unfinished work.
            await device.WriteHeaderAsync(dirty: true, cancellationToken).ConfigureAwait(false);
            // A clean image opens at once: its pbats are checked against the lbats behind open, since reading
            // every lbat takes seconds on a large sparse device, and only write-back has to wait for it.
            if (!dirty)
                device._recovery.StartAudit();
            device._scheduler.Start();
            device._merger?.Start();
        }
        return device;
    }

    public DeviceStats GetStats()
    {
        int dirty = _cache.DirtyCount;
        return new DeviceStats(Size, _lblkSize, (long)_geometry.NrLblks, Interlocked.Read(ref _used.Lblks),
            (long)_geometry.TotalDataPblks, Interlocked.Read(ref _used.Pblks), dirty,
            _log?.Bytes ?? 0, _log?.Used ?? 0, _log?.PendingLblks ?? 0, _io.FastStoredCount);
    }

    // ---- reads ----

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.Length > _lblkSize)
        {
            await ReadManyAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
            return;
        }
        foreach (var piece in new LblkRange(offset, buffer.Length, _lblkSize))
            await ReadPieceAsync(piece.Lblk, piece.Within, buffer.Slice((int)piece.Start, piece.Length), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A read of several lblks: they load and decompress in parallel.</summary>
    private async ValueTask ReadManyAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var pieces = new List<Task>();
        foreach (var piece in new LblkRange(offset, buffer.Length, _lblkSize))
            pieces.Add(ReadPieceAsync(piece.Lblk, piece.Within, buffer.Slice((int)piece.Start, piece.Length), cancellationToken).AsTask());
        await Task.WhenAll(pieces).ConfigureAwait(false);
    }

    private async ValueTask ReadPieceAsync(ulong lblk, int within, Memory<byte> destination, CancellationToken cancellationToken)
    {
        var entry = _cache.Pin(lblk);
        try
        {
            await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (await _io.TryReadUnloadedAsync(entry, within, destination, cancellationToken).ConfigureAwait(false))
                    return;
                await _io.EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
                if (entry.IsZero)
                    destination.Span.Clear();
                else
                    entry.Data.AsSpan(within, destination.Length).CopyTo(destination.Span);
            }
            finally
            {
                entry.Lock.Release();
            }
        }
        finally
        {
            _cache.Unpin(entry);
        }
    }

    public async ValueTask PrefetchAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        if (length == 0)
            return;
        // Never prefetch more than the cache holds: it would only evict what it just loaded.
        ulong last = (ulong)(offset / _lblkSize) + (ulong)_cache.PrefetchLimit;
        foreach (var piece in new LblkRange(offset, length, _lblkSize))
        {
            if (piece.Lblk > last)
                break;
            var entry = _cache.Pin(piece.Lblk);
            try
            {
                await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    await _io.EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
            finally
            {
                _cache.Unpin(entry);
            }
        }
    }

    // ---- writes ----

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        foreach (var piece in new LblkRange(offset, data.Length, _lblkSize))
            await _admission.ModifyAsync(piece.Lblk, piece.Within, data.Slice((int)piece.Start, piece.Length), zero: false, cancellationToken).ConfigureAwait(false);
        if (fua)
            await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        ZeroRangeAsync(offset, length, deallocate: true, fua: false, cancellationToken);

    public ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate = true, bool fua = false, CancellationToken cancellationToken = default)
    {
        if (!mayDeallocate && !_space.FullyBacked)
        {
            CheckWritable();
            CheckRange(offset, length);
            ThrowHelper.CannotProvision(offset, length, _space);
        }
        // Provisioned or not, an all-zero lblk is stored unallocated under zero detection: on a fully backed
        // device every lblk can be rewritten uncompressed anyway.
        return ZeroRangeAsync(offset, length, mayDeallocate || _zeroDetect, fua, cancellationToken);
    }

    private async ValueTask ZeroRangeAsync(long offset, long length, bool deallocate, bool fua, CancellationToken cancellationToken)
    {
        CheckWritable();
        CheckRange(offset, length);
        foreach (var piece in new LblkRange(offset, length, _lblkSize))
            await _admission.ModifyAsync(piece.Lblk, piece.Within, ReadOnlyMemory<byte>.Empty, zero: piece.IsWhole(_lblkSize) && deallocate, cancellationToken, zeroLength: piece.Length).ConfigureAwait(false);
        if (fua)
            await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    // ---- flush and write-back ----

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (IsReadOnly)
            return;
        await _scheduler.FlushAsync(cancellationToken).ConfigureAwait(false);
        // The log's records written before the flush: durable with one more fsync, unless the checkpoint's covered them.
        if (_log is not null)
            await _log.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The log's tail moved past records whose merges are durable: the header says so, durably.</summary>
    private ValueTask WriteLogTailAsync(LogTail tail, CancellationToken cancellationToken) =>
        WriteHeaderAsync(dirty: true, cancellationToken, tail);

    // ---- status ----

    /// <summary>
    /// True while every lblk holding data could be rewritten uncompressed (<see cref="SpacePromise"/>). An lblk
    /// holds data if it is allocated or dirty; publication counts it in <see cref="UsedCounts.Lblks"/> before it leaves
    /// the dirty set, so under the cache lock every such lblk is counted at least once. A dirty lblk that was
    /// allocated already is counted twice: a burst of rewrites can withhold the promise until write-back, never
    /// give one too many.
    /// </summary>
    private bool IsBacked() => _space.Backs(_cache.CountLblksWithData(ref _used.Lblks) + (_log?.PendingLblks ?? 0));

    public async ValueTask<IReadOnlyList<BlockExtent>> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        var extents = new List<BlockExtent>();
        foreach (var piece in new LblkRange(offset, length, _lblkSize))
        {
            var (hole, zero) = await LblkStatusAsync(piece.Lblk, cancellationToken).ConfigureAwait(false);
            if (extents.Count > 0 && extents[^1].IsHole == hole && extents[^1].IsZero == zero)
                extents[^1] = extents[^1] with { Length = extents[^1].Length + piece.Length };
            else
                extents.Add(new BlockExtent(piece.Length, hole, zero));
        }
        // Decided after every lblk was looked at, so that data written meanwhile is counted too. An
        // overcommitted device reports its data as holes that are not zero: a write there may fail for space.
        if (!IsBacked())
        {
            for (int i = 0; i < extents.Count; i++)
            {
                if (!extents[i].IsHole)
                    extents[i] = extents[i] with { IsHole = true };
            }
        }
        return extents;
    }

    private async ValueTask<(bool Hole, bool Zero)> LblkStatusAsync(ulong lblk, CancellationToken cancellationToken)
    {
        if (_log is not null && _log.HasPending(lblk))
            return (false, false); // records not yet merged: data, whatever the stored form says
        if (_cache.TryPin(lblk, out var entry))
        {
            try
            {
                await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    if (entry.Dirty)
                        return entry.IsZero ? (true, true) : (false, false);
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
            finally
            {
                _cache.Unpin(entry);
            }
        }
        LblkAlloc alloc;
        try
        {
            alloc = await _lbat.ReadAsync(lblk, cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidDataException)
        {
            return (false, false); // a corrupt entry is data as far as status goes; reading it reports the error
        }
        return alloc.IsAllocated ? (false, false) : (true, true);
    }

    // ---- open and close ----

    /// <summary>
    /// Writes the header, durably: DIRTY as asked, the stats as counted, and with a log its tail (<paramref name="logTail"/>,
    /// else the log's durable tail) and this session's epoch.
    /// </summary>
    private async ValueTask WriteHeaderAsync(bool dirty, CancellationToken cancellationToken, LogTail? logTail = null)
    {
        await _headerWrite.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var flags = dirty ? Header.Flags | HeaderFlags.Dirty : Header.Flags & ~HeaderFlags.Dirty;
            var header = Header with
            {
                Flags = flags,
                LblkUsed = (ulong)Interlocked.Read(ref _used.Lblks),
                PblkUsed = (ulong)Interlocked.Read(ref _used.Pblks),
            };
            if (_log is not null)
            {
                var tail = logTail ?? _log.DurableTail;
                header = header with { LogTail = (ulong)tail.Position, LogSeq = tail.Seq, LogTailEpoch = tail.Epoch, LogEpoch = _log.Epoch };
            }
            await header.WriteAsync(_store, cancellationToken).ConfigureAwait(false);
            Header = header;
        }
        finally
        {
            _headerWrite.Release();
        }
    }

    /// <summary>
    /// Writes back everything, writes the pbats and marks the image clean, then closes the backing
    /// store. After a backing store failure the image is left marked dirty, for recovery at next open.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        try
        {
            if (!IsReadOnly)
            {
                if (_merger is not null)
                    await _merger.StopAsync().ConfigureAwait(false);
                await _scheduler.StopAsync().ConfigureAwait(false);
                if (_pipeline.Failed is null && _log?.Failed is null)
                {
                    // A clean image's log is empty (every record merged, the tail at the head) unless space ran out.
                    if (_merger is not null)
                        await _merger.MergeAllAsync(CancellationToken.None).ConfigureAwait(false);
                    await _pipeline.CloseAsync().ConfigureAwait(false);
                    await WriteHeaderAsync(dirty: false, CancellationToken.None).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            // A commit left running by write-back, or the scan behind open, must not outlive the store. A
            // commit's failure, if any, is in _failed and kept the image marked dirty.
            await _pipeline.CommitFinished.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            await _recovery.StopAsync().ConfigureAwait(false);
            _cache.Clear();
            await _store.DisposeAsync().ConfigureAwait(false);
        }
    }

    // ---- checks ----

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size - length)
            ThrowHelper.OutOfRange(offset, length, Size);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
    }

    private void CheckWritable()
    {
        if (IsReadOnly)
            ThrowHelper.ReadOnly();
        _pipeline.ThrowIfFailed();
        _log?.ThrowIfFailed();
    }
}
