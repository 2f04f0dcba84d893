using System.Buffers;
using Cbd.Core.Format;

namespace Cbd.Core.Engine;

/// <summary>
/// Admits a change to one lblk into the cache: holds the writer back while the cache is full of dirty lblks
/// (<see cref="ThrottleAsync"/>), gives the lblk the space its write-back will need, then applies the change
/// to the cache entry and marks it dirty (<see cref="ModifyAsync"/>).
/// </summary>
/// <remarks>
/// Space: normally a dirty lblk holds a reservation for its worst case, stored uncompressed, taken before the
/// entry's lock (<see cref="TryReserveAsync"/> may run a checkpoint, which takes entry locks). When the device
/// is too full for that even after write-back, the change is measured instead ("measure" mode): it is accepted
/// if what the lblk then compresses to fits, and otherwise undone and refused with
/// <see cref="OutOfSpaceException"/>. What the device can promise about space is <see cref="SpacePromise"/>.
/// </remarks>
internal sealed class WriteAdmission
{
    /// <summary>
    /// Checkpoints a reservation runs to make room (each releases what write-back reserved beyond what
    /// compression needed and frees the pblks it replaced) before it asks whether waiting for more can help.
    /// </summary>
    private const int CheckpointsBeforeGivingUp = 2;

    private readonly Geometry _geometry;
    private readonly LblkCache _cache;
    private readonly LblkBufferPool _buffers;
    private readonly LblkIo _io;
    private readonly Allocator _alloc;
    private readonly SpacePromise _space;
    private readonly UsedCounts _used;
    private readonly CheckpointPipeline _pipeline;
    private readonly WriteBackScheduler _scheduler;
    private readonly int _lblkSize;
    private readonly WriteLog? _log;
    private readonly RecordCompression _recordCompression = new();
    private readonly byte[] _zeroLblk;
    private readonly Action _makeLogRoom;
    private readonly Action<int> _appended;
    private readonly Func<Exception?> _logBlocked;

    public WriteAdmission(Geometry geometry, LblkCache cache, LblkIo io, Allocator alloc, SpacePromise space, UsedCounts used,
        CheckpointPipeline pipeline, WriteBackScheduler scheduler, WriteLog? log, Action makeLogRoom, Action<int> appended, Func<Exception?> logBlocked)
    {
        _log = log;
        _makeLogRoom = makeLogRoom;
        _appended = appended;
        _logBlocked = logBlocked;
        _zeroLblk = log is null ? [] : new byte[geometry.LblkSize];
        _geometry = geometry;
        _cache = cache;
        _buffers = cache.Buffers;
        _io = io;
        _alloc = alloc;
        _space = space;
        _used = used;
        _pipeline = pipeline;
        _scheduler = scheduler;
        _lblkSize = geometry.LblkSize;
    }

    /// <summary>
    /// Applies one change inside one lblk: copy <paramref name="data"/> at <paramref name="within"/>, or
    /// with <paramref name="zero"/> make the whole lblk zero (deallocated at write-back).
    /// <paramref name="zeroLength"/>, when set, writes that many zero bytes instead of <paramref name="data"/>.
    /// </summary>
    public async ValueTask ModifyAsync(ulong lblk, int within, ReadOnlyMemory<byte> data, bool zero, CancellationToken cancellationToken, int zeroLength = -1)
    {
        Volatile.Write(ref _lastWrite, Environment.TickCount64);
        while (true)
        {
            if (_log is not null && await TryLogAsync(lblk, within, data, zero, zeroLength, cancellationToken).ConfigureAwait(false))
                return;
            if (await ModifyCachedAsync(lblk, within, data, zero, Rewrite.None, cancellationToken, zeroLength).ConfigureAwait(false))
                return;
        }
    }

    /// <summary>When the last change began (<see cref="Environment.TickCount64"/>): the merger waits for a pause in writes.</summary>
    public long LastWrite => Volatile.Read(ref _lastWrite);

    private long _lastWrite = Environment.TickCount64;

