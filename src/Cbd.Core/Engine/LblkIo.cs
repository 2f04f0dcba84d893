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
    private readonly Codec? _fastCodec;
    private readonly bool _zeroDetect;
    private readonly DamageLog _damage;
    private readonly int _lblkSize;
    private readonly WriteLog? _log;
    private readonly bool _patching;

    /// <summary>lblks whose last write-back used the fast codec, to be recompressed when the device is idle. Guarded by itself.</summary>
    private readonly HashSet<ulong> _fastStored = [];

    public LblkIo(Geometry geometry, IBackingStore store, LbatCache lbat, Allocator alloc, LblkBufferPool buffers, Codec codec, Codec? fastCodec, bool zeroDetect,
        DamageLog damage, EngineCounters counters, WriteLog? log, bool patching)
    {
        _fastCodec = fastCodec;
        _log = log;
        _patching = patching && log is not null;
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

    /// <summary>
    /// Loads an lblk from the backing store into its cache entry: its stored form, then its pending log records applied
    /// over it in log order. Caller holds the entry's lock.
    /// </summary>
    public async ValueTask EnsureLoadedAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        _counters.CountLookup(entry.Loaded);
        if (entry.Loaded)
            return;
        // Loaded, the lblk holds every record the patch would have: write-back compresses it whole.
        DropPatch(entry);
        if (_log is null || !_log.HasPending(entry.Lblk))
        {
            await LoadStoredAsync(entry, cancellationToken).ConfigureAwait(false);
            return;
        }
        var records = new List<PendingRecord>();
        _log.GetPending(entry.Lblk, records);
        // From a record of the whole lblk on, the stored form does not matter.
        if (records.Count > 0 && records[0].Header.IsWhole(_lblkSize))
        {
            entry.IsZero = true;
            entry.Loaded = true;
        }
        else
        {
            await LoadStoredAsync(entry, cancellationToken).ConfigureAwait(false);
        }
        byte[] buffer = ArrayPool<byte>.Shared.Rent(LogRecord.MaxBytes(_lblkSize));
        try
        {
            foreach (var record in records)
            {
                if (!await _log.ReadAsync(record, buffer, cancellationToken).ConfigureAwait(false))
                {
                    Unload(entry);
                    throw _damage.Damaged(entry.Lblk, $"log record {record.Seq} at log offset {record.Position} no longer reads back as written");
                }
                if (!ApplyRecord(entry, record.Header, buffer))
                {
                    Unload(entry);
                    throw _damage.Damaged(entry.Lblk, $"log record {record.Seq} at log offset {record.Position} does not decompress to its {record.Header.Length} bytes");
                }
            }
            entry.LogApplied = records.Count > 0 ? records[^1].Seq + 1 : 0;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void Unload(CachedLblk entry)
    {
        if (entry.Data is { } data)
        {
            entry.Data = null;
            _buffers.Return(data);
        }
        entry.Loaded = false;
        entry.IsZero = false;
    }

    /// <summary>
    /// Applies one log record (<paramref name="record"/> holds its bytes, or only its header for a zero record) to a
    /// loaded entry; false when a compressed payload does not decode. Caller holds the entry's lock.
    /// </summary>
    public bool ApplyRecord(CachedLblk entry, LogRecordHeader header, ReadOnlySpan<byte> record)
    {
        int offset = (int)header.Offset, length = (int)header.Length;
        if (header.Kind == LogRecordKind.Zero)
        {
            if (header.IsWhole(_lblkSize))
            {
                if (entry.Data is { } data)
                {
                    entry.Data = null;
                    _buffers.Return(data);
                }
                entry.IsZero = true;
            }
            else if (!entry.IsZero)
            {
                entry.Data.AsSpan(offset, length).Clear();
            }
            else if (!_zeroDetect)
            {
                // As a change in the cache does: without zero detection, zeroing part of an unallocated lblk allocates it.
                entry.Data ??= _buffers.Rent();
                entry.Data.AsSpan(0, _lblkSize).Clear();
                entry.IsZero = false;
            }
            return true;
        }
        if (entry.IsZero)
        {
            entry.Data ??= _buffers.Rent();
            entry.Data.AsSpan(0, _lblkSize).Clear();
            entry.IsZero = false;
        }
        return LogRecord.TryDecodePayload(record, header, entry.Data.AsSpan(offset, length));
    }

    /// <summary>Loads the lblk's stored form alone. Caller holds the entry's lock.</summary>
    private async ValueTask LoadStoredAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        byte[]? data = await DecodeStoredAsync(entry.Lblk, 0, cancellationToken).ConfigureAwait(false);
        entry.Data = data;
        entry.IsZero = data is null;
        entry.Loaded = true;
    }

    /// <summary>
    /// Serves a small read of an lblk that is not loaded without loading it: its stored form is decoded only up to the end
    /// of the range (LZ4 stops there: a random 4 KiB read decodes half an lblk on average) and nothing is kept, as random
    /// reads over a device larger than the cache seldom come back to an lblk. Only the first read of an entry does so
    /// (<see cref="CachedLblk.PrefixRead"/>): a second loads it whole, so reads that walk through an lblk decode it about
    /// once. False when the read must load the lblk instead: it is loaded, has log records, the range is larger than a
    /// quarter of it or reaches its end, or the format keeps no crc (which alone would find a damaged end of the stored
    /// form). Caller holds the entry's lock.
    /// </summary>
    public async ValueTask<bool> TryReadUnloadedAsync(CachedLblk entry, int within, Memory<byte> destination, CancellationToken cancellationToken)
    {
        int end = within + destination.Length;
        if (entry.Loaded || entry.PrefixRead || destination.Length > _lblkSize / 4 || end >= _lblkSize || !_geometry.Alloc.WithCrc ||
            (_log is not null && _log.HasPending(entry.Lblk)))
            return false;
        entry.PrefixRead = true;
        _counters.CountLookup(hit: false);
        byte[]? data = await DecodeStoredAsync(entry.Lblk, end, cancellationToken).ConfigureAwait(false);
        if (data is null)
        {
            // Unallocated: as cheap to keep as to forget.
            entry.IsZero = true;
            entry.Loaded = true;
            destination.Span.Clear();
            return true;
        }
        data.AsSpan(within, destination.Length).CopyTo(destination.Span);
        _buffers.Return(data);
        return true;
    }

    /// <summary>
    /// Reads and decodes the lblk's stored form (its first <paramref name="prefix"/> bytes only, when not 0) into a pooled
    /// buffer the caller owns; null when the lblk is unallocated.
    /// </summary>
    private async ValueTask<byte[]?> DecodeStoredAsync(ulong lblk, int prefix, CancellationToken cancellationToken)
    {
        // The lblk's pblk numbers stay in a pooled array until it is read: a cache miss allocates nothing.
        ulong[] slots = ArrayPool<ulong>.Shared.Rent(_geometry.Alloc.PblksPerLblk);
        try
        {
            LblkAlloc alloc;
            try
            {
                alloc = await _lbat.ReadAsync(lblk, slots, cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidDataException e)
            {
                throw _damage.Damaged(lblk, $"invalid lblk_alloc entry ({DamageLog.WithoutLblk(e.Message)}); it reads as an I/O error until written whole or repaired (cbd check --repair)");
            }
            if (!alloc.IsAllocated)
                return null;
            byte[] stored = _buffers.Rent();
            try
            {
                await _store.ReadPblksAsync(alloc.Pblks, stored, cancellationToken: cancellationToken).ConfigureAwait(false);
                byte[] data = _buffers.Rent();
                var result = StoredLblk.Decode(_geometry.Alloc, lblk, alloc, stored, data, prefix);
                if (!result.Ok)
                {
                    _buffers.Return(data);
                    throw result.Fault == StoredLblkFault.ChecksumMismatch
                        ? _damage.Damaged(lblk, $"checksum mismatch (stored 0x{alloc.Crc:x8}, computed 0x{result.ComputedCrc:x8}) in pblks {alloc.Pblks}")
                        : _damage.Damaged(lblk, $"stored bytes (algorithm id {result.AlgorithmId}, {result.StoredBytes} bytes) do not decompress to one {_lblkSize}-byte lblk");
                }
                return data;
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

    /// <summary>
    /// True when merges may store lblks patched (docs/FORMAT.md, "Patched lblks"): an image of format version 1.2 or later,
    /// with a write log.
    /// </summary>
    public bool CanPatch => _patching;

    /// <summary>Gives back the buffer of a patch prepared and not written back. Caller holds the entry's lock.</summary>
    public void DropPatch(CachedLblk entry)
    {
        if (entry.Patch is { } patch)
        {
            entry.Patch = null;
            ArrayPool<byte>.Shared.Return(patch.Area);
        }
    }

    /// <summary>
    /// A merge without a load: the lblk's pending records become the patch area of a patched form over the stored form it
    /// has (docs/FORMAT.md, "Patched lblks"), made ready here for write-back to put in new pblks. A record's payload moves
    /// as it is, compressed or not: nothing is decompressed or compressed, and nothing of the stored form is read. False
    /// when that cannot be done, and the merge must load the lblk: a record covers it whole, it is stored uncompressed, the
    /// patches would not save a pblk, or a record or the entry fails its checks (the load then names the damage). Caller
    /// holds the entry's lock; the entry is clean (loaded or not: what it holds stays as it is).
    /// </summary>
    public async ValueTask<bool> TryPreparePatchAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        var format = _geometry.Alloc;
        var records = new List<PendingRecord>();
        _log!.GetPending(entry.Lblk, records);
        if (records.Count == 0 || records[0].Header.IsWhole(_lblkSize))
            return false;
        ulong[] slots = ArrayPool<ulong>.Shared.Rent(format.PblksPerLblk);
        byte[]? read = null;
        byte[]? area = null;
        try
        {
            LblkAlloc alloc;
            try
            {
                alloc = await _lbat.ReadAsync(entry.Lblk, slots, cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidDataException)
            {
                return false;
            }
            if (alloc.Length == format.UncompressedLength)
                return false;
            // The stored form, patched or not, becomes the base as it is: nothing of it is read.
            var basis = alloc.IsAllocated ? new PatchedLblk.Base(alloc.Length, alloc.Crc, alloc.Pblks.Count) : PatchedLblk.Base.None;
            ulong[] basePblks = alloc.Pblks.Memory.ToArray();
            // The records are read side by side into one buffer, and their payloads are the patches as they lie there.
            int recordBytes = 0;
            foreach (var record in records)
                recordBytes += record.Header.Bytes;
            read = ArrayPool<byte>.Shared.Rent(recordBytes);
            var patches = new List<LblkPatch>(records.Count);
            int at = 0;
            foreach (var record in records)
            {
                var bytes = read.AsMemory(at, record.Header.Bytes);
                if (!await _log.ReadAsync(record, bytes, cancellationToken).ConfigureAwait(false))
                    return false;
                var header = record.Header;
                var patch = new LblkPatch(header.Kind, header.PayloadAlgorithm, (int)header.Offset, (int)header.Length,
                    bytes.Slice(LogRecord.HeaderSize, (int)header.PayloadLength));
                at += header.Bytes;
                // What a later change covers whole takes no room.
                for (int i = patches.Count - 1; i >= 0; i--)
                {
                    if (patch.Covers(patches[i]))
                        patches.RemoveAt(i);
                }
                patches.Add(patch);
            }
            // Sized to the area, which is mostly a few pblks: the entry holds it until write-back.
            long areaBytes = PatchedLblk.AreaBytes(patches);
            if (areaBytes > format.MaxCompressedLength)
                return false;
            area = ArrayPool<byte>.Shared.Rent((int)areaBytes);
            if (PatchedLblk.Encode(format, entry.Lblk, basis, patches, area) is not { } form)
                return false;
            entry.Patch = new PreparedPatch(area, form, basePblks, records[^1].Seq + 1);
            area = null;
            return true;
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(slots);
            if (read is not null)
                ArrayPool<byte>.Shared.Return(read);
            if (area is not null)
                ArrayPool<byte>.Shared.Return(area);
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

    /// <summary>lblks stored with the fast codec by their last write-back.</summary>
    public int FastStoredCount
    {
        get
        {
            lock (_fastStored)
                return _fastStored.Count;
        }
    }

    /// <summary>
    /// Takes up to <paramref name="max"/> lblks stored with the fast codec, for recompression: each is back in the set if it is
    /// written back fast again, and out of it for good if its recompression does not happen (it stays readable as it is).
    /// </summary>
    public List<ulong> TakeFastStored(int max)
    {
        lock (_fastStored)
        {
            var taken = _fastStored.Take(max).ToList();
            foreach (ulong lblk in taken)
                _fastStored.Remove(lblk);
            return taken;
        }
    }

    /// <summary>Compresses one dirty lblk and writes it to newly allocated pblks; null when it is no longer dirty.</summary>
    public async ValueTask<WrittenBack?> WriteBackAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        long version;
        ulong logApplied;
        int reserved;
        uint length;
        uint crc = 0;
        byte[]? stored = null;
        PreparedPatch? patch = null;
        var format = _geometry.Alloc;
        await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!entry.Dirty || entry.WriteBackVersion == entry.Version)
                return null; // clean, or an earlier checkpoint is writing this very version back
            version = entry.Version;
            logApplied = entry.LogApplied;
            entry.WriteBackVersion = version;
            // The reservation moves to this write-back; a write that lands meanwhile reserves anew.
            reserved = entry.ReservedPblks;
            entry.ReservedPblks = 0;
            // An entry with a patch need not be loaded: its contents are not what is written.
            var data = entry.IsZero || entry.Patch is not null ? default : entry.Data.AsSpan(0, _lblkSize);
            bool fast = false;
            if (entry.Patch is { } prepared)
            {
                // The merge prepared a patch area; records that came after it stay pending for the next merge.
                patch = prepared;
                entry.Patch = null;
                stored = prepared.Area;
                (length, crc, logApplied) = (prepared.Form.Length, prepared.Form.Crc, prepared.LogApplied);
                fast = true;
            }
            else if (entry.IsZero || StoredLblk.StoresAsUnallocated(data, _zeroDetect))
            {
                length = 0;
            }
            else
            {
                stored = _buffers.Rent();
                // Only under a whole lblk's reservation: one measured on a nearly full device covers what the device's codec
                // gives, and the fast codec's output may be larger.
                fast = entry.WriteFast && _fastCodec is not null && reserved >= format.PblksPerLblk;
                var form = StoredLblk.Encode(format, fast ? _fastCodec! : _codec, entry.Lblk, data, stored);
                (length, crc) = (form.Length, form.Crc);
            }
            // Under the entry's lock, so the set follows write-backs of one lblk in version order. Without a fast codec it stays empty.
            if (_fastCodec is not null || patch is not null)
            {
                if (fast)
                    _counters.CountFastWriteBack();
                lock (_fastStored)
                {
                    if (fast)
                        _fastStored.Add(entry.Lblk);
                    else
                        _fastStored.Remove(entry.Lblk);
                }
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
            return new WrittenBack(entry, version, LblkAlloc.Unallocated, logApplied);
        }
        try
        {
            if (patch is not null)
            {
                // New pblks for the patch area only; the base's stay where they are, named after them.
                int areaPblks = patch.Form.PatchPblks;
                var all = new ulong[areaPblks + patch.BasePblks.Length];
                await _alloc.AllocateAsync(_geometry.HomeZone(entry.Lblk), all.AsMemory(0, areaPblks), reserved, cancellationToken).ConfigureAwait(false);
                patch.BasePblks.CopyTo(all, areaPblks);
                await _store.WritePblksAsync(all.AsMemory(0, areaPblks), stored, cancellationToken).ConfigureAwait(false);
                _counters.CountPatch();
                return new WrittenBack(entry, version, new LblkAlloc(length, crc, all), logApplied, patch.BasePblks);
            }
            int count = format.PblksFor(length);
            var pblks = new ulong[count];
            await _alloc.AllocateAsync(_geometry.HomeZone(entry.Lblk), pblks, reserved, cancellationToken).ConfigureAwait(false);
            await _store.WritePblksAsync(pblks, stored, cancellationToken).ConfigureAwait(false);
            return new WrittenBack(entry, version, new LblkAlloc(length, crc, pblks), logApplied);
        }
        finally
        {
            if (patch is not null)
                ArrayPool<byte>.Shared.Return(stored);
            else
                _buffers.Return(stored);
        }
    }
}

/// <summary>
/// A patch area a merge made ready (<see cref="LblkIo.TryPreparePatchAsync"/>): its bytes in an array of the shared pool, its form,
/// the base's pblks it keeps, and the seq after the last record it holds.
/// </summary>
internal sealed record PreparedPatch(byte[] Area, PatchedForm Form, ulong[] BasePblks, ulong LogApplied);
