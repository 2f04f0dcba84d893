using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

public sealed record RepairOptions
{
    /// <summary>Verify every stored lblk and clear those that fail (CRC32C or decompression), as lost.</summary>
    public bool Data { get; init; }

    /// <summary>Stored lblks read and verified at once.</summary>
    public int Parallelism { get; init; } = 8;
}

public sealed class RepairReport
{
    /// <summary>What the check before the repair found (including any lblks verified for the repair's decisions).</summary>
    public required CheckReport Check { get; init; }

    /// <summary>The image is consistent now: repaired, or nothing needed repairing.</summary>
    public bool Repaired { get; init; }

    /// <summary>Why nothing was repaired; set exactly when <see cref="Repaired"/> is false.</summary>
    public string? CannotRepairReason { get; init; }

    /// <summary>lblks whose entries were cleared: they held data and now read as zeros.</summary>
    public IReadOnlyList<ulong> LostLblks { get; init; } = [];

    /// <summary>What was changed, one line each, for the user.</summary>
    public IReadOnlyList<string> Actions { get; init; } = [];

    /// <summary>Anything was written to the store.</summary>
    public bool Wrote { get; init; }
}

/// <summary>
/// Makes a damaged image consistent again, offline (the device must not be open): invalid lblk_alloc
/// entries are cleared, pbats and stats are rebuilt from the lbats, and the dirty flag is cleared.
/// </summary>
/// <remarks>
/// <para>What is cleared, and what is lost (the lblk held data and now reads as zeros):</para>
/// <list type="bullet">
/// <item>Entries past the logical end and unallocated entries with stray fields are zeroed; they held no data.</item>
/// <item>Entries with a bad length, a pblk outside the data areas or past the end of a truncated store,
/// or a pblk listed twice are cleared: lost.</item>
/// <item>A pblk claimed by several lblks: every claimant is cleared, except that on an image that keeps
/// CRC32Cs the single claimant whose stored bytes pass their CRC (which covers the lblk number, so
/// another lblk's data never passes) is kept when it is the only one passing for each of its contested
/// pblks. Only the claimants are read for this, with or without <see cref="RepairOptions.Data"/>.
/// Without CRC32Cs nothing tells the owner apart, so all claimants are lost.</item>
/// <item>An entry whose only fault is non-zero unused pblk slots is kept with the slots zeroed when its
/// CRC32C passes; otherwise it is cleared.</item>
/// <item>With <see cref="RepairOptions.Data"/>, every lblk that fails its CRC32C or does not decompress
/// to one lblk is cleared: lost.</item>
/// </list>
/// <para>Nothing else is touched: an lblk that was intact reads back identical after the repair.</para>
/// <para>Write order, so that an interrupted repair leaves an image that opens at least as well as before
/// and a second run finishes the job: the store is extended first when truncated (harmless: the header
/// still describes it). Then the entries are rewritten (each lbat sector old or new), fsync: this only
/// removes references to pblks, so pbats that were trusted still mark every pblk in use (at worst a
/// leak); it comes before the dirty flag, so that an open that rebuilds from the lbats after a cut finds
/// the cleared entries and no longer keeps their lblks reading as errors. Then the dirty flag is set,
/// fsync, so the next open rebuilds the pbats
/// and stats whatever happens after; then the pbats, fsync; last the header with the new stats and the
/// flag cleared.</para>
/// <para>A header that fails its checksum or gives no valid geometry is not repaired: every position in
/// the image derives from it, and guessing it could destroy what is left.</para>
/// </remarks>
public static class DeviceRepairer
{
    public static async Task<RepairReport> RepairAsync(IBackingStore store, RepairOptions? options = null, IProgress<double>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        options ??= new RepairOptions();
        var scan = await ImageScan.RunAsync(store, new ScanOptions { Data = options.Data, Parallelism = options.Parallelism, MaxProblems = int.MaxValue },
            ProgressScale.Scaled(progress, 0, 0.8), cancellationToken).ConfigureAwait(false);
        if (scan.Geometry is null)
        {
            var fatal = scan.Problems[0];
            return new RepairReport
            {
                Check = scan.ToReport(),
                CannotRepairReason = $"{fatal.Message}. The header gives every position in the image; a header that cannot be read is not repaired, since guessing its geometry could destroy what is left",
            };
        }
        if (!store.CanWrite)
            return new RepairReport { Check = scan.ToReport(), CannotRepairReason = "the backing store is open read-only" };

        var geometry = scan.Geometry;
        var header = scan.Header!;
        var verified = await VerifyDisputedAsync(scan, cancellationToken).ConfigureAwait(false);
        var plan = Decide(scan, verified);
        var check = scan.ToReport();

        byte[] disk = new byte[PbatLayout.Bytes];
        byte[] mine = new byte[PbatLayout.Bytes];
        var pbatZones = new List<uint>();
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            await PbatLayout.ReadAsync(store, geometry, zone, disk, cancellationToken).ConfigureAwait(false);
            scan.Claims[zone].Store(mine);
            if (!disk.AsSpan().SequenceEqual(mine))
                pbatZones.Add(zone);
        }
        var final = header with
        {
            Flags = header.Flags & ~HeaderFlags.Dirty,
            LblkUsed = (ulong)plan.LblksUsed,
            PblkUsed = (ulong)scan.PblksUsed,
        };
        if (!scan.Truncated && plan.Writes.Count == 0 && pbatZones.Count == 0 && final == header)
            return new RepairReport { Check = check, Repaired = true, Actions = ["nothing to repair"] };

