using System.Buffers;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>Where the log's oldest needed record is: its position in the ring, its seq, and the least epoch it may have (docs/FORMAT.md, "Reading the log").</summary>
internal readonly record struct LogTail(long Position, ulong Seq, uint Epoch);

/// <summary>A record of the log not yet merged into its lblk: what <see cref="LblkIo"/> applies over the lblk's stored form.</summary>
internal readonly record struct PendingRecord(ulong Seq, long Position, LogRecordHeader Header);

/// <summary>
/// The write log (docs/FORMAT.md, "The write log"): a ring at the end of the device where changes smaller than an
/// lblk are appended as records instead of rewriting their lblk; the records not yet merged into their lblks
/// (by a checkpoint that wrote the lblk back with them applied); and the tail, the oldest record still needed,
/// which a commit advances and writes into the header.
/// </summary>
/// <remarks>
/// <para>
/// Sequence numbers: records are numbered in log order, and the log knows the first seq whose write (or an earlier
/// one's) has not completed; a checkpoint that writes back an lblk with records applied waits for
/// it to pass them before its data fsync (step 3), so a durable entry never includes a record the log could lose
/// and replay then cut short. A flush waits for it too.
/// </para>
/// <para>
/// Space: the ring holds the bytes from the durable tail (the header's) to the head; an append reserves its bytes
/// (and a pad's, at the wrap) before its entry's lock and waits while the ring is full, which <see cref="Room"/>
/// signals the merger about.
/// </para>
/// <para>Locks: <c>_lock</c> is a leaf, never held across an await.</para>
/// </remarks>
internal sealed class WriteLog
{
    private readonly IBackingStore _store;
    private readonly Geometry _geometry;
    private readonly long _start;
    private readonly long _bytes;
    private readonly ulong _logId;
    private readonly int _lblkSize;
    private readonly object _lock = new();

    // Guarded by _lock.
    private long _head;
    private ulong _nextSeq;
    private long _used;
    private long _reserved;
    private readonly SortedSet<ulong> _inFlight = new();
    private ulong _completedBefore;
    private readonly List<(ulong Before, TaskCompletionSource Done)> _completionWaiters = new();
    private readonly Dictionary<ulong, List<PendingRecord>> _pending = new();
    private readonly Dictionary<ulong, ulong> _lastSeq = new();
    /// <summary>Every record from the in-memory tail on, in seq order, with its end and lblk (<see cref="NoLblk"/> for a pad).</summary>
    private readonly Queue<(ulong Seq, long End, int Bytes, uint Epoch, ulong Lblk)> _records = new();

    private const ulong NoLblk = ulong.MaxValue;
    private readonly HashSet<ulong> _retired = new();
    private long _memoryTail;
    private ulong _memoryTailSeq;
    private long _durableTail;
    private ulong _durableTailSeq;
    private uint _durableTailEpoch;
    private TaskCompletionSource _room = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _waitingForRoom;
    private volatile Exception? _failed;
    private readonly SemaphoreSlim _tailWrite = new(1, 1);
    private ulong _durableBefore;

    private WriteLog(IBackingStore store, Geometry geometry, uint epoch)
    {
        _store = store;
        _geometry = geometry;
        _start = geometry.LogStartByte;
        _bytes = geometry.LogBytes;
        _logId = geometry.Header.LogId;
        _lblkSize = geometry.LblkSize;
        Epoch = epoch;
        _head = _memoryTail = _durableTail = (long)geometry.Header.LogTail;
        _nextSeq = _completedBefore = _memoryTailSeq = _durableTailSeq = _durableBefore = geometry.Header.LogSeq;
        _durableTailEpoch = geometry.Header.LogTailEpoch;
    }

    /// <summary>The session number this device writes records under.</summary>
    public uint Epoch { get; }

    /// <summary>Bytes of the ring.</summary>
    public long Bytes => _bytes;

    /// <summary>The tail as last written to the header, for the header writes of open and close.</summary>
    public LogTail DurableTail
    {
        get
        {
            lock (_lock)
                return new LogTail(_durableTail, _durableTailSeq, _durableTailEpoch);
        }
    }

    public ulong NextSeq
    {
        get
        {
            lock (_lock)
                return _nextSeq;
        }
    }

