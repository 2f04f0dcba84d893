using System.Buffers;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

public sealed class ResizeReport
{
    public required Header Before { get; init; }
    public required Header After { get; init; }

    /// <summary>lblks whose stored bytes were moved out of the part of the store being removed.</summary>
    public long LblksMoved { get; init; }
    public long PblksMoved { get; init; }
    public IReadOnlyList<string> Actions { get; init; } = [];
}

/// <summary>
/// Grows or shrinks a closed image in place: its physical size (zones added or removed at the end)
/// and, with it or alone, its logical size.
/// </summary>
/// <remarks>
/// <para>A write log stays the last log_pblks pblks, so it moves with the end; only an empty one (a clean image whose
/// scan finds no record) is moved: the new header puts its tail at offset 0, its seq kept.</para>
/// <para>Zones never move. A zone's place depends on the lbat size, which depends on lblk_per_zone and
/// on the lblk_alloc entry size, which depends on how many bits number a pblk (16 up to 65536 pblks,
/// 32 up to 2^32, 48 above). So lblk_per_zone is kept, and a resize that would change the pblk width is
/// refused with the range of sizes this image allows (crossing it means rewriting every lbat and moving
/// every zone: export and import into a new device instead). The logical size can be at most
/// nr_zones x lblk_per_zone lblks.</para>
/// <para>Shrinking moves each lblk that has stored bytes past the new end into free pblks of the zones
/// that stay (the entry keeps its CRC32C, which covers the lblk number and the stored bytes only), and
/// is refused, saying how much must be freed, when they do not fit or when lblks past a smaller
/// logical size hold data.</para>
/// <para>Write order, so that an interrupted resize leaves an image that opens at the old or the new
/// size: a file is grown first (the old header does not mind a longer store); then the dirty flag is set
/// and made durable, so the pbats are rebuilt from the lbats by the next open until the end; new zones'
/// pbats and lbats are zeroed, fsync; moved data is written, fsync, and only then the entries that point
/// at it, fsync (until then the old entries still find the old, untouched copies); the pbats of the new
/// geometry, fsync; the new log's pblks are zeroed; then the new header, clean, fsync; and last a file is truncated.</para>
/// </remarks>
public static class DeviceResizer
{
    private const int MoveBatchBytes = 32 << 20;