        var actions = new List<string>();
        if (scan.Truncated)
        {
            try
            {
                await store.SetLengthAsync(scan.ExpectedLength, cancellationToken).ConfigureAwait(false);
            }
            catch (NotSupportedException e)
            {
                return new RepairReport
                {
                    Check = check,
                    CannotRepairReason = $"the store holds {scan.StoreLength} bytes but the header says {scan.ExpectedLength}, and it cannot be extended ({e.Message}); " +
                        "make it that large again, or resize the image to fit",
                };
            }
            // What comes back must read as zeros whatever the store keeps past an old end.
            await store.ZeroRangeAsync(scan.StoreLength, scan.ExpectedLength - scan.StoreLength, cancellationToken).ConfigureAwait(false);
            actions.Add($"extended the store from {scan.StoreLength} to {scan.ExpectedLength} bytes; the missing part reads as zeros");
            foreach (uint zone in scan.ZonesCut)
            {
                ulong from = (ulong)zone * geometry.LblkPerZone;
                actions.Add($"zone {zone}: its pbat and lbat were (partly) past the end of the store; entries lost there leave their lblks (of {from}..{from + geometry.LblkPerZone - 1}) reading as zeros");
            }
        }

        if (plan.Writes.Count > 0)
        {
            await StoreIo.WriteEntriesAsync(store, geometry, plan.Writes.OrderBy(w => w.Key).Select(w => (w.Key, w.Value)), cancellationToken).ConfigureAwait(false);
            await store.FlushAsync(cancellationToken).ConfigureAwait(false);
            int zeroed = plan.Writes.Count - plan.Lost.Count - plan.Salvaged;
            if (plan.Lost.Count > 0)
                actions.Add($"cleared {plan.Lost.Count} lblk_alloc entries that could not be trusted; those lblks now read as zeros");
            if (zeroed > 0)
                actions.Add($"zeroed {zeroed} lblk_alloc entries that held no data but had stray fields");
            if (plan.Salvaged > 0)
                actions.Add($"zeroed the unused pblk slots of {plan.Salvaged} entries whose data verified");
        }
        progress?.Report(0.85);

        // From here the pbats and stats on the store are untrusted: the next open rebuilds them.
        if (!header.Flags.HasFlag(HeaderFlags.Dirty))
            await (header with { Flags = header.Flags | HeaderFlags.Dirty }).WriteAsync(store, cancellationToken).ConfigureAwait(false);
        progress?.Report(0.9);

        foreach (uint zone in pbatZones)
        {
            scan.Claims[zone].Store(mine);
            await PbatLayout.WriteAsync(store, geometry, zone, mine, cancellationToken).ConfigureAwait(false);
        }
        if (pbatZones.Count > 0)
        {
            await store.FlushAsync(cancellationToken).ConfigureAwait(false);
            actions.Add($"rebuilt the pbats of {pbatZones.Count} zones from the lbats");
        }

