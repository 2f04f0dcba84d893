using System.Buffers;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>What repair does with an lblk_alloc entry that the scan found fault with.</summary>
internal enum EntryAction
{
    /// <summary>Valid by itself; listed only because one of its pblks is contested.</summary>
    Keep,

    /// <summary>Holds no data (past the logical end, or length 0 with stray fields): rewrite as zeros, nothing is lost.</summary>
    Zero,

    /// <summary>Cannot be trusted (bad length or pblk numbers): clear it; the lblk is lost.</summary>
    Clear,

    /// <summary>Valid pblks but non-zero unused slots: keep it, slots zeroed, only if its data verifies.</summary>
    Salvage,
}

internal sealed class EntryIssue(ulong lblk, EntryAction action, LblkAlloc alloc)
{
    public ulong Lblk { get; } = lblk;
    public EntryAction Action { get; } = action;

    /// <summary>The decoded entry for Keep and Salvage (its pblks claimed); unallocated otherwise.</summary>
    public LblkAlloc Alloc { get; } = alloc;

    /// <summary>Shares a pblk with another lblk.</summary>
    public bool Contested { get; set; }
}

internal sealed record DataFailure(CheckProblemKind Kind, string Message, LblkAlloc Alloc);

internal sealed record ScanOptions
{
    public bool Data { get; init; }
    public int MaxProblems { get; init; } = 10_000;
    public int Parallelism { get; init; } = 8;

    /// <summary>Called, in lblk order, for every entry whose pblks are valid data pblks.</summary>
    public Action<ulong, LblkAlloc>? OnValidEntry { get; init; }
}

/// <summary>
/// One read-only pass over a closed image: header, every lblk_alloc entry, every pbat, and optionally
/// every stored lblk. The checker reports from it; repair and resize decide from it.
/// </summary>
/// <remarks>
/// The truth is the lbats: <see cref="Claims"/> is built from the entries whose pblks are valid, the
/// way open rebuilds the pbats after an unclean close, and the on-disk pbats are compared with it.
/// A pblk that two valid entries name is claimed once and listed in <see cref="Claimants"/>.
/// </remarks>
internal sealed class ImageScan
{
    private readonly IBackingStore _store;
    private readonly ScanOptions _options;
    private readonly List<CheckProblem> _problems = [];
    private readonly Lock _lock = new();
    private long _omitted;

    private ImageScan(IBackingStore store, ScanOptions options)
    {
        _store = store;
        _options = options;
        StoreLength = store.Length;
    }

    public Header? Header { get; private set; }
    public Geometry? Geometry { get; private set; }
    public long StoreLength { get; }

    /// <summary>Bytes the header says the store holds; more than <see cref="StoreLength"/> for a truncated store.</summary>
    public long ExpectedLength { get; private set; }
    public bool Truncated => StoreLength < ExpectedLength;
    public bool IsClean => Header is not null && !Header.Flags.HasFlag(HeaderFlags.Dirty);

    /// <summary>Per zone, the data pblks valid entries refer to.</summary>
    public Pbat[] Claims { get; private set; } = [];
    public long LblksUsed { get; private set; }
    public long PblksUsed => Claims.Sum(p => (long)(p.DataPblks - p.Free));
    public Dictionary<ulong, EntryIssue> Issues { get; } = [];

    /// <summary>Pblks claimed by more than one lblk, and by whom, in lblk order.</summary>
    public Dictionary<ulong, List<ulong>> Claimants { get; } = [];

    /// <summary>Stored lblks that failed verification.</summary>
    public Dictionary<ulong, DataFailure> DataFailures { get; } = [];
    public bool DataChecked { get; private set; }

    /// <summary>Zones whose pbat or lbat lies past the end of a truncated store: their entries are gone.</summary>
    public List<uint> ZonesCut { get; } = [];

    /// <summary>What the write log holds; null without one.</summary>
    public LogSummary? Log { get; private set; }

