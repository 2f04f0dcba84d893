using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// A compressed block device on a backing store: lblks are cached decompressed, written back compressed
/// into free pblks, and published through their lblk_alloc entries (docs/FORMAT.md, "Consistency").
/// </summary>
public sealed partial class CompressedDevice : IBlockDevice
{
    private readonly IBackingStore _store;
    private readonly Geometry _geometry;
    private readonly DeviceOptions _options;
    private readonly Codec _codec;
    private readonly bool _zeroDetect;
    private readonly bool _crc;
    private readonly LbatCache _lbat;
    private readonly Allocator _alloc;
    private readonly PblkReleaser _releaser;
    private readonly int _lblkSize;
    private readonly int _parallelism;
    private readonly LblkBufferPool _buffers;
    private readonly SpacePromise _space;

    // Cache of decompressed lblks; _cacheLock guards the dictionary, the dirty set, pins and use stamps.
    private readonly Lock _cacheLock = new();
    private readonly Dictionary<ulong, CachedLblk> _cache = [];
    private readonly HashSet<CachedLblk> _dirty = [];
    private readonly int _maxCached;
    private readonly int _dirtyHigh;
    private readonly int _dirtyMax;
    private long _useClock;
    private long _dirtySince;

    // Write-back: one checkpoint compresses at a time, while the ones before may still be publishing and
    // committing; numbers let a flush skip work another checkpoint covered.
    private readonly SemaphoreSlim _checkpointLock = new(1, 1);
    /// <summary>The commit of the last checkpoint; each commit waits for the one before it.</summary>
    private Task _commit = Task.CompletedTask;
    /// <summary>The publication of the last checkpoint; each waits for the one before it.</summary>
    private Task<List<ulong>> _publish = Task.FromResult(new List<ulong>());
    private Task _olderPublish = Task.CompletedTask;
    private long _checkpointsStarted;
    private long _checkpointsCompleted;
    private readonly SemaphoreSlim _kick = new(0, 1);
    private TaskCompletionSource _checkpointDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _stop = new();
    private Task? _writeBackLoop;
    private volatile Exception? _failed;
    private int _disposed;

    private long _lblksUsed;
    private long _pblksUsed;

    // Damage: the pbats are trusted only once compared with every lbat's claims (PblkClaims). On a clean
    // image that scan runs behind open, and write-back, the only user of the allocator, waits for it.
    private Task _claimsApplied = Task.CompletedTask;
    private readonly CancellationTokenSource _scanStop = new();
    /// <summary>lblks already named in the log as damaged, so that each is named once.</summary>
    private readonly ConcurrentDictionary<ulong, byte> _damaged = new();
    private const int MaxDamageLines = 100;

    private CompressedDevice(IBackingStore store, Header header, Geometry geometry, DeviceOptions options)
    {
        _store = store;
        _geometry = geometry;
        Header = header;
        _options = options;
        _codec = Codec.Create(header.Algorithm, header.Level);
        _zeroDetect = header.Flags.HasFlag(HeaderFlags.ZeroDetect);
        _crc = header.Flags.HasFlag(HeaderFlags.LblkCrc);
        _lblkSize = geometry.LblkSize;
        _parallelism = Math.Max(1, options.WriteBackParallelism ?? Environment.ProcessorCount);
        _maxCached = (int)Math.Clamp(options.CacheBytes / _lblkSize, options.ExactCacheSize ? 1 : 4L * _parallelism + 8, int.MaxValue / 2);
        // Write-back starts at a quarter of the cache so that it overlaps with writes; writers wait at three quarters.
        _dirtyHigh = Math.Max(_maxCached / 4, 1);
        _dirtyMax = Math.Max(_maxCached * 3 / 4, 2);
        _buffers = new LblkBufferPool(_lblkSize, _maxCached + 4 * _parallelism);
        _lbat = new LbatCache(geometry, store, maxCleanPages: 4096);
        _alloc = new Allocator(geometry, store, (long)header.PblkUsed, Log);
        _releaser = new PblkReleaser(_alloc, store, options, Log);
        _space = new SpacePromise(geometry);
        _lblksUsed = (long)header.LblkUsed;
        _pblksUsed = (long)header.PblkUsed;
    }

    /// <summary>The header as last written (stats are as of open or last clean close).</summary>
    public Header Header { get; private set; }
    public Geometry Geometry => _geometry;
    public long Size => _geometry.LogicalBytes;
    public int BlockSize => _lblkSize;
    public bool IsReadOnly => _options.ReadOnly;

