using System.Buffers;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// Hands out data pblks. Space is promised before it is taken: a writer reserves the worst case of its
/// lblk (stored uncompressed) when the lblk turns dirty, so write-back can never find the device full
/// after a write was acknowledged. Invariant: <c>free &gt;= reserved</c>, where free counts pblks neither
/// in use nor waiting to be freed.
/// </summary>
internal sealed class Allocator
{
    private readonly Geometry _geometry;
    private readonly IBackingStore _store;
    private readonly Dictionary<uint, Pbat> _pbats = [];
    private readonly Action<string> _log;

    /// <summary>pblks claimed by more than one lblk: kept in use for the whole session, whoever lets go of them.</summary>
    private readonly HashSet<ulong> _neverFree = [];
    private readonly SemaphoreSlim _pbatLock = new(1, 1);
    private readonly Lock _spaceLock = new();
    private long _free;
    private long _reserved;

    public Allocator(Geometry geometry, IBackingStore store, long pblksUsed, Action<string> log)
    {
        _geometry = geometry;
        _store = store;
        _log = log;
        _free = (long)geometry.TotalDataPblks - pblksUsed;
    }

    public long Free { get { lock (_spaceLock) return _free; } }
    public long Reserved { get { lock (_spaceLock) return _reserved; } }

    /// <summary>Takes <paramref name="count"/> pblks from the free space not yet promised; false when there are not that many.</summary>
    public bool TryReserve(int count)
    {
        lock (_spaceLock)
        {
            if (_free - _reserved < count)
                return false;
            _reserved += count;
            return true;
        }
    }

    public void Unreserve(int count)
    {
        lock (_spaceLock)
        {
            _reserved -= count;
            Invariant.Check(_reserved >= 0, "reserved pblks below zero");
        }
    }