    /// <summary>
    /// A merge (docs/FORMAT.md, "The write log"): the lblk is loaded with its pending records applied and marked dirty, so
    /// that the next checkpoint writes it back with them, and the log's tail can then pass them.
    /// </summary>
    /// <paramref name="fast"/>: the log is under pressure, and the lblk is written back with the fast codec
    /// (<see cref="CachedLblk.WriteFast"/>).
    public async ValueTask MergeAsync(ulong lblk, bool fast, CancellationToken cancellationToken) =>
        await ModifyCachedAsync(lblk, 0, ReadOnlyMemory<byte>.Empty, zero: false, fast ? Rewrite.FastMerge : Rewrite.Merge, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// A recompression: an lblk stored with the fast codec (<see cref="LblkIo.TakeFastStored"/>) is loaded and marked dirty,
    /// so that the next checkpoint writes it back with the device's codec (nothing is done when it is dirty already with a
    /// change: that write-back does it). One trimmed meanwhile is written back as it is now, unallocated.
    /// </summary>
    public async ValueTask RecompressAsync(ulong lblk, CancellationToken cancellationToken) =>
        await ModifyCachedAsync(lblk, 0, ReadOnlyMemory<byte>.Empty, zero: false, Rewrite.Recompress, cancellationToken).ConfigureAwait(false);

    /// <summary>What <see cref="ModifyCachedAsync"/> does: a change, or a rewrite of the lblk's contents as they are.</summary>
    private enum Rewrite
    {
        None,
        Merge,
        FastMerge,
        Recompress,
    }

    /// <summary>
    /// With a write log, a change goes there as a record unless it covers its whole lblk and the lblk has no record a
    /// replay could apply (then the cache takes it, as without a log), or the lblk holds a change the log does not have
    /// (<see cref="CachedLblk.Unlogged"/>, or published and not yet committed). False when the cache must take it.
    /// </summary>
    private async ValueTask<bool> TryLogAsync(ulong lblk, int within, ReadOnlyMemory<byte> data, bool zero, int zeroLength, CancellationToken cancellationToken)
    {
        var log = _log!;
        int length = zero ? _lblkSize : zeroLength >= 0 ? zeroLength : data.Length;
        if (zero)
            within = 0;
        bool whole = length == _lblkSize;
        if (whole && (!log.IsLive(lblk) || _pipeline.Fault == CheckpointFault.WholeWriteOverLiveRecords))
            return false;
        _pipeline.ThrowIfFailed();
        byte[] record = ArrayPool<byte>.Shared.Rent(LogRecord.MaxBytes(_lblkSize));
        int reservation = 0;
        try
        {
            // Compressed before any lock is taken.
            // A zero record deallocates what it covers as far as the lblk's stored form goes (zero detection aside): a whole
            // lblk zeroed without leave to deallocate is logged as the zeros it holds, which take a few bytes compressed.
            var header = zero ? LogRecord.Zero(0, lblk, 0, _lblkSize)
                : zeroLength >= 0 && !whole ? LogRecord.Zero(0, lblk, within, length)
                : zeroLength >= 0 ? LogRecord.EncodeData(record, _recordCompression.Codec, 0, lblk, 0, _zeroLblk)
                : LogRecord.EncodeData(record, _recordCompression.Codec, 0, lblk, within, data.Span);
            // Records are compressed on the request path with LZ4, whatever the device's algorithm, as hard as pays.
            if (header.Kind == LogRecordKind.Data && zeroLength < 0)
                _recordCompression.Observe(header);
            reservation = await log.ReserveAsync(header.Bytes, _makeLogRoom, _logBlocked, cancellationToken).ConfigureAwait(false);
            var entry = _cache.Pin(lblk);
            try
            {
                await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    if (entry.Unlogged || _pipeline.HoldsUnlogged(lblk) || (whole && !log.IsLive(lblk)))
                        return false;
                    if (entry.Loaded)
                        CoverInWriteBack(entry, header, record);
                    int held = reservation;
                    reservation = 0;
                    var appended = await log.AppendAsync(record, header, held, cancellationToken).ConfigureAwait(false);
                    int pending = log.AddPending(appended);
                    if (entry.Loaded)
                    {
                        if (!_io.ApplyRecord(entry, appended.Header, record))
                            throw new InvalidOperationException($"lblk {lblk}: log record {appended.Seq} just written does not decode");
                        entry.LogApplied = appended.Seq + 1;
                    }
                    _appended(pending);
                    return true;
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
        finally
        {
            if (reservation > 0)
                log.Unreserve(reservation);
            ArrayPool<byte>.Shared.Return(record);
        }
    }

    /// <summary>
    /// A change taken into the cache, or a rewrite (<paramref name="rewrite"/>: nothing changes, the lblk is loaded with its
    /// records and marked dirty). False when, under the entry's lock, the change turns out to belong in the log.
    /// </summary>
    private async ValueTask<bool> ModifyCachedAsync(ulong lblk, int within, ReadOnlyMemory<byte> data, bool zero, Rewrite rewrite, CancellationToken cancellationToken, int zeroLength = -1)
    {
        bool merge = rewrite != Rewrite.None;
        await ThrottleAsync(cancellationToken).ConfigureAwait(false);
        int pblksPerLblk = _geometry.Alloc.PblksPerLblk;
        var entry = _cache.Pin(lblk);
        int held = 0;
        // Normally a dirty lblk holds a reservation for its worst case, stored uncompressed. When the
        // device is too full for that, the change is measured instead: it is accepted if what the
        // lblk then compresses to fits, so zeros and better-compressing overwrites still go through.
        bool measure = false;
        try
        {
            while (true)
            {
                if (!zero && !measure && held == 0 && Volatile.Read(ref entry.ReservedPblks) < pblksPerLblk)
                {
                    held = await TryReserveAsync(pblksPerLblk, cancellationToken).ConfigureAwait(false);
                    measure = held == 0;
                }
                await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
                byte[]? undo = null;
                try
                {
                    if (rewrite is Rewrite.Merge or Rewrite.FastMerge && !_log!.HasPending(lblk))
                        return true; // merged meanwhile
                    if (rewrite == Rewrite.Recompress && entry.Dirty && !entry.WriteFast)
                        return true; // its coming write-back recompresses it
                    // A replay would apply the lblk's live records over a stored form that holds this change: it must be logged too.
                    if (!merge && _log is not null && !entry.Unlogged && !_pipeline.HoldsUnlogged(lblk) && _log.IsLive(lblk) &&
                        !(_pipeline.Fault == CheckpointFault.WholeWriteOverLiveRecords && (zero || (zeroLength >= 0 ? zeroLength : data.Length) == _lblkSize)))
                        return false;
                    int shortfall = zero ? 0 : pblksPerLblk - entry.ReservedPblks;
                    if (shortfall > 0 && !measure && held == 0)
                        continue; // write-back took the entry's reservation meanwhile: reserve anew
                    bool wasLoaded = entry.Loaded, wasZero = entry.IsZero;
                    if (shortfall > 0 && measure && entry.Data is { } before)
                    {
                        undo = _buffers.Rent();
                        before.AsSpan(0, _lblkSize).CopyTo(undo);
                    }
                    // A merge under pressure of a clean lblk stores its records as patches over its stored form when it can,
                    // without a load or a compression (LblkIo.TryPreparePatchAsync). Not on the measure path, which needs the
                    // contents to measure them. Any other change makes write-back compress the lblk whole.
                    bool patched = rewrite == Rewrite.FastMerge && _io.CanPatch && !entry.Dirty && !(shortfall > 0 && measure) &&
                        await _io.TryPreparePatchAsync(entry, cancellationToken).ConfigureAwait(false);
                    if (!patched)
                    {
                        _io.DropPatch(entry);
                        if (merge)
                            await _io.EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
                        else
                        {
                            Apply(entry, within, data.Span, zero, zeroLength);
                            if (!entry.Loaded)
                                await EnsureLoadedAndApplyAsync(entry, within, data, zeroLength, cancellationToken).ConfigureAwait(false);
                        }
                    }
                    if (shortfall > 0 && !measure)
                    {
                        entry.ReservedPblks = pblksPerLblk;
                        held -= shortfall;
                    }
                    else if (shortfall > 0)
                    {
                        // The measure path: what the lblk now compresses to must fit.
                        int extra = _io.PblksNeeded(entry) - entry.ReservedPblks;
                        if (extra > 0 && !_alloc.TryReserve(extra))
                        {
                            Restore(entry, undo, wasLoaded, wasZero);
                            undo = null;
                            throw NoSpaceFor(lblk, extra);
                        }
                        if (extra > 0)
                            entry.ReservedPblks += extra;
                    }
                    entry.Version++;
                    entry.WriteFast = rewrite == Rewrite.FastMerge;
                    if (!merge && _log is not null)
                        entry.Unlogged = true;
                    // The injected bug takes a whole write as superseding the lblk's records, so its write-back retires them.
                    if (_pipeline.Fault == CheckpointFault.WholeWriteOverLiveRecords && _log is not null && !merge)
                        entry.LogApplied = Math.Max(entry.LogApplied, _log.AppliedBefore(lblk));
                    _cache.MarkDirty(entry);
                    return true;
                }
                finally
                {
                    if (undo is not null)
                        _buffers.Return(undo);
                    entry.Lock.Release();
                }
            }
        }
        finally
        {
            if (held > 0)
                _alloc.Unreserve(held);
            _cache.Unpin(entry);
        }
    }

    /// <summary>
    /// A record applied to a loaded entry is written back with it when the entry is dirty and its write-back is still to
    /// come (a merge, say): its reservation must then cover the contents with the record too. It covers any contents when
    /// it is one lblk's worth; else (a nearly full device, where the merge measured what the lblk needed) the shortfall is
    /// reserved, or what the lblk then measures. Throws <see cref="OutOfSpaceException"/>, before anything is appended,
    /// when neither fits. Caller holds the entry's lock.
    /// </summary>
    private void CoverInWriteBack(CachedLblk entry, LogRecordHeader header, byte[] record)
    {
        int pblksPerLblk = _geometry.Alloc.PblksPerLblk;
        int shortfall = pblksPerLblk - entry.ReservedPblks;
        if (!entry.Dirty || entry.WriteBackVersion == entry.Version || shortfall <= 0)
            return;
        if (_alloc.TryReserve(shortfall))
        {
            entry.ReservedPblks = pblksPerLblk;
            return;
        }
        var after = new CachedLblk(entry.Lblk) { Loaded = true, IsZero = entry.IsZero };
        try
        {
            if (!entry.IsZero)
            {
                after.Data = _buffers.Rent();
                entry.Data.AsSpan(0, _lblkSize).CopyTo(after.Data);
            }
            if (!_io.ApplyRecord(after, header, record))
                throw new InvalidOperationException($"lblk {entry.Lblk}: a log record about to be written does not decode");
            int extra = _io.PblksNeeded(after) - entry.ReservedPblks;
            if (extra <= 0)
                return;
            if (!_alloc.TryReserve(extra))
                throw NoSpaceFor(entry.Lblk, extra);
            entry.ReservedPblks += extra;
        }
        finally
        {
            if (after.Data is { } data)
                _buffers.Return(data);
        }
    }

    private OutOfSpaceException NoSpaceFor(ulong lblk, int extra) => new(
        $"no space left: {_alloc.Free} free data pblks, {_alloc.Reserved} promised to unwritten lblks, {extra} more needed for lblk {lblk}");

    /// <summary>Puts an entry back as it was before a change that could not be given space.</summary>
    private void Restore(CachedLblk entry, byte[]? undo, bool wasLoaded, bool wasZero)
    {
        if (undo is not null)
        {
            undo.AsSpan(0, _lblkSize).CopyTo(entry.Data);
            return;
        }
        // The lblk had no buffer: it was not loaded yet, or all zeros.
        _cache.ReleaseData(entry);
        entry.Loaded = wasLoaded;
        entry.IsZero = wasZero;
    }

    /// <summary>The synchronous part of a change: everything unless the lblk must first be read.</summary>
    private void Apply(CachedLblk entry, int within, ReadOnlySpan<byte> data, bool zero, int zeroLength)
    {
        int length = zeroLength >= 0 ? zeroLength : data.Length;
        if (zero)
        {
            _cache.ReleaseData(entry);
            entry.IsZero = true;
            entry.Loaded = true;
            return;
        }
        if (!entry.Loaded && length == _lblkSize)
        {
            entry.Data ??= _buffers.Rent();
            entry.IsZero = false;
            entry.Loaded = true;
        }
        if (!entry.Loaded)
            return; // read-modify-write: EnsureLoadedAndApplyAsync finishes it
        if (entry.IsZero)
        {
            entry.Data ??= _buffers.Rent();
            entry.Data.AsSpan(0, _lblkSize).Clear();
            entry.IsZero = false;
        }
        var target = entry.Data.AsSpan(within, length);
        if (zeroLength >= 0)
            target.Clear();
        else
            data.CopyTo(target);
    }

    private async ValueTask EnsureLoadedAndApplyAsync(CachedLblk entry, int within, ReadOnlyMemory<byte> data, int zeroLength, CancellationToken cancellationToken)
    {
        await _io.EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
        Apply(entry, within, data.Span, zero: false, zeroLength);
    }

    /// <summary>Reserves <paramref name="count"/> pblks, writing back to make room when needed; 0 when there is no room even then.</summary>
    private async ValueTask<int> TryReserveAsync(int count, CancellationToken cancellationToken)
    {
        for (int attempt = 0; ; attempt++)
        {
            if (_alloc.TryReserve(count))
                return count;
            if (attempt >= CheckpointsBeforeGivingUp)
            {
                // While the device backs the lblks allocated (SpacePromise), the space exists: only writes running
                // alongside can hold it, reserved or written back and not yet committed, and it comes free as
                // their checkpoints commit, so a write waits for them rather than fail. With none left, one more
                // try settles it. (Dirty lblks are not counted here: rewrites of allocated ones would count twice.)
                bool othersHoldSpace = _alloc.Reserved > 0 || _pipeline.Completed != _pipeline.Started;
                if (!othersHoldSpace || !_space.Backs(Interlocked.Read(ref _used.Lblks)))
                    return _alloc.TryReserve(count) ? count : 0;
            }
            // Write-back releases reservations beyond what compression needed and frees replaced pblks.
            await _pipeline.CheckpointAsync(_pipeline.Started, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Holds a writer back while the cache is full of dirty lblks, until write-back makes room.</summary>
    private async ValueTask ThrottleAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            // The signal is taken before the count: progress made after the count was read then ends the wait.
            var progress = _pipeline.Progress;
            int dirty = _cache.DirtyCount;
            if (dirty >= _cache.WriteBackThreshold)
                _scheduler.Kick();
            if (dirty < _cache.ThrottleThreshold)
                return;
            _pipeline.ThrowIfFailed();
            await progress.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }
}
