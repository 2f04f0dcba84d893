using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Core.Engine;

/// <summary>
/// What open does about the pbats and stats, which are not kept crash-consistent (docs/FORMAT.md,
/// "Consistency" and "Damage"): on an image not closed clean, rebuilds them from the lbats before anything
/// else (<see cref="RebuildAsync"/>); on a clean image, checks them against every lbat behind the open
/// (<see cref="StartAudit"/>), since reading every lbat takes seconds on a large sparse device. The lbat scan
/// itself is <see cref="PblkClaims.ScanAsync"/>.
/// </summary>
/// <remarks>
/// The pbats are trusted only once compared with every lbat's claims: write-back, the only user of the
/// allocator, waits for <see cref="ClaimsApplied"/> before its first checkpoint.
/// </remarks>
internal sealed class DeviceRecovery(Geometry geometry, IBackingStore store, Allocator alloc, UsedCounts used, DamageLog damage)
{
    private readonly CancellationTokenSource _scanStop = new();

    /// <summary>Completes once the allocator agrees with the lbats' claims.</summary>
    public Task ClaimsApplied { get; private set; } = Task.CompletedTask;

    /// <summary>At the open of a dirty image: the pbats and stats are not trusted at all, rebuilt from the lbats.</summary>
    public async ValueTask RebuildAsync(CancellationToken cancellationToken)
    {
        var claims = await PblkClaims.ScanAsync(geometry, store, cancellationToken).ConfigureAwait(false);
        await ApplyClaimsAsync(claims, rebuild: true, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>At the open of a clean image for write: starts the audit of the pbats behind the open.</summary>
    public void StartAudit() => ClaimsApplied = Task.Run(AuditPbatsAsync);

    /// <summary>At close: the scan behind open must not outlive the store. Its failure, if any, was seen by write-back.</summary>
    public async ValueTask StopAsync()
    {
        _scanStop.Cancel();
        await ClaimsApplied.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>
    /// Makes the allocator agree with the lbats' claims (see <see cref="Allocator.ApplyClaimsAsync"/>),
    /// names every lblk with an invalid entry in the log, and takes the stats from the lbats.
    /// </summary>
    private async ValueTask ApplyClaimsAsync(PblkClaims claims, bool rebuild, CancellationToken cancellationToken)
    {
        foreach (var (lblk, reason) in claims.Invalid)
            damage.ReportDamaged(lblk, $"invalid lblk_alloc entry ({DamageLog.WithoutLblk(reason)}); it reads as an I/O error until written whole or repaired (cbd check --repair); the pblks it names stay in use");
        await alloc.ApplyClaimsAsync(claims, rebuild, cancellationToken).ConfigureAwait(false);
        Interlocked.Exchange(ref used.Lblks, claims.LblksUsed);
        Interlocked.Exchange(ref used.Pblks, claims.PblksUsed);
    }

    /// <summary>The scan behind the open of a clean image: every lbat's claims against the pbats.</summary>
    private async Task AuditPbatsAsync()
    {
        var claims = await PblkClaims.ScanAsync(geometry, store, _scanStop.Token).ConfigureAwait(false);
        await ApplyClaimsAsync(claims, rebuild: false, _scanStop.Token).ConfigureAwait(false);
    }
}