    /// <summary>
    /// Allocates <paramref name="pblks"/>.Length pblks against a reservation of <paramref name="reserved"/>
    /// (which is released): from <paramref name="homeZone"/> while it has room, then from the zones after it.
    /// </summary>
    public async ValueTask AllocateAsync(uint homeZone, Memory<ulong> pblks, int reserved, CancellationToken cancellationToken)
    {
        int count = pblks.Length;
        Invariant.Check(count <= reserved, "allocation larger than its reservation");
        int[] bits = ArrayPool<int>.Shared.Rent(Math.Max(count, 1));
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            int done = 0;
            uint nrZones = _geometry.NrZones;
            // Keep an lblk in one zone, its home zone first; split it over zones only when none has room.
            for (uint i = 0; i < nrZones && done == 0; i++)
            {
                uint zone = (uint)((homeZone + (ulong)i) % nrZones);
                var pbat = await GetPbatAsync(zone, cancellationToken).ConfigureAwait(false);
                if (pbat.Free >= count)
                    done = Take(zone, pbat, count, 0, pblks.Span, bits);
            }
            for (uint zone = 0; zone < nrZones && done < count; zone++)
            {
                var pbat = await GetPbatAsync(zone, cancellationToken).ConfigureAwait(false);
                done += Take(zone, pbat, Math.Min(count - done, pbat.Free), done, pblks.Span, bits);
            }
            Invariant.Check(done == count, $"reserved space not found in the pbats ({done} of {count} pblks)");
            lock (_spaceLock)
            {
                _free -= count;
                _reserved -= reserved;
                Invariant.Check(_free >= 0 && _reserved >= 0, "free or reserved pblks below zero");
            }
        }
        finally
        {
            _pbatLock.Release();
            ArrayPool<int>.Shared.Return(bits);
        }
    }

    private int Take(uint zone, Pbat pbat, int count, int at, Span<ulong> pblks, int[] bits)
    {
        if (count == 0 || !pbat.TryAllocate(count, bits))
            return 0;
        ulong dataStart = _geometry.DataStart(zone);
        for (int k = 0; k < count; k++)
            pblks[at + k] = dataStart + (ulong)bits[k];
        return count;
    }

    /// <summary>
    /// True for a pblk claimed by more than one lblk, which stays in use whoever lets go of it. The set is filled by
    /// <see cref="ApplyClaimsAsync"/>, which every allocation and free waits for, and does not change after.
    /// </summary>
    public bool StaysInUse(ulong pblk) => _neverFree.Contains(pblk);

    /// <summary>
    /// Takes those of <paramref name="pblks"/> that are free now out of the free space, so that nothing is
    /// allocated in them until <see cref="FreeAsync"/> gives them back, and adds them to <paramref name="claimed"/>.
    /// Space promised to reservations is left alone: at most the free pblks not reserved are claimed.
    /// </summary>
    public async ValueTask ClaimFreeAsync(IReadOnlyList<ulong> pblks, List<ulong> claimed, CancellationToken cancellationToken)
    {
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            foreach (ulong pblk in pblks)
            {
                if (_neverFree.Contains(pblk) || !_geometry.TryLocateDataPblk(pblk, out uint zone, out int bit))
                    continue;
                var pbat = await GetPbatAsync(zone, cancellationToken).ConfigureAwait(false);
                if (pbat.IsSet(bit))
                    continue;
                // Taken out of the free space one at a time, so a reservation made meanwhile is never promised it.
                lock (_spaceLock)
                {
                    if (_free - _reserved < 1)
                        break;
                    _free--;
                }
                pbat.Set(bit);
                claimed.Add(pblk);
            }
        }
        finally
        {
            _pbatLock.Release();
        }
    }

    /// <summary>Those of <paramref name="pblks"/> that are free now, each once, in order.</summary>
    public async ValueTask<List<ulong>> KeepFreeAsync(List<ulong> pblks, CancellationToken cancellationToken)
    {
        pblks.Sort();
        var free = new List<ulong>();
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            for (int i = 0; i < pblks.Count; i++)
            {
                ulong pblk = pblks[i];
                if ((i > 0 && pblks[i - 1] == pblk) || _neverFree.Contains(pblk) || !_geometry.TryLocateDataPblk(pblk, out uint zone, out int bit))
                    continue;
                var pbat = await GetPbatAsync(zone, cancellationToken).ConfigureAwait(false);
                if (!pbat.IsSet(bit))
                    free.Add(pblk);
            }
        }
        finally
        {
            _pbatLock.Release();
        }
        return free;
    }

    /// <summary>Returns pblks to the free space. Call only once nothing durable refers to them.</summary>
    public async ValueTask FreeAsync(IReadOnlyList<ulong> pblks, CancellationToken cancellationToken)
    {
        if (pblks.Count == 0)
            return;
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            int freed = 0;
            foreach (ulong pblk in pblks)
            {
                // Another lblk claims it too: whichever of them owns it, it is not free.
                if (_neverFree.Contains(pblk))
                    continue;
                Invariant.Check(_geometry.TryLocateDataPblk(pblk, out uint zone, out int bit), $"freeing pblk {pblk} outside the data areas");
                var pbat = await GetPbatAsync(zone, cancellationToken).ConfigureAwait(false);
                pbat.Clear(bit);
                freed++;
            }
            lock (_spaceLock)
                _free += freed;
        }
        finally
        {
            _pbatLock.Release();
        }
    }

    /// <summary>
    /// Makes the pbats agree with what the lbats claim, before the first allocation. With
    /// <paramref name="rebuild"/> (the image was not closed clean) every pbat is replaced by the claims.
    /// Otherwise each pbat is read and compared: claimed pblks marked free are fenced (marked used),
    /// pblks marked used that nobody claims are leaks (logged, kept), bits past the zone's data are
    /// cleared. pblks claimed twice are never freed in this session. Each finding is one log line.
    /// </summary>
    public async ValueTask ApplyClaimsAsync(PblkClaims claims, bool rebuild, CancellationToken cancellationToken)
    {
        byte[] page = ArrayPool<byte>.Shared.Rent(PbatLayout.Bytes);
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            long used = 0, fenced = 0, leaked = 0;
            int fencedZones = 0, leakedZones = 0;
            for (uint zone = 0; zone < _geometry.NrZones; zone++)
            {
                var words = claims.Zone(zone);
                var pbat = new Pbat(_geometry.DataPblks(zone));
                if (rebuild)
                {
                    pbat.ClearAll();
                    pbat.Reconcile(words);
                    pbat.Dirty = true;
                }
                else
                {
                    await LoadAsync(zone, pbat, page, cancellationToken).ConfigureAwait(false);
                    var (f, firstF, l, firstL) = pbat.Reconcile(words);
                    if (f > 0)
                    {
                        fenced += f;
                        if (fencedZones++ < MaxZoneLines)
                            _log($"zone {zone} pbat: {f} pblks in use by lblks were marked free (first {_geometry.DataStart(zone) + (ulong)firstF}); marked in use, so they are never handed out");
                    }
                    if (l > 0)
                    {
                        leaked += l;
                        if (leakedZones++ < MaxZoneLines)
                            _log($"zone {zone} pbat: {l} pblks marked in use are claimed by no lblk (first {_geometry.DataStart(zone) + (ulong)firstL}); left in use, cbd check --repair frees them");
                    }
                }
                used += pbat.DataPblks - pbat.Free;
                // A pbat that needs no change is read again when first used; memory holds only the changed ones.
                if (pbat.Dirty)
                    _pbats[zone] = pbat;
                else
                    _pbats.Remove(zone);
            }
            if (fencedZones > MaxZoneLines || leakedZones > MaxZoneLines)
                _log($"pbats: {fenced} pblks fenced in {fencedZones} zones, {leaked} leaked in {leakedZones} zones in all");
            int twice = 0;
            foreach (ulong pblk in claims.ClaimedTwice.Order())
            {
                _neverFree.Add(pblk);
                if (twice++ < MaxZoneLines)
                    _log($"pblk {pblk} is claimed by more than one lblk: it stays in use for this session (each claimant reads what its checksum accepts); cbd check --repair decides its owner");
            }
            if (twice > MaxZoneLines)
                _log($"{twice} pblks in all are claimed by more than one lblk");
            lock (_spaceLock)
            {
                _free = (long)_geometry.TotalDataPblks - used;
                if (_free < _reserved)
                    _log($"pbats: {_free} data pblks are free, fewer than the {_reserved} promised to written lblks; write-back of some of them may fail for lack of space");
            }
        }
        finally
        {
            _pbatLock.Release();
            ArrayPool<byte>.Shared.Return(page);
        }
    }

    /// <summary>Log lines of one kind at most, so that a badly damaged image does not flood the log.</summary>
    private const int MaxZoneLines = 20;

    /// <summary>Writes every changed pbat.</summary>
    public async ValueTask WriteDirtyAsync(CancellationToken cancellationToken)
    {
        byte[] page = ArrayPool<byte>.Shared.Rent(PbatLayout.Bytes);
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            foreach (var (zone, pbat) in _pbats)
            {
                if (!pbat.Dirty)
                    continue;
                pbat.Store(page);
                await PbatLayout.WriteAsync(_store, _geometry, zone, page, cancellationToken).ConfigureAwait(false);
                pbat.Dirty = false;
            }
        }
        finally
        {
            _pbatLock.Release();
            ArrayPool<byte>.Shared.Return(page);
        }
    }

    private async ValueTask<Pbat> GetPbatAsync(uint zone, CancellationToken cancellationToken)
    {
        if (_pbats.TryGetValue(zone, out var pbat))
            return pbat;
        pbat = new Pbat(_geometry.DataPblks(zone));
        byte[] page = ArrayPool<byte>.Shared.Rent(PbatLayout.Bytes);
        try
        {
            await LoadAsync(zone, pbat, page, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(page);
        }
        _pbats[zone] = pbat;
        return pbat;
    }

    /// <summary>Reads a zone's pbat; bits past its data pblks name no pblk and are cleared (logged), never fatal.</summary>
    private async ValueTask LoadAsync(uint zone, Pbat pbat, byte[] page, CancellationToken cancellationToken)
    {
        await _store.ReadAsync(PbatLayout.Offset(_geometry, zone), page.AsMemory(0, PbatLayout.Bytes), cancellationToken).ConfigureAwait(false);
        pbat.Load(page.AsSpan(0, PbatLayout.Bytes));
        int beyond = pbat.ClearBeyondData();
        if (beyond > 0)
            _log($"zone {zone} pbat: {beyond} bits set past its {pbat.DataPblks} data pblks; cleared");
    }
}
