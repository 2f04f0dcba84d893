namespace Cbd.Core.Engine;

/// <summary>Run-time settings of an open device.</summary>
public sealed record DeviceOptions
{
    public bool ReadOnly { get; init; }

    /// <summary>Memory budget of the lblk cache (clean and dirty lblks together).</summary>
    public long CacheBytes { get; init; } = 64L << 20;

    /// <summary>How long a written lblk may stay dirty in the cache before it is written back.</summary>
    public TimeSpan FlushDelay { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Compression threads used by write-back; default every core.</summary>
    public int? WriteBackParallelism { get; init; }

    /// <summary>
    /// Receives one line per finding about damaged metadata (an lblk with an invalid entry, pbat bits
    /// that disagree with the lbats, a pblk claimed twice). Called from any thread; must not block.
    /// </summary>
    public Action<string>? Log { get; init; }

    /// <summary>
    /// Takes <see cref="CacheBytes"/> as it is, below the floor of 4 lblks per compression thread plus 8
    /// that the device otherwise keeps, so that tests can hold write-back under memory pressure.
    /// </summary>
    internal bool ExactCacheSize { get; init; }

    /// <summary>An ordering bug to inject into the checkpoints, for tests that must show they catch it.</summary>
    internal CheckpointFault Fault { get; init; }
}

/// <summary>Deliberate breaks of the checkpoint order (docs/FORMAT.md, "Consistency"), for tests only.</summary>
internal enum CheckpointFault
{
    None,

    /// <summary>A checkpoint publishes its entries before its data fsync (step 3 after step 4).</summary>
    PublishBeforeDataFsync,

    /// <summary>A commit frees the replaced pblks before the lbat fsync (step 6 before steps 4 and 5).</summary>
    FreeBeforeCommitFsync,
}