    /// <summary>Bytes from the durable tail to the head.</summary>
    public long Used
    {
        get
        {
            lock (_lock)
                return _used;
        }
    }

    /// <summary>lblks with records not yet merged.</summary>
    public int PendingLblks
    {
        get
        {
            lock (_lock)
                return _pending.Count;
        }
    }

    public Exception? Failed => _failed;

    /// <summary>Set by an append or tail write that failed: the log may have a hole, so no later record may be written.</summary>
    public void ThrowIfFailed()
    {
        if (_failed is { } failed)
            ThrowHelper.Failed(failed);
    }

    /// <summary>Completes when the ring gains room or the log fails. Take it before looking at what it changes.</summary>
    public Task Room
    {
        get
        {
            lock (_lock)
                return _room.Task;
        }
    }

    /// <summary>
    /// The log of an image being opened: every record from the header's tail to the end of the log (<see cref="LogReader"/>)
    /// becomes pending on its lblk. <paramref name="epoch"/> is the session's number (the header's, plus one when open for write).
    /// </summary>
    public static async ValueTask<WriteLog> OpenAsync(IBackingStore store, Geometry geometry, uint epoch, CancellationToken cancellationToken)
    {
        var log = new WriteLog(store, geometry, epoch);
        var end = await LogReader.ScanAsync(store, geometry, record =>
        {
            log.AddReplayed(record.Header, record.Position);
            return ValueTask.CompletedTask;
        }, cancellationToken).ConfigureAwait(false);
        lock (log._lock)
        {
            log._head = end.Position;
            log._nextSeq = log._completedBefore = log._durableBefore = end.Seq;
            log._used = end.Bytes;
            log.AdvanceMemoryTail();
        }
        return log;
    }

    private void AddReplayed(LogRecordHeader header, long position)
    {
        lock (_lock)
        {
            long end = position + header.Bytes;
            _records.Enqueue((header.Seq, end, header.Bytes, header.Epoch, header.Kind == LogRecordKind.Pad ? NoLblk : header.Lblk));
            if (header.Kind == LogRecordKind.Pad)
                _retired.Add(header.Seq);
            else
                _ = AddPending(new PendingRecord(header.Seq, position, header));
        }
    }

    // ---- appends ----