    /// <param name="newPhysicalBytes">New size of the image on the store, rounded down to whole pblks.</param>
    /// <param name="newLogicalBytes">New logical size, rounded down to whole lblks; null keeps the current one.</param>
    /// <exception cref="MaintenanceRefusedException">This image cannot take the sizes asked; nothing was written.</exception>
    /// <exception cref="InvalidDataException">The header cannot be read (run check).</exception>
    public static async Task<ResizeReport> ResizeAsync(IBackingStore store, long newPhysicalBytes, long? newLogicalBytes = null,
        IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        var (header, old) = await StoreIo.ReadHeaderAsync(store, cancellationToken).ConfigureAwait(false);
        if (!store.CanWrite)
            throw new MaintenanceRefusedException("the backing store is open read-only");
        await RefuseLogRecordsAsync(store, header, old, cancellationToken).ConfigureAwait(false);
        var geometry = await PlanAsync(store, header, old, newPhysicalBytes, newLogicalBytes, cancellationToken).ConfigureAwait(false);
        long newLength = (long)geometry.NrPblks * Layout.PblkSize;

        // lblks with stored bytes outside the new data areas must move; lblks past the new end must be empty.
        var moves = new List<(ulong Lblk, LblkAlloc Alloc)>();
        var scan = await ImageScan.RunAsync(store, new ScanOptions
        {
            MaxProblems = 20,
            OnValidEntry = (lblk, alloc) =>
            {
                if (alloc.Pblks.Any(p => !geometry.TryLocateDataPblk(p, out _, out _)))
                    moves.Add((lblk, alloc));
            },
        }, ProgressScale.Scaled(progress, 0, 0.3), cancellationToken).ConfigureAwait(false);
        var check = scan.ToReport();
        if (check.HasErrors)
        {
            var errors = check.Problems.Where(p => p.Severity == CheckSeverity.Error).Take(3).Select(p => p.Message);
            throw new MaintenanceRefusedException(
                $"the image is not consistent ({string.Join("; ", errors)}{(check.Problems.Count > 3 ? "; ..." : "")}); run check and repair first");
        }

        var claims = ClaimsIn(geometry, scan.Claims);
        long need = moves.Sum(m => (long)m.Alloc.Pblks.Length);
        long free = claims.Sum(c => (long)c.Free);
        if (need > free)
        {
            long missing = need - free;
            throw new MaintenanceRefusedException(
                $"the data does not fit in {Human(newLength)}: {moves.Count} lblks keep {Human(need * Layout.PblkSize)} of stored data past the new end, " +
                $"and the zones that stay have {Human(free * Layout.PblkSize)} free. Free at least {Human(missing * Layout.PblkSize)} of stored (compressed) " +
                $"data first, by trimming, or choose a physical size of at least {Human(newLength + missing * Layout.PblkSize)}");
        }

        var actions = new List<string>();
        if (newLength > store.Length)
        {
            try
            {
                await store.SetLengthAsync(newLength, cancellationToken).ConfigureAwait(false);
            }
            catch (NotSupportedException e)
            {
                throw new MaintenanceRefusedException($"the store holds {store.Length} bytes and cannot grow to {newLength} ({e.Message})");
            }
            actions.Add($"extended the store to {newLength} bytes");
        }

        // From here until the new header the pbats are untrusted: an interruption makes the next open rebuild them.
        if (!header.Flags.HasFlag(HeaderFlags.Dirty))
            await (header with { Flags = header.Flags | HeaderFlags.Dirty }).WriteAsync(store, cancellationToken).ConfigureAwait(false);

        if (geometry.NrZones > old.NrZones)
        {
            for (uint zone = old.NrZones; zone < geometry.NrZones; zone++)
            {
                await store.ZeroRangeAsync((long)geometry.ZoneStart(zone) * Layout.PblkSize, (long)(1 + geometry.LbatPblks) * Layout.PblkSize,
                    cancellationToken).ConfigureAwait(false);
            }
            await store.FlushAsync(cancellationToken).ConfigureAwait(false);
            actions.Add($"added zones {old.NrZones}..{geometry.NrZones - 1}");
        }
        progress?.Report(0.35);

        await MoveAsync(store, geometry, claims, moves, ProgressScale.Scaled(progress, 0.35, 0.9), cancellationToken).ConfigureAwait(false);
        if (moves.Count > 0)
            actions.Add($"moved {moves.Count} lblks ({need} pblks) out of the part of the store being removed");

        if (geometry.Header.HasLog)
        {
            // The log moves to the new end: nothing but zeros may be there for the scan from the new tail to find.
            await store.ZeroRangeAsync(geometry.LogStartByte, geometry.LogBytes, cancellationToken).ConfigureAwait(false);
            actions.Add($"moved the write log ({geometry.LogPblks} pblks) to pblks {geometry.ZonesEnd}..{geometry.NrPblks - 1}");
        }

        byte[] disk = new byte[PbatLayout.Bytes];
        byte[] mine = new byte[PbatLayout.Bytes];
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            await PbatLayout.ReadAsync(store, geometry, zone, disk, cancellationToken).ConfigureAwait(false);
            claims[zone].Store(mine);
            if (!disk.AsSpan().SequenceEqual(mine))
                await PbatLayout.WriteAsync(store, geometry, zone, mine, cancellationToken).ConfigureAwait(false);
        }
        await store.FlushAsync(cancellationToken).ConfigureAwait(false);

