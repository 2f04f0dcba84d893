using System.Buffers;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// Moves one lblk between the cache and the backing store: loads its stored form into a cache entry
/// (checksum, decompression), and writes an entry back compressed into newly allocated pblks (the per-lblk
/// part of step 2 of docs/FORMAT.md, "Consistency"). A stored form that fails its checks makes the lblk read
/// as <see cref="LblkCorruptException"/>, named once in the <see cref="DamageLog"/>.
/// </summary>
internal sealed class LblkIo
{
    private readonly Geometry _geometry;
    private readonly IBackingStore _store;
    private readonly EngineCounters _counters;
    private readonly LbatCache _lbat;
    private readonly Allocator _alloc;
    private readonly LblkBufferPool _buffers;
    private readonly Codec _codec;
    private readonly bool _zeroDetect;
    private readonly DamageLog _damage;
    private readonly int _lblkSize;

    public LblkIo(Geometry geometry, IBackingStore store, LbatCache lbat, Allocator alloc, LblkBufferPool buffers, Codec codec, bool zeroDetect, DamageLog damage, EngineCounters counters)
    {
        _counters = counters;
        _geometry = geometry;
        _store = store;
        _lbat = lbat;
        _alloc = alloc;
        _buffers = buffers;
        _codec = codec;
        _zeroDetect = zeroDetect;
        _damage = damage;
        _lblkSize = geometry.LblkSize;
    }

    /// <summary>Loads an lblk from the backing store into its cache entry. Caller holds the entry's lock.</summary>
    public async ValueTask EnsureLoadedAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        _counters.CountLookup(entry.Loaded);
        if (entry.Loaded)
            return;
        // The entry's pblk numbers stay in a pooled array until the lblk is read: a cache miss allocates nothing.
        ulong[] slots = ArrayPool<ulong>.Shared.Rent(_geometry.Alloc.PblksPerLblk);
        try
        {
            LblkAlloc alloc;
            try
            {
                alloc = await _lbat.ReadAsync(entry.Lblk, slots, cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidDataException e)
            {
                throw _damage.Damaged(entry.Lblk, $"invalid lblk_alloc entry ({DamageLog.WithoutLblk(e.Message)}); it reads as an I/O error until written whole or repaired (cbd check --repair)");
            }
            if (!alloc.IsAllocated)
            {
                entry.IsZero = true;
                entry.Loaded = true;
                return;
            }
            byte[] stored = _buffers.Rent();
            try
            {
                await _store.ReadPblksAsync(alloc.Pblks, stored, cancellationToken: cancellationToken).ConfigureAwait(false);
                byte[] data = _buffers.Rent();
                var result = StoredLblk.Decode(_geometry.Alloc, entry.Lblk, alloc, stored, data);
                if (!result.Ok)
                {
                    _buffers.Return(data);
                    throw result.Fault == StoredLblkFault.ChecksumMismatch
                        ? _damage.Damaged(entry.Lblk, $"checksum mismatch (stored 0x{alloc.Crc:x8}, computed 0x{result.ComputedCrc:x8}) in pblks {alloc.Pblks}")
                        : _damage.Damaged(entry.Lblk, $"stored bytes (algorithm id {result.AlgorithmId}, {result.StoredBytes} bytes) do not decompress to one {_lblkSize}-byte lblk");
                }
                entry.Data = data;
                entry.IsZero = false;
                entry.Loaded = true;
            }
            finally
            {
                _buffers.Return(stored);
            }
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(slots);
        }
    }

    /// <summary>pblks write-back will need for the entry's contents as they are now. Caller holds the entry's lock.</summary>
    public int PblksNeeded(CachedLblk entry)
    {
        if (entry.IsZero)
            return 0;
        byte[] scratch = _buffers.Rent();
        try
        {
            return StoredLblk.PblksNeeded(_geometry.Alloc, _codec, entry.Data.AsSpan(0, _lblkSize), _zeroDetect, scratch);
        }
        finally
        {
            _buffers.Return(scratch);
        }
    }

    /// <summary>Compresses one dirty lblk and writes it to newly allocated pblks; null when it is no longer dirty.</summary>
    public async ValueTask<WrittenBack?> WriteBackAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        long version;
        int reserved;
        uint length;
        uint crc = 0;
        byte[]? stored = null;
        var format = _geometry.Alloc;
        await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!entry.Dirty || entry.WriteBackVersion == entry.Version)
                return null; // clean, or an earlier checkpoint is writing this very version back
            version = entry.Version;
            entry.WriteBackVersion = version;
            // The reservation moves to this write-back; a write that lands meanwhile reserves anew.
            reserved = entry.ReservedPblks;
            entry.ReservedPblks = 0;
            var data = entry.IsZero ? default : entry.Data.AsSpan(0, _lblkSize);
            if (entry.IsZero || StoredLblk.StoresAsUnallocated(data, _zeroDetect))
            {
                length = 0;
            }
            else
            {
                stored = _buffers.Rent();
                var form = StoredLblk.Encode(format, _codec, entry.Lblk, data, stored);
                (length, crc) = (form.Length, form.Crc);
            }
        }
        finally
        {
            entry.Lock.Release();
        }

        if (stored is null)
        {
            if (reserved > 0)
                _alloc.Unreserve(reserved);
            return new WrittenBack(entry, version, LblkAlloc.Unallocated);
        }
        try
        {
            int count = format.PblksFor(length);
            var pblks = new ulong[count];
            await _alloc.AllocateAsync(_geometry.HomeZone(entry.Lblk), pblks, reserved, cancellationToken).ConfigureAwait(false);
            await _store.WritePblksAsync(pblks, stored, cancellationToken).ConfigureAwait(false);
            return new WrittenBack(entry, version, new LblkAlloc(length, crc, pblks));
        }
        finally
        {
            _buffers.Return(stored);
        }
    }
}
