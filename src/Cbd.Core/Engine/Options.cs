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
    /// Whether the pblks the device frees go back to the backing store (a hole punched in a file, a discard on a block
    /// device), once nothing durable names them: the store then holds about what the data compresses to.
    /// </summary>
    public DiscardMode Discard { get; init; } = DiscardMode.Unmap;

    /// <summary>
    /// Takes <see cref="CacheBytes"/> as it is, below the floor of 4 lblks per compression thread plus 8
    /// that the device otherwise keeps, so that tests can hold write-back under memory pressure.
    /// </summary>
    internal bool ExactCacheSize { get; init; }

    /// <summary>An ordering bug to inject into the checkpoints, for tests that must show they catch it.</summary>
    internal CheckpointFault Fault { get; init; }
}

/// <summary>What becomes of freed pblks in the backing store (qemu's discard=unmap|ignore).</summary>
public enum DiscardMode
{
    /// <summary>Punched out of a file, discarded on a block device, after the commit that frees them.</summary>
    Unmap,

    /// <summary>Left as they are: the store keeps the space until the pblks are written again.</summary>
    Ignore,
}

/// <summary>Deliberate breaks of the checkpoint order (docs/FORMAT.md, "Consistency"), for tests only.</summary>
internal enum CheckpointFault
{
    None,

    /// <summary>A checkpoint publishes its entries before its data fsync (step 3 after step 4).</summary>
    PublishBeforeDataFsync,

    /// <summary>A commit frees the replaced pblks before the lbat fsync (step 6 before steps 4 and 5).</summary>
    FreeBeforeCommitFsync,

    /// <summary>A commit punches the replaced pblks before the lbat writes and fsync (the punch of step 6 before steps 4 and 5).</summary>
    PunchBeforeCommitFsync,

    /// <summary>A commit moves the write log's tail past the records it merged before the lbat writes and fsync that make the merge durable.</summary>
    RetireBeforeCommitFsync,

    /// <summary>A write of a whole lblk goes to the cache although the lblk has live log records, which a replay then applies over it.</summary>
    WholeWriteOverLiveRecords,

    /// <summary>A punch gives the pblks it claimed back to the allocator before punching them, so a write-back may take one and see its data punched.</summary>
    FreeBeforePunch,
}
