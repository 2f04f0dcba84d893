using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>What <see cref="ImageTrimmer.TrimAsync"/> gave back.</summary>
public sealed record TrimReport
{
    /// <summary>Free data pblks punched (or that would have been, had the store been able to).</summary>
    public long FreePblks { get; init; }

    /// <summary>Deallocation calls made: one per run of consecutive free pblks.</summary>
    public long Runs { get; init; }

    /// <summary>False when the store cannot deallocate (a filesystem without holes, a device without discard): nothing was done.</summary>
    public bool Supported { get; init; } = true;

    /// <summary>True when the pbats were trusted as well as the lbats (the image was closed clean).</summary>
    public bool PbatsUsed { get; init; }

    /// <summary>The store's allocated bytes before and after; null where the store cannot tell (a block device).</summary>
    public long? AllocatedBefore { get; init; }

    public long? AllocatedAfter { get; init; }
}

/// <summary>
/// Gives every free data pblk of a closed image back to the backing store (a hole punched in a file, a discard on a
/// block device), as fstrim does for a filesystem: for an image written before the device did so itself, or served
/// with <see cref="DiscardMode.Ignore"/>.
/// </summary>
/// <remarks>
/// A pblk is punched only when no lblk_alloc entry names it, valid or not (<see cref="PblkClaims"/>), and, on an image
/// closed clean, its pbat marks it free too; a dirty image's pbats are stale, and its next open rebuilds them from the
/// lbats alone, so the lbats alone decide. Nothing else is written, so an interruption leaves the image as it was, with
/// some of its free pblks punched. An image with invalid entries is refused: check and repair decide about those first.
/// </remarks>
public static class ImageTrimmer
{
    /// <exception cref="MaintenanceRefusedException">The store is read-only, or the image has invalid entries; nothing was done.</exception>
    /// <exception cref="InvalidDataException">The header cannot be read (run check).</exception>
    /// <exception cref="IOException">A deallocation failed.</exception>
    public static async Task<TrimReport> TrimAsync(IBackingStore store, IProgress<double>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        var geometry = await Geometry.ReadAsync(store, cancellationToken).ConfigureAwait(false);
        if (!store.CanWrite)
            throw new MaintenanceRefusedException("the backing store is open read-only");
        var claims = await PblkClaims.ScanAsync(geometry, store, cancellationToken).ConfigureAwait(false);
        if (claims.Invalid.Count > 0)
        {
            var first = claims.Invalid.Take(3).Select(i => i.Reason);
            throw new MaintenanceRefusedException(
                $"{claims.Invalid.Count} lblk_alloc entries are invalid ({string.Join("; ", first)}{(claims.Invalid.Count > 3 ? "; ..." : "")}); run cbd check --repair first");
        }
        progress?.Report(0.5);

        bool clean = !geometry.Header.Flags.HasFlag(HeaderFlags.Dirty);
        long? before = store.AllocatedBytes;
        long free = 0, runs = 0;
        bool supported = true;
        var pbat = new Pbat(Layout.PblksPerZoneData);
        byte[] page = new byte[Layout.PblkSize];
        for (uint zone = 0; zone < geometry.NrZones && supported; zone++)
        {
            int dataPblks = geometry.DataPblks(zone);
            long dataStart = (long)geometry.DataStart(zone) * Layout.PblkSize;
            // A truncated store has nothing allocated past its end.
            dataPblks = (int)Math.Clamp((store.Length - dataStart) / Layout.PblkSize, 0, dataPblks);
            if (clean)
                await StoreIo.ReadClampedAsync(store, (long)geometry.ZoneStart(zone) * Layout.PblkSize, page, cancellationToken).ConfigureAwait(false);
            pbat.Load(page);
            var claimed = claims.Zone(zone);
            int bit = 0;
            while (bit < dataPblks && supported)
            {
                if (!IsFree(bit))
                {
                    bit++;
                    continue;
                }
                int start = bit;
                while (bit < dataPblks && IsFree(bit))
                    bit++;
                supported = await store.DeallocateAsync(dataStart + (long)start * Layout.PblkSize, (long)(bit - start) * Layout.PblkSize, cancellationToken)
                    .ConfigureAwait(false);
                free += bit - start;
                runs++;
            }
            progress?.Report(0.5 + 0.5 * (zone + 1.0) / geometry.NrZones);

            bool IsFree(int b) => !pbat.IsSet(b) && (claimed is null || (claimed[b >> 6] & (1UL << b)) == 0);
        }
        if (supported && runs > 0)
            await store.FlushAsync(cancellationToken).ConfigureAwait(false);
        return new TrimReport
        {
            FreePblks = supported ? free : 0,
            Runs = supported ? runs : 0,
            Supported = supported,
            PbatsUsed = clean,
            AllocatedBefore = before,
            AllocatedAfter = store.AllocatedBytes,
        };
    }
}