        await final.WriteAsync(store, cancellationToken).ConfigureAwait(false);
        if (final.LblkUsed != header.LblkUsed || final.PblkUsed != header.PblkUsed)
            actions.Add($"header stats: lblk_used {header.LblkUsed} -> {final.LblkUsed}, pblk_used {header.PblkUsed} -> {final.PblkUsed}");
        if (header.Flags.HasFlag(HeaderFlags.Dirty))
            actions.Add("cleared the dirty flag");
        progress?.Report(1.0);
        return new RepairReport { Check = check, Repaired = true, Wrote = true, LostLblks = [.. plan.Lost], Actions = actions };
    }

    /// <summary>
    /// Reads the lblks whose fate depends on their data (claimants of a shared pblk, entries with stray
    /// slots) when the image keeps CRC32Cs; returns those that passed.
    /// </summary>
    private static async Task<HashSet<ulong>> VerifyDisputedAsync(ImageScan scan, CancellationToken cancellationToken)
    {
        var verified = new HashSet<ulong>();
        if (!scan.Geometry!.Alloc.WithCrc)
            return verified;
        foreach (var issue in scan.Issues.Values.OrderBy(i => i.Lblk))
        {
            if (!(issue.Contested || issue.Action == EntryAction.Salvage))
                continue;
            bool ok = scan.DataChecked
                ? !scan.DataFailures.ContainsKey(issue.Lblk)
                : await scan.VerifyAsync(issue.Lblk, issue.Alloc, cancellationToken).ConfigureAwait(false);
            if (ok)
                verified.Add(issue.Lblk);
        }
        return verified;
    }

    private sealed record Plan(Dictionary<ulong, LblkAlloc> Writes, SortedSet<ulong> Lost, int Salvaged, long LblksUsed);

    /// <summary>Decides every faulty entry's fate and updates <see cref="ImageScan.Claims"/> to the pblks still referred to.</summary>
    private static Plan Decide(ImageScan scan, HashSet<ulong> verified)
    {
        var geometry = scan.Geometry!;
        var writes = new Dictionary<ulong, LblkAlloc>();
        var lost = new SortedSet<ulong>();
        var released = new List<LblkAlloc>();
        int salvaged = 0;

        // A shared pblk goes to its one verified claimant, if there is exactly one.
        var winners = new Dictionary<ulong, ulong>();
        foreach (var (pblk, lblks) in scan.Claimants)
        {
            var passing = lblks.Where(verified.Contains).Distinct().ToList();
            if (passing.Count == 1)
                winners[pblk] = passing[0];
        }

        foreach (var issue in scan.Issues.Values)
        {
            switch (issue.Action)
            {
                case EntryAction.Zero:
                    writes[issue.Lblk] = LblkAlloc.Unallocated;
                    break;
                case EntryAction.Clear:
                    writes[issue.Lblk] = LblkAlloc.Unallocated;
                    lost.Add(issue.Lblk);
                    break;
                default:
                    bool keep = issue.Action == EntryAction.Keep || verified.Contains(issue.Lblk);
                    if (issue.Contested)
                        keep &= issue.Alloc.Pblks.All(p => !scan.Claimants.ContainsKey(p) || (winners.TryGetValue(p, out ulong w) && w == issue.Lblk));
                    keep &= !scan.DataFailures.ContainsKey(issue.Lblk);
                    if (keep && issue.Action == EntryAction.Salvage)
                    {
                        writes[issue.Lblk] = issue.Alloc; // written afresh: the unused slots become zero
                        salvaged++;
                    }
                    else if (!keep)
                    {
                        writes[issue.Lblk] = LblkAlloc.Unallocated;
                        lost.Add(issue.Lblk);
                        released.Add(issue.Alloc);
                    }
                    break;
            }
        }
        foreach (var (lblk, failure) in scan.DataFailures)
        {
            if (scan.Issues.ContainsKey(lblk))
                continue;
            writes[lblk] = LblkAlloc.Unallocated;
            lost.Add(lblk);
            released.Add(failure.Alloc);
        }

        foreach (var alloc in released)
        {
            foreach (ulong pblk in alloc.Pblks)
            {
                if (!scan.Claimants.ContainsKey(pblk))
                    ClearClaim(scan, geometry, pblk);
            }
        }
        foreach (var (pblk, lblks) in scan.Claimants)
        {
            if (lblks.All(lost.Contains))
                ClearClaim(scan, geometry, pblk);
        }
        return new Plan(writes, lost, salvaged, scan.LblksUsed - released.Count);
    }

    private static void ClearClaim(ImageScan scan, Geometry geometry, ulong pblk)
    {
        geometry.TryLocateDataPblk(pblk, out uint zone, out int bit);
        scan.Claims[zone].Clear(bit);
    }
}
