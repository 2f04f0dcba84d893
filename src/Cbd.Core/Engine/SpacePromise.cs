using Cbd.Core.Format;

namespace Cbd.Core.Engine;

/// <summary>
/// What the device can promise about space: NBD's base:allocation says a write to an extent reported
/// without NBD_STATE_HOLE must not fail with ENOSPC, and NBD_CMD_FLAG_NO_HOLE asks that a zeroed range be
/// fully provisioned, so that no later write to it fails for space.
/// </summary>
/// <remarks>
/// A rewrite of an lblk may need n fresh pblks (n = pblks per lblk: its contents stored uncompressed) before
/// write-back frees the old ones, and compression gives no smaller bound. A write to an lblk holding data
/// therefore cannot fail for space only while every lblk holding data could be stored uncompressed with one
/// lblk to spare for the new copy: <c>(lblks with data + 1) × n &lt;= data pblks</c>. While that holds the
/// device is backed; past it (a thin device holding more data than its pblks could store uncompressed) any
/// write may fail, and block status reports data as a hole. Once no other write holds space (reserved, or
/// written back and not yet committed), the spare lblk is free whatever every lblk holds; until then a
/// write waits for their checkpoints rather than fail. The spare does not depend on the machine, so whether
/// a device can provision does not either.
/// <para>
/// Backing is a state of the whole device, which a write into a hole can end. A promise for a range that
/// nothing written elsewhere, nor a restart, can break would need a reservation kept per lblk, and the
/// format has no field to keep one; only a device whose geometry backs every lblk (<see cref="FullyBacked"/>)
/// can make it.
/// </para>
/// </remarks>
internal sealed class SpacePromise
{
    public SpacePromise(Geometry geometry)
    {
        PblksPerLblk = geometry.Alloc.PblksPerLblk;
        TotalLblks = (long)geometry.NrLblks;
        MaxBackedLblks = Math.Max(0, (long)(geometry.TotalDataPblks / (ulong)PblksPerLblk) - 1);
    }

    public int PblksPerLblk { get; }
    public long TotalLblks { get; }

    /// <summary>The most lblks with data the device can hold and still rewrite each of them uncompressed.</summary>
    public long MaxBackedLblks { get; }

    /// <summary>True when even every lblk holding data is backed: nothing written can ever end the promise.</summary>
    public bool FullyBacked => TotalLblks <= MaxBackedLblks;

    /// <summary>True when a device with <paramref name="lblksWithData"/> lblks holding data is backed.</summary>
    public bool Backs(long lblksWithData) => lblksWithData <= MaxBackedLblks;
}