    /// <summary>
    /// Reserves room for a record of <paramref name="recordBytes"/> and the pad it may need at the wrap, waiting while the
    /// ring is full; <paramref name="makeRoom"/> is asked to merge each time it has to wait. Call before the entry's lock.
    /// </summary>
    public async ValueTask<int> ReserveAsync(int recordBytes, Action makeRoom, Func<Exception?> failed, CancellationToken cancellationToken)
    {
        int bytes = 2 * recordBytes;
        while (true)
        {
            Task room;
            lock (_lock)
            {
                ThrowIfFailed();
                if (_bytes - _used - _reserved >= bytes)
                {
                    _reserved += bytes;
                    return bytes;
                }
                room = _room.Task;
            }
            if (failed() is { } e)
            {
                if (e is OutOfSpaceException)
                    throw new OutOfSpaceException($"no space left: the write log is full, and its records cannot be merged for want of space ({e.Message})");
                ThrowHelper.Failed(e);
            }
            // Counted before asking, so that the round the request starts already sees a writer waiting.
            Interlocked.Increment(ref _waitingForRoom);
            try
            {
                makeRoom();
                await room.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _waitingForRoom);
            }
        }
    }

    /// <summary>Writers waiting in <see cref="ReserveAsync"/> for room.</summary>
    public bool WritersWaiting => Volatile.Read(ref _waitingForRoom) > 0;

    /// <summary>Gives back a reservation not used.</summary>
    public void Unreserve(int bytes)
    {
        lock (_lock)
            _reserved -= bytes;
    }

    /// <summary>
    /// Appends a record already encoded in <paramref name="record"/> (its payload in place): numbers it, writes it (after a
    /// pad when it does not fit before the end of the ring), and returns it once written. Call under the lblk's entry lock,
    /// with a reservation from <see cref="ReserveAsync"/>, which this consumes. The caller then <see cref="AddPending"/>s it.
    /// </summary>
    public async ValueTask<PendingRecord> AppendAsync(byte[] record, LogRecordHeader header, int reservation, CancellationToken cancellationToken)
    {
        int bytes = header.Bytes;
        long position, padPosition = -1;
        ulong seq, padSeq = 0;
        byte[]? pad = null;
        lock (_lock)
        {
            ThrowIfFailed();
            _reserved -= reservation;
            if (_head + bytes > _bytes)
            {
                padPosition = _head;
                padSeq = _nextSeq++;
                int padBytes = (int)(_bytes - _head);
                _inFlight.Add(padSeq);
                _records.Enqueue((padSeq, _bytes, padBytes, Epoch, NoLblk));
                _retired.Add(padSeq);
                _used += padBytes;
                _head = 0;
                pad = ArrayPool<byte>.Shared.Rent(Layout.SectorSize);
                LogRecord.Seal(pad, LogRecord.Pad(_logId, padBytes) with { Seq = padSeq, Epoch = Epoch });
            }
            position = _head;
            seq = _nextSeq++;
            _inFlight.Add(seq);
            _head += bytes;
            _used += bytes;
            _records.Enqueue((seq, _head, bytes, Epoch, header.Lblk));
            if (_head == _bytes)
                _head = 0;
        }
        header = header with { Seq = seq, Epoch = Epoch, LogId = _logId };
        LogRecord.Seal(record, header);
        try
        {
            // Cancellation would leave a hole in the log: once numbered, a record is written.
            var write = _store.WriteAsync(_start + position, record.AsMemory(0, bytes), CancellationToken.None);
            if (pad is not null)
                await _store.WriteAsync(_start + padPosition, pad.AsMemory(0, Layout.SectorSize), CancellationToken.None).ConfigureAwait(false);
            await write.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Fail(e);
            throw;
        }
        finally
        {
            if (pad is not null)
                ArrayPool<byte>.Shared.Return(pad);
        }
        lock (_lock)
        {
            if (pad is not null)
                _inFlight.Remove(padSeq);
            _inFlight.Remove(seq);
            AdvanceCompleted();
        }
        return new PendingRecord(seq, position, header);
    }

    /// <summary>Makes a record pending on its lblk: applied over the lblk's stored form until a checkpoint merges it. Returns how many the lblk now has.</summary>
    public int AddPending(PendingRecord record)
    {
        lock (_lock)
        {
            ulong lblk = record.Header.Lblk;
            if (!_pending.TryGetValue(lblk, out var list))
                _pending[lblk] = list = new List<PendingRecord>();
            // A record over the whole lblk makes every older one irrelevant to what the lblk reads; they stay in the
            // ring (replay applies them before it) and are retired with it.
            list.Add(record);
            _lastSeq[lblk] = record.Seq;
            return list.Count;
        }
    }

    private void AdvanceCompleted()
    {
        _completedBefore = _inFlight.Count == 0 ? _nextSeq : _inFlight.Min;
        for (int i = _completionWaiters.Count - 1; i >= 0; i--)
        {
            if (_completionWaiters[i].Before <= _completedBefore)
            {
                _completionWaiters[i].Done.TrySetResult();
                _completionWaiters.RemoveAt(i);
            }
        }
    }

    /// <summary>Waits until every record numbered below <paramref name="before"/> is written (or the log failed).</summary>
    public Task WaitCompletedAsync(ulong before)
    {
        lock (_lock)
        {
            if (_completedBefore >= before || _failed is not null)
                return Task.CompletedTask;
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _completionWaiters.Add((before, done));
            return done.Task;
        }
    }

    /// <summary>A flush: every record written before it made durable (one fsync, skipped when nothing was appended since the last).</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        ulong end = NextSeq;
        await WaitCompletedAsync(end).WaitAsync(cancellationToken).ConfigureAwait(false);
        ThrowIfFailed();
        lock (_lock)
        {
            if (_durableBefore >= end)
                return;
        }
        await _store.FlushAsync(cancellationToken).ConfigureAwait(false);
        lock (_lock)
            _durableBefore = Math.Max(_durableBefore, end);
    }

    // ---- the pending records of an lblk ----

    /// <summary>True while the lblk has records that a replay could apply: older than nothing the header's tail has passed.</summary>
    public bool IsLive(ulong lblk)
    {
        lock (_lock)
            return _lastSeq.TryGetValue(lblk, out ulong last) && last >= _durableTailSeq;
    }

    public bool HasPending(ulong lblk)
    {
        lock (_lock)
            return _pending.ContainsKey(lblk);
    }

    /// <summary>The lblk's pending records in log order, from its last whole-lblk record on (none before matter), into <paramref name="into"/>.</summary>
    public void GetPending(ulong lblk, List<PendingRecord> into)
    {
        lock (_lock)
        {
            if (!_pending.TryGetValue(lblk, out var list))
                return;
            int from = list.FindLastIndex(r => r.Header.IsWhole(_lblkSize));
            for (int i = Math.Max(0, from); i < list.Count; i++)
                into.Add(list[i]);
        }
    }

    /// <summary>The seq after the lblk's last pending record: an lblk loaded now has every record before it applied.</summary>
    public ulong AppliedBefore(ulong lblk)
    {
        lock (_lock)
            return _pending.TryGetValue(lblk, out var list) ? list[^1].Seq + 1 : 0;
    }

    /// <summary>
    /// After a checkpoint published the lblk with every record below <paramref name="before"/> applied: those are no longer
    /// pending, and are added to <paramref name="merged"/>, to be retired once the entry is durable (<see cref="RetireAsync"/>).
    /// </summary>
    public void TakeMerged(ulong lblk, ulong before, List<ulong> merged)
    {
        lock (_lock)
        {
            if (!_pending.TryGetValue(lblk, out var list))
                return;
            int count = 0;
            while (count < list.Count && list[count].Seq < before)
            {
                merged.Add(list[count].Seq);
                count++;
            }
            list.RemoveRange(0, count);
            if (list.Count == 0)
                _pending.Remove(lblk);
        }
    }

    /// <summary>
    /// The lblks whose records are oldest, up to <paramref name="max"/> lblks, with the seq of each one's oldest pending
    /// record, for the merger: merging them moves the tail. An lblk whose oldest pending record is the one
    /// <paramref name="merging"/> gives for it is left out: a merge of it waits for its checkpoint's publication.
    /// </summary>
    public List<(ulong Lblk, ulong Seq)> OldestLblks(int max, IReadOnlyDictionary<ulong, ulong>? merging = null)
    {
        var oldest = new List<(ulong Lblk, ulong Seq)>();
        lock (_lock)
        {
            // The records are in seq order from the tail on, so an lblk's oldest pending record comes up before any other
            // lblk's younger one: the walk stops after max lblks, where sorting every pending lblk cost a round 3 % of the CPU.
            foreach (var (seq, _, _, _, lblk) in _records)
            {
                if (oldest.Count >= max)
                    break;
                if (_pending.TryGetValue(lblk, out var list) && list[0].Seq == seq && !AwaitsPublication(merging, lblk, list))
                    oldest.Add((lblk, seq));
            }
        }
        return oldest;
    }

    /// <summary>lblks with at least <paramref name="min"/> pending records, up to <paramref name="max"/> of them, left out as by <see cref="OldestLblks"/>.</summary>
    public List<(ulong Lblk, ulong Seq)> LblksWithRecords(int min, int max, IReadOnlyDictionary<ulong, ulong>? merging = null)
    {
        var lblks = new List<(ulong, ulong)>();
        lock (_lock)
        {
            foreach (var (lblk, list) in _pending)
            {
                if (lblks.Count >= max)
                    break;
                if (list.Count >= min && !AwaitsPublication(merging, lblk, list))
                    lblks.Add((lblk, list[0].Seq));
            }
        }
        return lblks;
    }

    /// <summary>True when <paramref name="merging"/> gives the lblk's oldest pending record: its merge is not published yet.</summary>
    private static bool AwaitsPublication(IReadOnlyDictionary<ulong, ulong>? merging, ulong lblk, List<PendingRecord> list) =>
        merging is not null && merging.TryGetValue(lblk, out ulong seq) && seq == list[0].Seq;

    /// <summary>The seq of the lblk's oldest pending record; null when it has none.</summary>
    public ulong? OldestPending(ulong lblk)
    {
        lock (_lock)
            return _pending.TryGetValue(lblk, out var list) ? list[0].Seq : null;
    }

    // ---- the tail ----

    /// <summary>
    /// After a commit made the entries that merged <paramref name="merged"/> durable (step 5): the records are retired, the
    /// tail moves past every retired record at its front, and a moved tail is written to the header and made durable, so
    /// that its ring space can be written again. <paramref name="writeTail"/> writes the header with the tail given.
    /// </summary>
    public async ValueTask RetireAsync(List<ulong> merged, Func<LogTail, CancellationToken, ValueTask> writeTail, CancellationToken cancellationToken)
    {
        LogTail tail;
        lock (_lock)
        {
            foreach (ulong seq in merged)
                _retired.Add(seq);
            AdvanceMemoryTail();
            if (_memoryTailSeq == _durableTailSeq)
                return;
            // The record now at the tail, or at the head none yet: this session's records are the least that may follow.
            uint epoch = _records.Count > 0 ? _records.Peek().Epoch : Epoch;
            tail = new LogTail(_memoryTail, _memoryTailSeq, epoch);
        }
        ulong tailSeq = tail.Seq;
        await _tailWrite.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            lock (_lock)
            {
                if (tailSeq <= _durableTailSeq)
                    return;
            }
            try
            {
                await writeTail(tail, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                Fail(e);
                throw;
            }
            lock (_lock)
            {
                _used -= GiveBackPassed(tailSeq);
                (_durableTail, _durableTailSeq, _durableTailEpoch) = (tail.Position, tail.Seq, tail.Epoch);
                PruneLastSeq();
                SignalRoom();
            }
        }
        finally
        {
            _tailWrite.Release();
        }
    }

    /// <summary>Records the in-memory tail has passed whose ring space the durable tail has not yet given back.</summary>
    private readonly Queue<(ulong Seq, int Bytes)> _passed = new();

    /// <summary>The ring bytes of the passed records below <paramref name="tailSeq"/>, now that the header's tail is past them.</summary>
    private long GiveBackPassed(ulong tailSeq)
    {
        long bytes = 0;
        while (_passed.Count > 0 && _passed.Peek().Seq < tailSeq)
            bytes += _passed.Dequeue().Bytes;
        return bytes;
    }

    private void AdvanceMemoryTail()
    {
        while (_records.Count > 0 && _retired.Remove(_records.Peek().Seq))
        {
            var (seq, end, bytes, _, _) = _records.Dequeue();
            _passed.Enqueue((seq, bytes));
            _memoryTail = end == _bytes ? 0 : end;
            _memoryTailSeq = seq + 1;
        }
    }

    private void PruneLastSeq()
    {
        if (_lastSeq.Count <= 2 * _pending.Count + 1024)
            return;
        List<ulong>? dead = null;
        foreach (var (lblk, last) in _lastSeq)
        {
            if (last < _durableTailSeq)
                (dead ??= new()).Add(lblk);
        }
        if (dead is not null)
        {
            foreach (ulong lblk in dead)
                _lastSeq.Remove(lblk);
        }
    }

    private void SignalRoom() => Interlocked.Exchange(ref _room, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

    /// <summary>Wakes writers waiting for room to look again (a merge that could not make progress, a failure).</summary>
    public void WakeWaiters()
    {
        lock (_lock)
            SignalRoom();
    }

    private void Fail(Exception e)
    {
        lock (_lock)
        {
            _failed ??= e;
            foreach (var (_, done) in _completionWaiters)
                done.TrySetResult();
            _completionWaiters.Clear();
            SignalRoom();
        }
    }

    // ---- reading records back ----

    /// <summary>
    /// Reads a pending record back from the ring into the start of <paramref name="buffer"/> (at least the record's
    /// <see cref="LogRecordHeader.Bytes"/>) and checks it is still the record that was appended; false when it is not
    /// (damage since).
    /// </summary>
    public async ValueTask<bool> ReadAsync(PendingRecord record, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int bytes = record.Header.Bytes;
        await _store.ReadAsync(_start + record.Position, buffer[..bytes], cancellationToken).ConfigureAwait(false);
        var fault = LogRecord.TryReadHeader(buffer.Span[..Layout.SectorSize], _logId, record.Seq, record.Header.Epoch, _lblkSize, _geometry.NrLblks,
            _bytes - record.Position, out var header);
        return fault == LogRecordFault.None && header == record.Header && LogRecord.Verify(buffer.Span[..bytes], header);
    }
}
