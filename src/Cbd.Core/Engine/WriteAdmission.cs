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

    public WriteAdmission(Geometry geometry, LblkCache cache, LblkIo io, Allocator alloc, SpacePromise space, UsedCounts used,
        CheckpointPipeline pipeline, WriteBackScheduler scheduler)
    {
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
                    int shortfall = zero ? 0 : pblksPerLblk - entry.ReservedPblks;
                    if (shortfall > 0 && !measure && held == 0)
                        continue; // write-back took the entry's reservation meanwhile: reserve anew
                    bool wasLoaded = entry.Loaded, wasZero = entry.IsZero;
                    if (shortfall > 0 && measure && entry.Data is { } before)
                    {
                        undo = _buffers.Rent();
                        before.AsSpan(0, _lblkSize).CopyTo(undo);
                    }
                    Apply(entry, within, data.Span, zero, zeroLength);
                    if (!entry.Loaded)
                        await EnsureLoadedAndApplyAsync(entry, within, data, zeroLength, cancellationToken).ConfigureAwait(false);
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
                            throw new OutOfSpaceException(
                                $"no space left: {_alloc.Free} free data pblks, {_alloc.Reserved} promised to unwritten lblks, {extra} more needed for lblk {lblk}");
                        }
                        if (extra > 0)
                            entry.ReservedPblks += extra;
                    }
                    entry.Version++;
                    _cache.MarkDirty(entry);
                    break;
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
