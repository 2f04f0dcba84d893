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
    private readonly SemaphoreSlim _pbatLock = new(1, 1);
    private readonly Lock _spaceLock = new();
    private long _free;
    private long _reserved;

    public Allocator(Geometry geometry, IBackingStore store, long pblksUsed)
    {
        _geometry = geometry;
        _store = store;
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

    /// <summary>Returns pblks to the free space. Call only once nothing durable refers to them.</summary>
    public async ValueTask FreeAsync(IReadOnlyList<ulong> pblks, CancellationToken cancellationToken)
    {
        if (pblks.Count == 0)
            return;
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            foreach (ulong pblk in pblks)
            {
                Invariant.Check(_geometry.TryLocateDataPblk(pblk, out uint zone, out int bit), $"freeing pblk {pblk} outside the data areas");
                var pbat = await GetPbatAsync(zone, cancellationToken).ConfigureAwait(false);
                pbat.Clear(bit);
            }
            lock (_spaceLock)
                _free += pblks.Count;
        }
        finally
        {
            _pbatLock.Release();
        }
    }

    /// <summary>Replaces every pbat with an empty one, to be filled by <see cref="TryClaimForRebuild"/> (recovery).</summary>
    public void ResetForRebuild()
    {
        _pbats.Clear();
        for (uint zone = 0; zone < _geometry.NrZones; zone++)
        {
            var pbat = new Pbat(_geometry.DataPblks(zone));
            pbat.ClearAll();
            _pbats[zone] = pbat;
        }
        lock (_spaceLock)
        {
            _free = (long)_geometry.TotalDataPblks;
            _reserved = 0;
        }
    }

    /// <summary>Marks a pblk used while rebuilding; false when it is already claimed.</summary>
    public bool TryClaimForRebuild(ulong pblk)
    {
        if (!_geometry.TryLocateDataPblk(pblk, out uint zone, out int bit))
            return false;
        var pbat = _pbats[zone];
        if (pbat.IsSet(bit))
            return false;
        pbat.Set(bit);
        lock (_spaceLock)
            _free--;
        return true;
    }

    /// <summary>Writes every changed pbat.</summary>
    public async ValueTask WriteDirtyAsync(CancellationToken cancellationToken)
    {
        byte[] page = ArrayPool<byte>.Shared.Rent(Layout.PblkSize);
        await _pbatLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            foreach (var (zone, pbat) in _pbats)
            {
                if (!pbat.Dirty)
                    continue;
                pbat.Store(page);
                await _store.WriteAsync((long)_geometry.ZoneStart(zone) * Layout.PblkSize, page.AsMemory(0, Layout.PblkSize), cancellationToken).ConfigureAwait(false);
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
        byte[] page = ArrayPool<byte>.Shared.Rent(Layout.PblkSize);
        try
        {
            await _store.ReadAsync((long)_geometry.ZoneStart(zone) * Layout.PblkSize, page.AsMemory(0, Layout.PblkSize), cancellationToken).ConfigureAwait(false);
            pbat.Load(page.AsSpan(0, Layout.PblkSize));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(page);
        }
        if (pbat.BitsBeyondData() != 0)
            throw new InvalidDataException($"zone {zone} pbat: bits set past its {pbat.DataPblks} data pblks; run cbd check --repair");
        _pbats[zone] = pbat;
        return pbat;
    }
}