    public IReadOnlyList<CheckProblem> Problems => _problems;
    public long ProblemsOmitted => _omitted;

    public static async Task<ImageScan> RunAsync(IBackingStore store, ScanOptions options, IProgress<double>? progress, CancellationToken cancellationToken)
    {
        var scan = new ImageScan(store, options);
        if (await scan.ReadHeaderAsync(cancellationToken).ConfigureAwait(false))
            await scan.ScanAsync(progress, cancellationToken).ConfigureAwait(false);
        progress?.Report(1.0);
        return scan;
    }

    public CheckReport ToReport() => new()
    {
        Header = Header,
        Geometry = Geometry,
        Problems = [.. _problems],
        ProblemsOmitted = _omitted,
        IsClean = IsClean,
        DataChecked = DataChecked,
        LblksUsed = LblksUsed,
        PblksUsed = Geometry is null ? 0 : PblksUsed,
        PblksTotal = Geometry is null ? 0 : (long)Geometry.TotalDataPblks,
        ZonePblksUsed = [.. Claims.Select(p => p.DataPblks - p.Free)],
        Log = Log,
    };

    private void Report(CheckProblemKind kind, string message, ulong? lblk = null, uint? zone = null, ulong? pblk = null,
        CheckSeverity severity = CheckSeverity.Error)
    {
        lock (_lock)
        {
            if (_problems.Count >= _options.MaxProblems)
                _omitted++;
            else
                _problems.Add(new CheckProblem(kind, severity, message) { Lblk = lblk, Zone = zone, Pblk = pblk });
        }
    }

    private async ValueTask<bool> ReadHeaderAsync(CancellationToken cancellationToken)
    {
        if (StoreLength < Layout.HeaderSize)
        {
            Report(CheckProblemKind.StoreTooShort, $"backing store: {StoreLength} bytes, shorter than the {Layout.HeaderSize}-byte header");
            return false;
        }
        byte[] page = new byte[Layout.HeaderSize];
        await _store.ReadAsync(0, page, cancellationToken).ConfigureAwait(false);
        Header header;
        try
        {
            if (!Header.TryRead(page, out header))
            {
                Report(CheckProblemKind.NotCbdImage, $"magic: {Convert.ToHexString(page, 0, 4)}, expected {Convert.ToHexString(Header.Magic)} (not a cbd image)");
                return false;
            }
        }
        catch (InvalidDataException e)
        {
            // Nothing past a bad header is trusted: its sizes would only be guesses.
            Report(CheckProblemKind.HeaderCorrupt, e.Message);
            return false;
        }
        Header = header;
        ExpectedLength = header.NrPhysicalSectors <= long.MaxValue / Layout.SectorSize
            ? (long)header.NrPhysicalSectors * Layout.SectorSize
            : long.MaxValue;
        try
        {
            // A truncated store is checked against the size the header gives, reading zeros past its end.
            Geometry = Geometry.FromHeader(header, Math.Max(StoreLength, ExpectedLength));
        }
        catch (InvalidDataException e)
        {
            Report(CheckProblemKind.GeometryInvalid, e.Message);
            return false;
        }
        if (Truncated)
        {
            Report(CheckProblemKind.StoreTruncated,
                $"backing store: {StoreLength} bytes, but nr_physical_sectors {header.NrPhysicalSectors} needs {ExpectedLength}; data and metadata past the end are lost");
        }
        return true;
    }