    /// <summary>True when the geometry backs every lblk stored uncompressed (<see cref="SpacePromise"/>).</summary>
    public bool CanProvision => _space.FullyBacked;

    internal SpacePromise Space => _space;

    /// <summary>True when open found the image not closed clean and rebuilt its pbats and stats.</summary>
    public bool Recovered { get; private set; }

    /// <summary>
    /// Formats <paramref name="store"/> (its whole length is the physical size). Only the header and the
    /// metadata pblks are written; data pblks are left as they are.
    /// </summary>
    /// <exception cref="ArgumentException">The sizes or parameters cannot be formatted; the message says the limit.</exception>
    public static async ValueTask<Header> FormatAsync(IBackingStore store, FormatOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        int level = options.Level ?? CodecLimits.Levels(options.Algorithm).Default;
        try
        {
            CodecLimits.Validate(options.Algorithm, level, "requested");
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException(e.Message, nameof(options), e);
        }
        long physical = store.Length;
        long logical = options.LogicalSize ?? physical / Layout.PblkSize * Layout.PblkSize * 3;
        var flags = (options.ZeroDetect ? HeaderFlags.ZeroDetect : 0) | (options.LblkChecksums ? HeaderFlags.LblkCrc : 0);
        var header = Geometry.Plan(physical, logical, options.LblkSize, options.Algorithm, level, flags, options.MaxLogicalSize);
        var geometry = Geometry.FromHeader(header, physical);

        // Clear the header first: an interrupted format must not leave an old header over new metadata.
        await store.ZeroRangeAsync(0, Layout.HeaderSize, cancellationToken).ConfigureAwait(false);
        await store.FlushAsync(cancellationToken).ConfigureAwait(false);
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            long start = (long)geometry.ZoneStart(zone) * Layout.PblkSize;
            await store.ZeroRangeAsync(start, (long)(1 + geometry.LbatPblks) * Layout.PblkSize, cancellationToken).ConfigureAwait(false);
        }
        await store.FlushAsync(cancellationToken).ConfigureAwait(false);
        await header.WriteAsync(store, cancellationToken).ConfigureAwait(false);
        return header;
    }

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
        var device = new CompressedDevice(store, geometry.Header, geometry, options);
        bool dirty = geometry.Header.Flags.HasFlag(HeaderFlags.Dirty);
        if (dirty)
        {
            // The pbats and stats are not trusted at all: rebuilt from the lbats before anything else.
            var claims = await PblkClaims.ScanAsync(geometry, store, cancellationToken).ConfigureAwait(false);
            await device.ApplyClaimsAsync(claims, rebuild: true, cancellationToken).ConfigureAwait(false);
            device.Recovered = true;
        }
        if (!options.ReadOnly)
        {
            // From here until a clean close the image says it may hold unfinished work.
            await device.WriteHeaderAsync(dirty: true, cancellationToken).ConfigureAwait(false);
            // A clean image opens at once: its pbats are checked against the lbats behind open, since reading
            // every lbat takes seconds on a large sparse device, and only write-back has to wait for it.
            if (!dirty)
                device._claimsApplied = Task.Run(device.AuditPbatsAsync);
            device._writeBackLoop = Task.Run(device.WriteBackLoopAsync);
        }
        return device;
    }

    public DeviceStats GetStats()
    {
        int dirty;
        lock (_cacheLock)
            dirty = _dirty.Count;
        return new DeviceStats(Size, _lblkSize, (long)_geometry.NrLblks, Interlocked.Read(ref _lblksUsed),
            (long)_geometry.TotalDataPblks, Interlocked.Read(ref _pblksUsed), dirty);
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
        while (!buffer.IsEmpty)
        {
            ulong lblk = (ulong)(offset / _lblkSize);
            int within = (int)(offset % _lblkSize);
            int n = Math.Min(buffer.Length, _lblkSize - within);
            await ReadPieceAsync(lblk, within, buffer[..n], cancellationToken).ConfigureAwait(false);
            buffer = buffer[n..];
            offset += n;
        }
    }

    /// <summary>A read of several lblks: they load and decompress in parallel.</summary>
    private async ValueTask ReadManyAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var pieces = new List<Task>();
        while (!buffer.IsEmpty)
        {
            ulong lblk = (ulong)(offset / _lblkSize);
            int within = (int)(offset % _lblkSize);
            int n = Math.Min(buffer.Length, _lblkSize - within);
            pieces.Add(ReadPieceAsync(lblk, within, buffer[..n], cancellationToken).AsTask());
            buffer = buffer[n..];
            offset += n;
        }
        await Task.WhenAll(pieces).ConfigureAwait(false);
    }

    private async ValueTask ReadPieceAsync(ulong lblk, int within, Memory<byte> destination, CancellationToken cancellationToken)
    {
        var entry = Pin(lblk);
        try
        {
            await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                await EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
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
            Unpin(entry);
        }
    }

    public async ValueTask PrefetchAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        if (length == 0)
            return;
        ulong first = (ulong)(offset / _lblkSize);
        ulong last = (ulong)((offset + length - 1) / _lblkSize);
        // Never prefetch more than the cache holds: it would only evict what it just loaded.
        last = Math.Min(last, first + (ulong)_maxCached / 2);
        for (ulong lblk = first; lblk <= last; lblk++)
        {
            var entry = Pin(lblk);
            try
            {
                await entry.Lock.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    await EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
            finally
            {
                Unpin(entry);
            }
        }
    }

    /// <summary>Loads an lblk from the backing store into its cache entry. Caller holds the entry's lock.</summary>
    private async ValueTask EnsureLoadedAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        if (entry.Loaded)
            return;
        LblkAlloc alloc;
        try
        {
            alloc = await _lbat.ReadAsync(entry.Lblk, cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidDataException e)
        {
            throw Damaged(entry.Lblk, $"invalid lblk_alloc entry ({WithoutLblk(e.Message)}); it reads as an I/O error until written whole or repaired (cbd check --repair)");
        }
        if (!alloc.IsAllocated)
        {
            entry.IsZero = true;
            entry.Loaded = true;
            return;
        }
        var format = _geometry.Alloc;
        int storedBytes = format.StoredBytes(alloc.Length);
        byte[] stored = _buffers.Rent();
        try
        {
            await _store.ReadPblksAsync(alloc.Pblks, stored, cancellationToken: cancellationToken).ConfigureAwait(false);
            var bytes = stored.AsSpan(0, storedBytes);
            if (_crc)
            {
                uint actual = Checksums.LblkCrc(entry.Lblk, bytes);
                if (actual != alloc.Crc)
                    throw Damaged(entry.Lblk, $"checksum mismatch (stored 0x{alloc.Crc:x8}, computed 0x{actual:x8}) in pblks {string.Join(',', alloc.Pblks)}");
            }
            byte[] data = _buffers.Rent();
            bool ok;
            if (alloc.Length == format.UncompressedLength)
            {
                bytes.CopyTo(data);
                ok = true;
            }
            else
            {
                var codec = Codec.ForReading(bytes[0]);
                ok = codec is not null && codec.TryDecompress(bytes[1..], data.AsSpan(0, _lblkSize));
            }
            if (!ok)
            {
                _buffers.Return(data);
                throw Damaged(entry.Lblk, $"stored bytes (algorithm id {bytes[0]}, {storedBytes} bytes) do not decompress to one {_lblkSize}-byte lblk");
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

    // ---- writes ----

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        while (!data.IsEmpty)
        {
            ulong lblk = (ulong)(offset / _lblkSize);
            int within = (int)(offset % _lblkSize);
            int n = Math.Min(data.Length, _lblkSize - within);
            await ModifyAsync(lblk, within, data[..n], zero: false, cancellationToken).ConfigureAwait(false);
            data = data[n..];
            offset += n;
        }
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
        while (length > 0)
        {
            ulong lblk = (ulong)(offset / _lblkSize);
            int within = (int)(offset % _lblkSize);
            int n = (int)Math.Min(length, _lblkSize - within);
            bool whole = n == _lblkSize;
            await ModifyAsync(lblk, within, ReadOnlyMemory<byte>.Empty, zero: whole && deallocate, cancellationToken, zeroLength: n).ConfigureAwait(false);
            offset += n;
            length -= n;
        }
        if (fua)
            await FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Applies one change inside one lblk: copy <paramref name="data"/> at <paramref name="within"/>, or
    /// with <paramref name="zero"/> make the whole lblk zero (deallocated at write-back).
    /// <paramref name="zeroLength"/>, when set, writes that many zero bytes instead of <paramref name="data"/>.
    /// </summary>
    private async ValueTask ModifyAsync(ulong lblk, int within, ReadOnlyMemory<byte> data, bool zero, CancellationToken cancellationToken, int zeroLength = -1)
    {
        await ThrottleAsync(cancellationToken).ConfigureAwait(false);
        int pblksPerLblk = _geometry.Alloc.PblksPerLblk;
        var entry = Pin(lblk);
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
                        int extra = PblksNeeded(entry) - entry.ReservedPblks;
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
                    if (!entry.Dirty)
                    {
                        entry.Dirty = true;
                        lock (_cacheLock)
                        {
                            if (_dirty.Count == 0)
                                _dirtySince = Stopwatch.GetTimestamp();
                            _dirty.Add(entry);
                        }
                    }
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
            Unpin(entry);
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
        ReleaseData(entry);
        entry.Loaded = wasLoaded;
        entry.IsZero = wasZero;
    }

    /// <summary>pblks write-back will need for the entry's contents as they are now. Caller holds the entry's lock.</summary>
    private int PblksNeeded(CachedLblk entry)
    {
        var format = _geometry.Alloc;
        if (entry.IsZero)
            return 0;
        var data = entry.Data.AsSpan(0, _lblkSize);
        if (_zeroDetect && !data.ContainsAnyExcept((byte)0))
            return 0;
        if (format.MaxCompressedLength < 2)
            return format.PblksPerLblk;
        byte[] scratch = _buffers.Rent();
        try
        {
            int compressed = _codec.Compress(data, scratch.AsSpan(1, format.MaxCompressedLength - 1));
            return compressed > 0 ? format.PblksFor((uint)(1 + compressed)) : format.PblksPerLblk;
        }
        finally
        {
            _buffers.Return(scratch);
        }
    }

    /// <summary>The synchronous part of a change: everything unless the lblk must first be read.</summary>
    private void Apply(CachedLblk entry, int within, ReadOnlySpan<byte> data, bool zero, int zeroLength)
    {
        int length = zeroLength >= 0 ? zeroLength : data.Length;
        if (zero)
        {
            ReleaseData(entry);
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
        await EnsureLoadedAsync(entry, cancellationToken).ConfigureAwait(false);
        Apply(entry, within, data.Span, zero: false, zeroLength);
    }

    private void ReleaseData(CachedLblk entry)
    {
        if (entry.Data is { } data)
        {
            entry.Data = null;
            _buffers.Return(data);
        }
    }

    /// <summary>Reserves <paramref name="count"/> pblks, writing back to make room when needed; 0 when there is no room even then.</summary>
    private async ValueTask<int> TryReserveAsync(int count, CancellationToken cancellationToken)
    {
        for (int attempt = 0; ; attempt++)
        {
            if (_alloc.TryReserve(count))
                return count;
            if (attempt >= 2)
            {
                // While the device backs the lblks allocated (SpacePromise), the space exists: only writes running
                // alongside can hold it, reserved or written back and not yet committed, and it comes free as
                // their checkpoints commit, so a write waits for them rather than fail. With none left, one more
                // try settles it. (Dirty lblks are not counted here: rewrites of allocated ones would count twice.)
                bool othersHoldSpace = _alloc.Reserved > 0 ||
                    Interlocked.Read(ref _checkpointsCompleted) != Interlocked.Read(ref _checkpointsStarted);
                if (!othersHoldSpace || !_space.Backs(Interlocked.Read(ref _lblksUsed)))
                    return _alloc.TryReserve(count) ? count : 0;
            }
            // Write-back releases reservations beyond what compression needed and frees replaced pblks.
            await CheckpointAsync(Interlocked.Read(ref _checkpointsStarted), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Holds a writer back while the cache is full of dirty lblks, until write-back makes room.</summary>
    private async ValueTask ThrottleAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            int dirty;
            Task checkpointDone;
            lock (_cacheLock)
            {
                dirty = _dirty.Count;
                checkpointDone = _checkpointDone.Task;
            }
            if (dirty >= _dirtyHigh)
                Kick();
            if (dirty < _dirtyMax)
                return;
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            await checkpointDone.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private void Kick()
    {
        try
        {
            if (_kick.CurrentCount == 0)
                _kick.Release();
        }
        catch (SemaphoreFullException)
        {
        }
    }

    // ---- flush and write-back ----

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (IsReadOnly)
            return;
        await CheckpointAsync(Interlocked.Read(ref _checkpointsStarted), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Writes back every dirty lblk and makes it durable. Skipped when a checkpoint numbered above
    /// <paramref name="coveredAfter"/> (so started after the caller's writes) has completed meanwhile.
    /// With <paramref name="waitForCommit"/> false it returns once the lblks are compressed and written,
    /// and the rest goes on behind while the next checkpoint compresses: its fsync and publication
    /// (<see cref="PublishAsync"/>), then its commit (<see cref="CommitAsync"/>). Each stage of a checkpoint
    /// waits for the same stage of the one before, so entries are published and committed in order.
    /// </summary>
    private async ValueTask CheckpointAsync(long coveredAfter, CancellationToken cancellationToken, bool waitForCommit = true)
    {
        Task commit;
        await _checkpointLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            if (Interlocked.Read(ref _checkpointsCompleted) > coveredAfter)
                return;
            // Nothing is allocated or freed before the pbats were checked against every lbat.
            if (!_claimsApplied.IsCompletedSuccessfully)
            {
                try
                {
                    await _claimsApplied.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    _failed ??= e;
                    throw;
                }
            }
            // One publication at most goes on behind this checkpoint's compression: a deeper pipeline would
            // only find the lblks still being written back by the checkpoints before.
            // Its failure, if any, is in _failed, which the stages below check.
            await _olderPublish.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            long number = Interlocked.Increment(ref _checkpointsStarted);
            var (batch, results) = await WriteBackDirtyAsync().ConfigureAwait(false);
            var publish = PublishAsync(_publish, batch, results);
            _olderPublish = _publish;
            _publish = publish;
            commit = CommitAsync(_commit, publish, number);
            _commit = commit;
        }
        finally
        {
            _checkpointLock.Release();
        }
        if (waitForCommit)
            await commit.ConfigureAwait(false);
    }

    private sealed record WrittenBack(CachedLblk Entry, long Version, LblkAlloc Alloc);

    /// <summary>
    /// Step 1 of the write-back order that keeps the image consistent at every instant: compress the dirty
    /// lblks and write them to free pblks. The batch stays pinned until <see cref="PublishAsync"/>. An lblk
    /// an earlier checkpoint is still writing back, unchanged since, is left to it.
    /// </summary>
    private async Task<(List<CachedLblk> Batch, WrittenBack?[] Results)> WriteBackDirtyAsync()
    {
        var batch = new List<CachedLblk>();
        lock (_cacheLock)
        {
            foreach (var entry in _dirty)
            {
                // Being written back at this very version by the checkpoint before: left to it, and not
                // pinned again, so that it can be evicted as soon as that checkpoint has published it.
                if (Volatile.Read(ref entry.WriteBackVersion) == Volatile.Read(ref entry.Version))
                    continue;
                entry.Pins++;
                batch.Add(entry);
            }
        }
        var results = new WrittenBack?[batch.Count];
        try
        {
            // Write-back runs to completion once started: cancelling half-way would strand reservations.
            await Parallel.ForAsync(0, batch.Count, new ParallelOptions { MaxDegreeOfParallelism = _parallelism },
                async (i, token) => results[i] = await WriteBackAsync(batch[i], token).ConfigureAwait(false)).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // The image on disk is still consistent (nothing live was overwritten), but what is in
            // memory may not be: stop taking writes rather than risk them.
            _failed ??= e;
            Unpin(batch);
            throw;
        }
        return (batch, results);
    }

    /// <summary>
    /// Steps 2 and 3, after the previous checkpoint's: fsync, so the data is durable before any entry points
    /// at it; then publish the new lblk_alloc entries in memory and mark the lblks clean. Returns the pblks
    /// the new entries replaced.
    /// </summary>
    private async Task<List<ulong>> PublishAsync(Task previous, List<CachedLblk> batch, WrittenBack?[] results)
    {
        var ct = CancellationToken.None;
        var freed = new List<ulong>();
        // A failure of the stage before is in _failed, checked next.
        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            if (batch.Count == 0)
                return freed;
            if (_options.Fault != CheckpointFault.PublishBeforeDataFsync)
                await _store.FlushAsync(ct).ConfigureAwait(false);

            foreach (var result in results)
            {
                if (result is null)
                    continue;
                LblkAlloc old;
                try
                {
                    old = await _lbat.ReadAsync(result.Entry.Lblk, ct).ConfigureAwait(false);
                }
                catch (InvalidDataException e)
                {
                    // The lblk was written whole over a damaged entry: the new entry repairs it. What the old
                    // one named is not freed, since those pblks may be another lblk's (they stay leaked).
                    old = LblkAlloc.Unallocated;
                    Log($"lblk {result.Entry.Lblk}: invalid lblk_alloc entry ({WithoutLblk(e.Message)}) replaced by the lblk's new contents; the pblks it named stay in use");
                }
                await _lbat.WriteAsync(result.Entry.Lblk, result.Alloc, ct).ConfigureAwait(false);
                freed.AddRange(old.Pblks);
                Interlocked.Add(ref _lblksUsed, (result.Alloc.IsAllocated ? 1 : 0) - (old.IsAllocated ? 1 : 0));
                Interlocked.Add(ref _pblksUsed, result.Alloc.Pblks.Length - old.Pblks.Length);
            }
            if (_options.Fault == CheckpointFault.PublishBeforeDataFsync)
                await _store.FlushAsync(ct).ConfigureAwait(false);
            // The entries are published in memory: an evicted lblk now reloads its new contents.
            foreach (var result in results)
            {
                if (result is null)
                    continue;
                var entry = result.Entry;
                await entry.Lock.WaitAsync(ct).ConfigureAwait(false);
                try
                {
                    if (entry.Version == result.Version)
                    {
                        entry.Dirty = false;
                        lock (_cacheLock)
                            _dirty.Remove(entry);
                    }
                }
                finally
                {
                    entry.Lock.Release();
                }
            }
            lock (_cacheLock)
            {
                if (_dirty.Count > 0)
                    _dirtySince = Stopwatch.GetTimestamp();
            }
            return freed;
        }
        catch (Exception e)
        {
            _failed ??= e;
            throw;
        }
        finally
        {
            Unpin(batch);
            EvictIfNeeded();
            // Writers held back by a full cache may go on now: the entries written back are clean.
            SignalCheckpointProgress();
        }
    }

    private void Unpin(List<CachedLblk> batch)
    {
        lock (_cacheLock)
        {
            foreach (var entry in batch)
                entry.Pins--;
        }
    }

    /// <summary>
    /// The last steps of checkpoint <paramref name="number"/>, after the one before it
    /// (<paramref name="previous"/>) and its own publication: 4. write the changed lbat pblks; 5. fsync;
    /// 6. only now free the replaced pblks, since until step 5 a power cut would bring the old entries
    /// back, and they must still find their data. Entries a later checkpoint publishes meanwhile may go
    /// out with these lbat pblks: their data was made durable before they were published.
    /// </summary>
    private async Task CommitAsync(Task previous, Task<List<ulong>> publish, long number)
    {
        var ct = CancellationToken.None;
        // A failure of either stage waited for is in _failed, checked next.
        await previous.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await ((Task)publish).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        try
        {
            if (_failed is { } failed)
                ThrowHelper.Failed(failed);
            var freed = publish.Result;
            if (_options.Fault == CheckpointFault.FreeBeforeCommitFsync)
            {
                await _alloc.FreeAsync(freed, ct).ConfigureAwait(false);
                freed = [];
            }
            if (_options.Fault == CheckpointFault.PunchBeforeCommitFsync)
                await _releaser.PunchAsync(freed, ct).ConfigureAwait(false);
            if (freed.Count > 0 || _lbat.HasDirty)
            {
                await _lbat.WriteDirtyAsync(ct).ConfigureAwait(false);
                await _store.FlushAsync(ct).ConfigureAwait(false);
                await _releaser.ReleaseAsync(freed, ct).ConfigureAwait(false);
            }
            Interlocked.Exchange(ref _checkpointsCompleted, number);
        }
        catch (Exception e)
        {
            _failed ??= e;
            throw;
        }
        finally
        {
            SignalCheckpointProgress();
        }
    }

    /// <summary>Compresses one dirty lblk and writes it to newly allocated pblks; null when it is no longer dirty.</summary>
    private async ValueTask<WrittenBack?> WriteBackAsync(CachedLblk entry, CancellationToken cancellationToken)
    {
        long version;
        int reserved;
        uint length;
        uint crc = 0;
        int storedBytes = 0;
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
            if (entry.IsZero || (_zeroDetect && !data.ContainsAnyExcept((byte)0)))
            {
                length = 0;
            }
            else
            {
                stored = _buffers.Rent();
                // A 4 KiB lblk can never save a pblk: it is always stored as it is.
                int compressed = format.MaxCompressedLength < 2 ? -1 : _codec.Compress(data, stored.AsSpan(1, format.MaxCompressedLength - 1));
                if (compressed > 0)
                {
                    stored[0] = (byte)_codec.Algorithm;
                    storedBytes = 1 + compressed;
                    length = (uint)storedBytes;
                }
                else
                {
                    data.CopyTo(stored);
                    storedBytes = _lblkSize;
                    length = format.UncompressedLength;
                }
                if (_crc)
                    crc = Checksums.LblkCrc(entry.Lblk, stored.AsSpan(0, storedBytes));
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
            stored.AsSpan(storedBytes, count * Layout.PblkSize - storedBytes).Clear();
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

    /// <summary>Wakes writers waiting in <see cref="ThrottleAsync"/> to look at the dirty count again.</summary>
    private void SignalCheckpointProgress()
    {
        TaskCompletionSource done;
        lock (_cacheLock)
        {
            done = _checkpointDone;
            _checkpointDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        done.TrySetResult();
    }

    private async Task WriteBackLoopAsync()
    {
        var token = _stop.Token;
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(_options.FlushDelay.TotalMilliseconds / 4, 10, 1000));
        bool again = false;
        while (!token.IsCancellationRequested)
        {
            try
            {
                if (!again)
                    await _kick.WaitAsync(tick, token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            bool due;
            lock (_cacheLock)
            {
                due = _dirty.Count >= _dirtyHigh ||
                      (_dirty.Count > 0 && Stopwatch.GetElapsedTime(_dirtySince) >= _options.FlushDelay);
            }
            again = false;
            if (!due)
                continue;
            try
            {
                // Publication and commit go on behind: the next checkpoint may compress meanwhile.
                await CheckpointAsync(Interlocked.Read(ref _checkpointsStarted), token, waitForCommit: false).ConfigureAwait(false);
                lock (_cacheLock)
                    again = _dirty.Count >= _dirtyHigh;
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception)
            {
                return; // _failed holds the cause; writes and flushes now report it
            }
        }
    }

    // ---- cache ----

    private CachedLblk Pin(ulong lblk)
    {
        CachedLblk? entry;
        bool added = false;
        lock (_cacheLock)
        {
            if (!_cache.TryGetValue(lblk, out entry))
            {
                entry = new CachedLblk(lblk);
                _cache.Add(lblk, entry);
                added = true;
            }
            entry.Pins++;
            entry.LastUse = ++_useClock;
        }
        if (added)
            EvictIfNeeded();
        return entry;
    }

    private void Unpin(CachedLblk entry)
    {
        lock (_cacheLock)
            entry.Pins--;
    }

    /// <summary>Drops the least recently used clean, unpinned entries while the cache is over budget.</summary>
    private void EvictIfNeeded()
    {
        List<CachedLblk>? victims = null;
        lock (_cacheLock)
        {
            int excess = _cache.Count - _maxCached;
            if (excess <= 0)
                return;
            excess += _maxCached / 8; // evict in batches, not one entry per miss
            victims = [.. _cache.Values.Where(e => e.Pins == 0 && !e.Dirty).OrderBy(e => e.LastUse).Take(excess)];
            foreach (var victim in victims)
                _cache.Remove(victim.Lblk);
        }
        // Unpinned and unlisted: nobody holds or can reach these entries any more.
        foreach (var victim in victims)
            ReleaseData(victim);
    }

    // ---- status ----

    /// <summary>
    /// True while every lblk holding data could be rewritten uncompressed (<see cref="SpacePromise"/>). An lblk
    /// holds data if it is allocated or dirty; publication counts it in <c>_lblksUsed</c> before it leaves
    /// <c>_dirty</c>, so under the cache lock every such lblk is counted at least once. A dirty lblk that was
    /// allocated already is counted twice: a burst of rewrites can withhold the promise until write-back, never
    /// give one too many.
    /// </summary>
    private bool IsBacked()
    {
        lock (_cacheLock)
            return _space.Backs(Interlocked.Read(ref _lblksUsed) + _dirty.Count);
    }

    public async ValueTask<IReadOnlyList<BlockExtent>> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        CheckRange(offset, length);
        var extents = new List<BlockExtent>();
        while (length > 0)
        {
            ulong lblk = (ulong)(offset / _lblkSize);
            int n = (int)Math.Min(length, _lblkSize - offset % _lblkSize);
            var (hole, zero) = await LblkStatusAsync(lblk, cancellationToken).ConfigureAwait(false);
            if (extents.Count > 0 && extents[^1].IsHole == hole && extents[^1].IsZero == zero)
                extents[^1] = extents[^1] with { Length = extents[^1].Length + n };
            else
                extents.Add(new BlockExtent(n, hole, zero));
            offset += n;
            length -= n;
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
        CachedLblk? entry;
        lock (_cacheLock)
        {
            if (_cache.TryGetValue(lblk, out entry))
                entry.Pins++;
        }
        if (entry is not null)
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
                Unpin(entry);
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
    /// Makes the allocator agree with the lbats' claims (see <see cref="Allocator.ApplyClaimsAsync"/>),
    /// names every lblk with an invalid entry in the log, and takes the stats from the lbats.
    /// </summary>
    private async ValueTask ApplyClaimsAsync(PblkClaims claims, bool rebuild, CancellationToken cancellationToken)
    {
        foreach (var (lblk, reason) in claims.Invalid)
            ReportDamaged(lblk, $"invalid lblk_alloc entry ({WithoutLblk(reason)}); it reads as an I/O error until written whole or repaired (cbd check --repair); the pblks it names stay in use");
        await _alloc.ApplyClaimsAsync(claims, rebuild, cancellationToken).ConfigureAwait(false);
        Interlocked.Exchange(ref _lblksUsed, claims.LblksUsed);
        Interlocked.Exchange(ref _pblksUsed, claims.PblksUsed);
    }

    /// <summary>The scan behind the open of a clean image: every lbat's claims against the pbats.</summary>
    private async Task AuditPbatsAsync()
    {
        var claims = await PblkClaims.ScanAsync(_geometry, _store, _scanStop.Token).ConfigureAwait(false);
        await ApplyClaimsAsync(claims, rebuild: false, _scanStop.Token).ConfigureAwait(false);
    }

    /// <summary>Names a damaged lblk in the log, once per session, and returns the error its reads get.</summary>
    private LblkCorruptException Damaged(ulong lblk, string message)
    {
        ReportDamaged(lblk, $"lblk {lblk}: {message}");
        return new LblkCorruptException((long)lblk, message);
    }

    private void ReportDamaged(ulong lblk, string line)
    {
        if (!_damaged.TryAdd(lblk, 0))
            return;
        int count = _damaged.Count;
        if (count <= MaxDamageLines)
            Log(line.StartsWith($"lblk {lblk}:", StringComparison.Ordinal) ? line : $"lblk {lblk}: {line}");
        else if (count == MaxDamageLines + 1)
            Log($"more than {MaxDamageLines} damaged lblks; no more are named (cbd check lists them all)");
    }

    /// <summary>A validation message without its leading "lblk N: ", for a line that names the lblk already.</summary>
    private static string WithoutLblk(string message)
    {
        int colon = message.IndexOf(": ", StringComparison.Ordinal);
        return message.StartsWith("lblk ", StringComparison.Ordinal) && colon > 0 ? message[(colon + 2)..] : message;
    }

    private void Log(string line)
    {
        try
        {
            _options.Log?.Invoke(line);
        }
        catch (Exception)
        {
            // A failing log must not turn damage to one lblk into a failure of the device.
        }
    }

    private async ValueTask WriteHeaderAsync(bool dirty, CancellationToken cancellationToken)
    {
        var flags = dirty ? Header.Flags | HeaderFlags.Dirty : Header.Flags & ~HeaderFlags.Dirty;
        var header = Header with
        {
            Flags = flags,
            LblkUsed = (ulong)Interlocked.Read(ref _lblksUsed),
            PblkUsed = (ulong)Interlocked.Read(ref _pblksUsed),
        };
        await header.WriteAsync(_store, cancellationToken).ConfigureAwait(false);
        Header = header;
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
                _stop.Cancel();
                if (_writeBackLoop is not null)
                    await _writeBackLoop.ConfigureAwait(false);
                if (_failed is null)
                {
                    await CheckpointAsync(Interlocked.Read(ref _checkpointsStarted), CancellationToken.None).ConfigureAwait(false);
                    await _commit.ConfigureAwait(false);
                    await _alloc.WriteDirtyAsync(CancellationToken.None).ConfigureAwait(false);
                    await _store.FlushAsync().ConfigureAwait(false);
                    await WriteHeaderAsync(dirty: false, CancellationToken.None).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            // A commit left running by write-back, or the scan behind open, must not outlive the store. A
            // commit's failure, if any, is in _failed and kept the image marked dirty.
            await _commit.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            _scanStop.Cancel();
            await _claimsApplied.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            lock (_cacheLock)
            {
                foreach (var entry in _cache.Values)
                    ReleaseData(entry);
                _cache.Clear();
                _dirty.Clear();
            }
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
        if (_failed is { } failed)
            ThrowHelper.Failed(failed);
    }
}
