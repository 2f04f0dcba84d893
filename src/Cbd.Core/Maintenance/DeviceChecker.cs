using Cbd.Core.Storage;

namespace Cbd.Core.Maintenance;

/// <summary>
/// Verifies an image on its backing store without writing to it. The device must not be open: the
/// check reads the lbats and pbats as they are on the store, not as an open device caches them.
/// </summary>
/// <remarks>
/// Checked: the header (checksum, version, geometry, store length); every lblk_alloc entry (length,
/// pblk numbers inside the data areas and the store, unused slots zero, unallocated entries all
/// zero, entries past the logical end zero); that no pblk is claimed twice; and with
/// <see cref="CheckOptions.Data"/> that every stored lblk passes its CRC32C and decodes to one lblk.
/// On a clean image each pbat must mark exactly the pblks the lbats refer to (and nothing past a
/// partial zone's data) and the header stats must match. On a dirty image pbats and stats are rebuilt
/// at next open, so differences are reported once as <see cref="CheckProblemKind.ImageDirty"/>.
/// </remarks>
public static class DeviceChecker
{
    public static async Task<CheckReport> CheckAsync(IBackingStore store, CheckOptions? options = null, IProgress<double>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        options ??= new CheckOptions();
        var scan = await ImageScan.RunAsync(store, new ScanOptions
        {
            Data = options.Data,
            MaxProblems = options.MaxProblems,
            Parallelism = options.Parallelism,
        }, progress, cancellationToken).ConfigureAwait(false);
        return scan.ToReport();
    }
}
