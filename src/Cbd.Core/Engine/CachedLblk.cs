using Cbd.Core.Compression;

namespace Cbd.Core.Engine;

/// <summary>
/// An lblk in the cache, decompressed. Fields are guarded by <see cref="Lock"/>, except
/// <see cref="Pins"/> and <see cref="LastUse"/>, which the cache guards.
/// </summary>
/// <remarks>The invariants that hold of every entry are stated and checked by <see cref="LblkCache"/>.</remarks>
internal sealed class CachedLblk(ulong lblk)
{
    public readonly ulong Lblk = lblk;
    public readonly SemaphoreSlim Lock = new(1, 1);

    /// <summary>The contents (a pooled array of at least one lblk) when loaded and not zero.</summary>
    public byte[]? Data;
    public bool Loaded;
    public bool IsZero;
    public bool Dirty;

    /// <summary>Bumped by every change, so write-back knows whether what it wrote is still the newest.</summary>
    public long Version;

    /// <summary>The version a checkpoint is writing back (0: none), so that a later checkpoint does not write it again.</summary>
    public long WriteBackVersion;

    /// <summary>pblks reserved for this lblk's write-back: one lblk's worth, or what its contents were measured to need on a nearly full device.</summary>
    public int ReservedPblks;

    /// <summary>
    /// With a write log: the seq after the last log record applied to <see cref="Data"/> (0: none). Write-back takes it
    /// with the version, and the records below it are merged once that version is published.
    /// </summary>
    public ulong LogApplied;

    /// <summary>
    /// Dirty with a change that is not in the write log (a whole-lblk write taken into the cache): until that is published,
    /// every change to the lblk goes to the cache too, since a log record replayed over the old stored form without it
    /// would bring back a state the lblk never had.
    /// </summary>
    public bool Unlogged;

    /// <summary>
    /// A read decoded part of the lblk without loading it (<see cref="LblkIo.TryReadUnloadedAsync"/>): the next read loads
    /// it whole. Holds no data, so nothing here can go stale.
    /// </summary>
    public bool PrefixRead;

    /// <summary>
    /// Merged while the write log was under pressure: write-back stores it with the fast codec (<see cref="Codec.CreateFast"/>),
    /// and it is recompressed with the device's once the device is idle (<see cref="LblkIo.TakeFastStored"/>).
    /// </summary>
    public bool WriteFast;

    /// <summary>
    /// Merged under pressure from clean: the patch area its write-back stores over its stored form
    /// (<see cref="LblkIo.TryPreparePatchAsync"/>, docs/FORMAT.md "Patched lblks"), instead of loading and compressing
    /// it. Only on a dirty entry; a load, or any change but a log record, drops it, and write-back then compresses the lblk
    /// whole. Records appended after it stay pending for the next merge.
    /// </summary>
    public PreparedPatch? Patch;

    public int Pins;
    public long LastUse;
}