    private async Task ScanAsync(IProgress<double>? progress, CancellationToken cancellationToken)
    {
        var g = Geometry!;
        Claims = new Pbat[g.NrZones];
        for (uint zone = 0; zone < g.NrZones; zone++)
            Claims[zone] = new Pbat(g.DataPblks(zone));
        DataChecked = _options.Data;

        var contested = new HashSet<ulong>();
        await ScanEntriesAsync(firstPass: true, contested, progress, cancellationToken).ConfigureAwait(false);
        if (contested.Count > 0)
        {
            // Only now are all claimants known: the first one of each pblk was seen before the clash.
            foreach (ulong pblk in contested)
                Claimants[pblk] = [];
            await ScanEntriesAsync(firstPass: false, contested, null, cancellationToken).ConfigureAwait(false);
            foreach (var (pblk, lblks) in Claimants.OrderBy(c => c.Key))
            {
                g.TryLocateDataPblk(pblk, out uint zone, out _);
                Report(CheckProblemKind.PblkClaimedTwice, $"pblk {pblk} is claimed by lblks {string.Join(", ", lblks)}",
                    lblk: lblks[0], zone: zone, pblk: pblk);
            }
        }
        await ComparePbatsAsync(cancellationToken).ConfigureAwait(false);
        CompareStats();
        await ScanLogAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Reports what the write log holds, as information: records are what the next open replays, and the scan's end (a
    /// torn append after a crash included) is where any reader stops too, so nothing there is damage.
    /// </summary>
    private async Task ScanLogAsync(CancellationToken cancellationToken)
    {
        var g = Geometry!;
        Log = await LogSummary.ReadAsync(_store, g, cancellationToken).ConfigureAwait(false);
        if (Log is not { Records: > 0 } log)
            return;
        string held = $"the write log holds {log.Records} records for {log.Lblks} lblks ({log.End.Bytes} bytes from tail {log.Tail}, seq {log.Seq}; " +
            $"the scan ended at offset {log.End.Position}: {LogSummary.DescribeEnd(log.End.Stop)})";
        Report(CheckProblemKind.LogRecords, IsClean
            ? $"{held}; a close that lacked the space to merge them left them, and they are merged into their lblks when the image is next served"
            : $"{held}; the next open replays them into their lblks",
            pblk: g.ZonesEnd, severity: CheckSeverity.Info);
    }

    private async Task ScanEntriesAsync(bool firstPass, HashSet<ulong> contested, IProgress<double>? progress, CancellationToken cancellationToken)
    {
        var g = Geometry!;
        var toVerify = new List<(ulong Lblk, LblkAlloc Alloc)>();
        for (uint zone = 0; zone < g.NrZones; zone++)
        {
            if (firstPass && (long)g.DataStart(zone) * Layout.PblkSize > StoreLength)
            {
                ZonesCut.Add(zone);
                ulong from = (ulong)zone * g.LblkPerZone;
                Report(CheckProblemKind.MetadataPastStoreEnd,
                    $"zone {zone}: its pbat and lbat (pblks {g.ZoneStart(zone)}..{g.DataStart(zone) - 1}) lie (partly) past the end of the store; what they held for lblks {from}..{from + g.LblkPerZone - 1} is lost",
                    zone: zone, pblk: g.ZoneStart(zone));
            }
            // The lbat is read in bounded chunks: one zone's may be gigabytes (a logical size far above the physical one).
            await LbatReader.ForEachEntryAsync(_store, g, zone, (lblk, slots, length, crc) =>
            {
                var state = Classify(lblk, slots, length, crc, report: firstPass, out var pblks);
                if (state is EntryState.Empty)
                    return;
                if (!firstPass)
                {
                    if (state is EntryState.Valid or EntryState.ValidJunkSlots)
                        NoteClaimants(lblk, new LblkAlloc(length, crc, pblks), contested);
                    return;
                }
                switch (state)
                {
                    case EntryState.Zero:
                        Issues[lblk] = new EntryIssue(lblk, EntryAction.Zero, LblkAlloc.Unallocated);
                        break;
                    case EntryState.Invalid:
                        Issues[lblk] = new EntryIssue(lblk, EntryAction.Clear, LblkAlloc.Unallocated);
                        break;
                    default:
                        var alloc = new LblkAlloc(length, crc, pblks);
                        LblksUsed++;
                        foreach (ulong pblk in pblks)
                        {
                            g.TryLocateDataPblk(pblk, out uint z, out int bit);
                            if (Claims[z].IsSet(bit))
                                contested.Add(pblk);
                            else
                                Claims[z].Set(bit);
                        }
                        if (state is EntryState.ValidJunkSlots)
                            Issues[lblk] = new EntryIssue(lblk, EntryAction.Salvage, alloc);
                        _options.OnValidEntry?.Invoke(lblk, alloc);
                        if (_options.Data)
                            toVerify.Add((lblk, alloc));
                        break;
                }
            }, cancellationToken).ConfigureAwait(false);
            if (toVerify.Count > 0)
            {
                await VerifyManyAsync(toVerify, cancellationToken).ConfigureAwait(false);
                toVerify.Clear();
            }
            progress?.Report((zone + 1.0) / g.NrZones);
        }
    }

    private void NoteClaimants(ulong lblk, LblkAlloc alloc, HashSet<ulong> contested)
    {
        bool any = false;
        foreach (ulong pblk in alloc.Pblks)
        {
            if (contested.Contains(pblk))
            {
                Claimants[pblk].Add(lblk);
                any = true;
            }
        }
        if (!any)
            return;
        if (!Issues.TryGetValue(lblk, out var issue))
            Issues[lblk] = issue = new EntryIssue(lblk, EntryAction.Keep, alloc);
        issue.Contested = true;
    }

    private enum EntryState
    {
        Empty,
        Zero,
        Invalid,
        Valid,
        ValidJunkSlots,
    }

    /// <summary>Judges one entry's raw fields; reports each fault when <paramref name="report"/> is set.</summary>
    private EntryState Classify(ulong lblk, ReadOnlySpan<ulong> slots, uint length, uint crc, bool report, out ulong[] pblks)
    {
        var g = Geometry!;
        var format = g.Alloc;
        pblks = [];
        if (length == 0 && crc == 0 && !slots.ContainsAnyExcept(0UL))
            return EntryState.Empty;
        if (lblk >= g.NrLblks)
        {
            if (report)
                Report(CheckProblemKind.EntryPastLogicalEnd, $"lblk {lblk}: lblk_alloc entry past the logical end ({g.NrLblks} lblks) is not zero", lblk: lblk, zone: g.HomeZone(lblk));
            return EntryState.Zero;
        }
        // The entry's own rules are LblkAlloc's; the scan adds what only it can see (a store cut short) and,
        // unlike a reader, goes on past the first fault to report each kind once.
        LblkAlloc.TryValidate(g, length, crc, slots, out _, out var error);
        if (error.Fault == LblkAllocFault.UnallocatedNotZero)
        {
            if (report)
                Report(CheckProblemKind.UnallocatedEntryNotZero, $"lblk {lblk}: unallocated entry (length 0) has non-zero pblk or crc fields", lblk: lblk, zone: g.HomeZone(lblk));
            return EntryState.Zero;
        }
        if (error.Fault == LblkAllocFault.BadLength)
        {
            if (report)
                Report(CheckProblemKind.BadLength, error.Describe(g, lblk), lblk: lblk, zone: g.HomeZone(lblk));
            return EntryState.Invalid;
        }
        int used = format.PblksFor(length);
        var list = new ulong[used];
        bool bad = false;
        int reported = 0; // one problem per kind per entry: a bit per CheckProblemKind
        for (int i = 0; i < used; i++)
        {
            ulong p = slots[i];
            list[i] = p;
            var fault = LblkAlloc.CheckSlot(g, slots, i, out int first);
            (CheckProblemKind Kind, string Message)? found = fault switch
            {
                LblkAllocFault.PblkOutsideDevice => (CheckProblemKind.PblkOutsideDevice, $"lblk {lblk}: pblk[{i}] = {p}, past the end of the device ({g.NrPblks} pblks)"),
                LblkAllocFault.PblkInMetadata => (CheckProblemKind.PblkInMetadata, $"lblk {lblk}: pblk[{i}] = {p} is {DescribeNonData(g, p)}, not a data pblk"),
                _ when PastStoreEnd(p) => (CheckProblemKind.PblkPastStoreEnd, $"lblk {lblk}: pblk[{i}] = {p} lies past the end of the truncated store"),
                LblkAllocFault.PblkRepeated => (CheckProblemKind.PblkClaimedTwice, $"lblk {lblk}: pblk {p} appears twice in its entry (pblk[{first}] and pblk[{i}])"),
                _ => null,
            };
            if (found is { } f)
            {
                bad = true;
                if (report && (reported & (1 << (int)f.Kind)) == 0)
                    Report(f.Kind, f.Message, lblk: lblk, zone: g.HomeZone(lblk), pblk: p);
                reported |= 1 << (int)f.Kind;
            }
        }
        int junk = slots[used..].IndexOfAnyExcept(0UL);
        if (junk >= 0 && report)
        {
            Report(CheckProblemKind.UnusedSlotNotZero,
                $"lblk {lblk}: pblk[{used + junk}] = {slots[used + junk]}, expected 0 past the {used} pblks of length {length}", lblk: lblk, zone: g.HomeZone(lblk),
                pblk: slots[used + junk]);
        }
        if (bad)
            return EntryState.Invalid;
        pblks = list;
        return junk >= 0 ? EntryState.ValidJunkSlots : EntryState.Valid;
    }

    private bool PastStoreEnd(ulong pblk) => (long)(pblk + 1) * Layout.PblkSize > StoreLength;

    private static string DescribeNonData(Geometry g, ulong pblk)
    {
        if (pblk == 0)
            return "the header";
        if (pblk >= g.ZonesEnd)
            return $"in the write log (pblks {g.ZonesEnd}..{g.NrPblks - 1})";
        ulong zone = (pblk - 1) / g.ZoneStride;
        ulong offset = pblk - 1 - zone * g.ZoneStride;
        if (zone >= g.NrZones)
            return "past the last zone";
        if (offset == 0)
            return $"zone {zone}'s pbat";
        if (offset <= g.LbatPblks)
            return $"in zone {zone}'s lbat";
        return $"past zone {zone}'s data";
    }

    private async Task VerifyManyAsync(List<(ulong Lblk, LblkAlloc Alloc)> items, CancellationToken cancellationToken)
    {
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, _options.Parallelism), CancellationToken = cancellationToken };
        await Parallel.ForEachAsync(items, parallel, async (item, token) =>
        {
            await VerifyAsync(item.Lblk, item.Alloc, token).ConfigureAwait(false);
        }).ConfigureAwait(false);
    }

    /// <summary>Reads one stored lblk and checks its CRC32C (when kept) and that it decodes to one lblk; records and reports a failure.</summary>
    public async ValueTask<bool> VerifyAsync(ulong lblk, LblkAlloc alloc, CancellationToken cancellationToken)
    {
        var g = Geometry!;
        var format = g.Alloc;
        int storedLength = alloc.Pblks.Length * Layout.PblkSize;
        byte[] stored = ArrayPool<byte>.Shared.Rent(storedLength);
        byte[] data = ArrayPool<byte>.Shared.Rent(g.LblkSize);
        DataFailure? failure = null;
        try
        {
            await StoreIo.ReadPblksAsync(_store, alloc.Pblks, stored.AsMemory(0, storedLength), cancellationToken).ConfigureAwait(false);
            var result = StoredLblk.Decode(format, lblk, alloc, stored.AsSpan(0, storedLength), data.AsSpan(0, g.LblkSize));
            failure = result.Fault switch
            {
                StoredLblkFault.ChecksumMismatch => new DataFailure(CheckProblemKind.LblkChecksumMismatch,
                    $"lblk {lblk}: checksum mismatch (stored 0x{alloc.Crc:x8}, computed 0x{result.ComputedCrc:x8}) in pblks {alloc.Pblks}", alloc),
                StoredLblkFault.Undecodable => new DataFailure(CheckProblemKind.LblkUndecodable,
                    $"lblk {lblk}: {result.StoredBytes} stored bytes (algorithm id {result.AlgorithmId}) do not decompress to one {g.LblkSize}-byte lblk", alloc),
                _ => null,
            };
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(stored);
            ArrayPool<byte>.Shared.Return(data);
        }
        if (failure is null)
            return true;
        lock (_lock)
            DataFailures[lblk] = failure;
        Report(failure.Kind, failure.Message, lblk: lblk, zone: g.HomeZone(lblk), pblk: alloc.Pblks[0]);
        return false;
    }

    private async Task ComparePbatsAsync(CancellationToken cancellationToken)
    {
        var g = Geometry!;
        byte[] disk = new byte[PbatLayout.Bytes];
        byte[] mine = new byte[PbatLayout.Bytes];
        long differing = 0;
        for (uint zone = 0; zone < g.NrZones; zone++)
        {
            await PbatLayout.ReadAsync(_store, g, zone, disk, cancellationToken).ConfigureAwait(false);
            Claims[zone].Store(mine);
            if (disk.AsSpan().SequenceEqual(mine))
                continue;
            int dataPblks = g.DataPblks(zone);
            // Runs of neighbouring bits wrong the same way make one problem each: a cleared lblk leaks a run.
            for (int bit = 0; bit < dataPblks;)
            {
                int run = PbatLayout.DifferingRun(disk, mine, bit, dataPblks);
                if (run == 0)
                {
                    bit++;
                    continue;
                }
                differing += run;
                ReportPbatRun(zone, bit, run, marked: PbatLayout.IsSet(disk, bit));
                bit += run;
            }
            int pastData = 0;
            for (int bit = dataPblks; bit < PbatLayout.Bits; bit++)
                pastData += PbatLayout.IsSet(disk, bit) != PbatLayout.IsSet(mine, bit) ? 1 : 0;
            differing += pastData;
            if (pastData > 0 && IsClean)
            {
                Report(CheckProblemKind.PbatBitsPastData, $"zone {zone} pbat: {pastData} bits set past its {dataPblks} data pblks", zone: zone,
                    pblk: g.DataStart(zone) + (ulong)dataPblks);
            }
        }
        if (!IsClean)
        {
            var h = Header!;
            Report(CheckProblemKind.ImageDirty,
                $"the image was not closed cleanly (dirty flag set): pbats and stats are untrusted and will be rebuilt from the lbats at next open " +
                $"({differing} pbat bits differ from the lbats; header says {h.LblkUsed} lblks and {h.PblkUsed} pblks used, the lbats {LblksUsed} and {PblksUsed})",
                severity: CheckSeverity.Info);
        }
    }

    private void ReportPbatRun(uint zone, int bit, int count, bool marked)
    {
        if (!IsClean)
            return;
        ulong pblk = Geometry!.DataStart(zone) + (ulong)bit;
        string what = count == 1 ? $"pblk {pblk} (bit {bit}) is" : $"pblks {pblk}..{pblk + (ulong)count - 1} (bits {bit}..{bit + count - 1}) are";
        if (marked)
            Report(CheckProblemKind.PbatMarksUnused, $"zone {zone} pbat: {what} marked in use, but no lblk refers to {(count == 1 ? "it" : "them")}", zone: zone, pblk: pblk);
        else
            Report(CheckProblemKind.PbatMissesUsed, $"zone {zone} pbat: {what} in use by lblks, but marked free", zone: zone, pblk: pblk);
    }

    private void CompareStats()
    {
        if (!IsClean)
            return;
        var h = Header!;
        if (h.LblkUsed != (ulong)LblksUsed)
            Report(CheckProblemKind.StatsMismatch, $"header lblk_used: {h.LblkUsed}, but the lbats hold {LblksUsed} allocated lblks");
        if (h.PblkUsed != (ulong)PblksUsed)
            Report(CheckProblemKind.StatsMismatch, $"header pblk_used: {h.PblkUsed}, but the lbats refer to {PblksUsed} data pblks");
    }
}