        var resized = geometry.Header with
        {
            LblkUsed = (ulong)scan.LblksUsed,
            PblkUsed = (ulong)claims.Sum(c => (long)(c.DataPblks - c.Free)),
        };
        await resized.WriteAsync(store, cancellationToken).ConfigureAwait(false);
        actions.Add($"physical size {old.NrPblks * Layout.PblkSize} -> {newLength} bytes ({old.NrZones} -> {geometry.NrZones} zones), " +
            $"logical size {old.LogicalBytes} -> {geometry.LogicalBytes} bytes");

        if (store.Length > newLength)
        {
            try
            {
                await store.SetLengthAsync(newLength, cancellationToken).ConfigureAwait(false);
                actions.Add($"truncated the store to {newLength} bytes");
            }
            catch (NotSupportedException)
            {
                actions.Add("left the store's size as it is (a block device)");
            }
        }
        progress?.Report(1.0);
        return new ResizeReport { Before = header, After = resized, LblksMoved = moves.Count, PblksMoved = need, Actions = actions };
    }

    /// <summary>The geometry after the resize, with zones where they are; refuses what this image cannot become.</summary>
    private static async ValueTask<Geometry> PlanAsync(IBackingStore store, Header header, Geometry old, long newPhysicalBytes, long? newLogicalBytes,
        CancellationToken cancellationToken)
    {
        if (newPhysicalBytes < Layout.HeaderSize)
            throw new ArgumentOutOfRangeException(nameof(newPhysicalBytes), $"physical size {Human(newPhysicalBytes)}: smaller than the {Human(Layout.HeaderSize)} header");
        ulong nrPblks = (ulong)newPhysicalBytes / Layout.PblkSize;
        int bits = LblkAllocFormat.PblkBitsFor(nrPblks);
        if (nrPblks > 1UL << 48 || bits != old.Alloc.PblkBits)
        {
            throw new MaintenanceRefusedException(
                $"physical size {Human(newPhysicalBytes)}: this image can be resized {SizeRange(old.Alloc.PblkBits)} only. Its lblk_alloc entries number " +
                $"pblks with {old.Alloc.PblkBits} bits ({old.Alloc.Name}), chosen at format for its size then; a size outside that range needs " +
                $"{LblkAllocFormat.PblkBitsFor(Math.Min(nrPblks, 1UL << 48))}-bit numbers, which change the size of every entry and so the place of every zone. " +
                "Format a new image of that size and copy the data over (cbd export, then cbd import)");
        }
        ulong metadata = 1 + old.LbatPblks;
        // The log keeps its size and stays the last pblks of the device: the zones end where it starts.
        ulong zonesEnd = nrPblks - Math.Min(old.LogPblks, nrPblks);
        // A zone needs its pbat, its lbat and at least one data pblk before the end of the zones.
        ulong zones = Geometry.MaxZones(zonesEnd, old.LbatPblks);
        if (zones == 0)
        {
            throw new MaintenanceRefusedException(
                $"physical size {Human(newPhysicalBytes)}: too small for the header and one zone of {metadata} metadata pblks ({Human((long)metadata * Layout.PblkSize)})" +
                (old.LogPblks > 0 ? $" besides the write log's {Human(old.LogBytes)}" : ""));
        }
        if (zones > uint.MaxValue)
            throw new MaintenanceRefusedException($"physical size {newPhysicalBytes}: {zones} zones exceed the u32 nr_zones field");

        ulong nrLblks = newLogicalBytes is { } logical
            ? await DeviceTuner.CheckLogicalSizeAsync(store, old, zones, logical, cancellationToken).ConfigureAwait(false)
            : old.NrLblks;
        ulong capacity = zones * old.LblkPerZone;
        if (nrLblks > capacity)
        {
            throw new MaintenanceRefusedException(
                $"physical size {Human(newPhysicalBytes)}: its {zones} zones hold {capacity} lblk_alloc entries ({Human((long)(capacity * (ulong)old.LblkSize))} of logical space), " +
                $"fewer than the {old.NrLblks} lblks of the current logical size ({Human(old.LogicalBytes)}); give a logical size of at most {Human((long)(capacity * (ulong)old.LblkSize))} too");
        }

        var resized = header with
        {
            NrPhysicalSectors = nrPblks * Layout.SectorsPerPblk,
            NrLogicalSectors = nrLblks * (ulong)old.LblkSize / Layout.SectorSize,
            NrZones = (uint)zones,
            Flags = header.Flags & ~HeaderFlags.Dirty,
            // The log is empty (RefuseLogRecordsAsync): at its new place (zeroed) it starts over at offset 0, its seq going on.
            LogTail = 0,
            LogTailEpoch = header.LogEpoch,
        };
        try
        {
            return Geometry.FromHeader(resized, (long)nrPblks * Layout.PblkSize);
        }
        catch (InvalidDataException e)
        {
            throw new MaintenanceRefusedException($"physical size {newPhysicalBytes}: {e.Message}");
        }
    }

    /// <summary>
    /// Refuses an image whose write log may hold records: the log moves with the end of the device, and records pending
    /// on their lblks would be left behind. A clean image whose scan finds no record has nothing pending.
    /// </summary>
    private static async ValueTask RefuseLogRecordsAsync(IBackingStore store, Header header, Geometry geometry, CancellationToken cancellationToken)
    {
        if (!header.HasLog)
            return;
        const string Merge = "serve the image (cbd serve) and stop it, so that its records are merged into their lblks and the log is left empty, then resize";
        if (header.Flags.HasFlag(HeaderFlags.Dirty))
            throw new MaintenanceRefusedException($"the image was not closed clean, and the records of its write log are replayed only when it is next opened; {Merge}");
        var log = await LogSummary.ReadAsync(store, geometry, cancellationToken).ConfigureAwait(false);
        if (log is { IsEmpty: false })
        {
            throw new MaintenanceRefusedException(
                $"the write log holds {log.Records} records for {log.Lblks} lblks, and it moves with the end of the device; {Merge}");
        }
    }

    private static string SizeRange(int bits) => bits switch
    {
        16 => $"to at most {Human((1L << 16) * Layout.PblkSize)} (2^16 pblks)",
        32 => $"to between {Human(((1L << 16) + 1) * Layout.PblkSize)} and {Human((1L << 32) * Layout.PblkSize)} (2^16 + 1 to 2^32 pblks)",
        _ => $"to between {Human(((1L << 32) + 1) * Layout.PblkSize)} and {Human((1L << 48) * Layout.PblkSize)} (2^32 + 1 to 2^48 pblks)",
    };

    /// <summary>A size as a person reads it: "256 MiB", or "256 MiB + 4 KiB" for one just past a round number; else bytes after the nearest unit.</summary>
    internal static string Human(long bytes)
    {
        string[] units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        int unit = 0;
        long whole = bytes;
        while (unit < units.Length - 1 && whole >= 1024 && whole % 1024 == 0)
        {
            whole /= 1024;
            unit++;
        }
        if (whole < 1024 || bytes < 1 << 20)
            return $"{whole} {units[unit]}";
        // Just past a round size, as the lower bounds of the pblk widths are: say it that way.
        int top = (63 - (int)long.LeadingZeroCount(bytes)) / 10;
        long round = bytes >> (10 * top) << (10 * top);
        long rest = bytes - round;
        string head = $"{round >> (10 * top)} {units[top]}";
        return rest == 0 ? head : rest % 1024 == 0 && rest < 1L << 20 ? $"{head} + {rest >> 10} KiB" :
            $"{(bytes / Math.Pow(1024, top)).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)} {units[top]} ({bytes} bytes)";
    }

    /// <summary>The claimed pblks in the new geometry's zones; claims outside them belong to lblks that move.</summary>
    private static Pbat[] ClaimsIn(Geometry geometry, Pbat[] oldClaims)
    {
        var claims = new Pbat[geometry.NrZones];
        byte[] page = new byte[PbatLayout.Bytes];
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            int dataPblks = geometry.DataPblks(zone);
            claims[zone] = new Pbat(dataPblks);
            if (zone >= oldClaims.Length)
                continue;
            oldClaims[zone].Store(page);
            // Bits past the zone's new end are pblks being removed.
            for (int bit = dataPblks; bit < PbatLayout.Bits; bit++)
                PbatLayout.Clear(page, bit);
            claims[zone].Load(page);
        }
        return claims;
    }

    /// <summary>
    /// Copies each moving lblk's stored bytes to newly allocated pblks, in batches: data, fsync, entries,
    /// fsync. The pblks left behind inside the new geometry are released only after every move, so
    /// none is reused while an entry on the store may still point at it.
    /// </summary>
    private static async Task MoveAsync(IBackingStore store, Geometry geometry, Pbat[] claims, List<(ulong Lblk, LblkAlloc Alloc)> moves,
        IProgress<double>? progress, CancellationToken cancellationToken)
    {
        if (moves.Count == 0)
            return;
        int lblkBytes = geometry.Alloc.PblksPerLblk * Layout.PblkSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(lblkBytes);
        try
        {
            int done = 0;
            while (done < moves.Count)
            {
                var published = new List<(ulong Lblk, LblkAlloc Alloc)>();
                long batchBytes = 0;
                while (done < moves.Count && batchBytes < MoveBatchBytes)
                {
                    var (lblk, alloc) = moves[done++];
                    int count = alloc.Pblks.Length;
                    var target = Allocate(geometry, claims, geometry.HomeZone(lblk), count);
                    var bytes = buffer.AsMemory(0, count * Layout.PblkSize);
                    await StoreIo.ReadPblksAsync(store, alloc.Pblks, bytes, cancellationToken).ConfigureAwait(false);
                    await StoreIo.WritePblksAsync(store, target, bytes, cancellationToken).ConfigureAwait(false);
                    published.Add((lblk, new LblkAlloc(alloc.Length, alloc.Crc, target)));
                    batchBytes += bytes.Length;
                }
                // The data is durable before any entry points at it.
                await store.FlushAsync(cancellationToken).ConfigureAwait(false);
                await StoreIo.WriteEntriesAsync(store, geometry, published, cancellationToken).ConfigureAwait(false);
                await store.FlushAsync(cancellationToken).ConfigureAwait(false);
                progress?.Report((double)done / moves.Count);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        foreach (var (_, alloc) in moves)
        {
            foreach (ulong pblk in alloc.Pblks)
            {
                if (geometry.TryLocateDataPblk(pblk, out uint zone, out int bit))
                    claims[zone].Clear(bit);
            }
        }
    }

    /// <summary>Like the engine's allocator: the home zone when it has room, else another zone that has, else split over zones.</summary>
    private static ulong[] Allocate(Geometry geometry, Pbat[] claims, uint homeZone, int count)
    {
        var pblks = new ulong[count];
        var bits = new int[count];
        uint zones = geometry.NrZones;
        for (uint i = 0; i < zones; i++)
        {
            uint zone = (uint)((homeZone + (ulong)i) % zones);
            if (claims[zone].TryAllocate(count, bits))
            {
                for (int k = 0; k < count; k++)
                    pblks[k] = geometry.DataStart(zone) + (ulong)bits[k];
                return pblks;
            }
        }
        int done = 0;
        for (uint zone = 0; zone < zones && done < count; zone++)
        {
            int take = Math.Min(count - done, claims[zone].Free);
            if (take == 0 || !claims[zone].TryAllocate(take, bits))
                continue;
            for (int k = 0; k < take; k++)
                pblks[done + k] = geometry.DataStart(zone) + (ulong)bits[k];
            done += take;
        }
        Invariant.Check(done == count, $"free pblks counted for a move were not found ({done} of {count})");
        return pblks;
    }
}
