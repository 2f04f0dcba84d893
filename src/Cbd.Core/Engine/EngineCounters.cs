namespace Cbd.Core.Engine;

/// <summary>
/// Running totals of a <see cref="CompressedDevice"/> since it was opened, for monitoring beside the usage figures of
/// <see cref="DeviceStats"/>: how often the lblk cache served an access, and the checkpoints that wrote dirty lblks back.
/// Each update is one interlocked add; nothing here is persisted.
/// </summary>
public sealed class EngineCounters
{
    private long _cacheHits;
    private long _cacheMisses;
    private long _logMerges;
    private long _fastWriteBacks;
    private long _patches;
    private long _recompressions;

    /// <summary>Accesses to an lblk (a read, a partial write, a prefetch) that found it in the cache, decompressed.</summary>
    public long CacheHits => Volatile.Read(ref _cacheHits);

    /// <summary>Accesses to an lblk that had to look up its lblk_alloc entry and, when allocated, read and decompress it.</summary>
    public long CacheMisses => Volatile.Read(ref _cacheMisses);

    /// <summary>lblks loaded with their write log records to be written back with them (each one compression for all it gathered).</summary>
    public long LogMerges => Volatile.Read(ref _logMerges);

    /// <summary>lblks written back with the fast codec, merged while the write log was under pressure.</summary>
    public long FastWriteBacks => Volatile.Read(ref _fastWriteBacks);

    /// <summary>
    /// Of <see cref="FastWriteBacks"/>, those stored patched: their records written as patches over the stored form they had,
    /// nothing decompressed or compressed (docs/FORMAT.md, "Patched lblks").
    /// </summary>
    public long Patches => Volatile.Read(ref _patches);

    /// <summary>lblks stored with the fast codec that an idle device took to recompress with its own.</summary>
    public long Recompressions => Volatile.Read(ref _recompressions);

    /// <summary>Checkpoints committed, each from the start of its write-back to its commit; its count is the number of checkpoints.</summary>
    public DurationHistogram Checkpoints { get; } = new(DurationHistogram.CheckpointBounds);

    internal void CountMerge() => Interlocked.Increment(ref _logMerges);

    internal void CountFastWriteBack() => Interlocked.Increment(ref _fastWriteBacks);

    internal void CountPatch() => Interlocked.Increment(ref _patches);

    internal void CountRecompression() => Interlocked.Increment(ref _recompressions);

    internal void CountLookup(bool hit) => Interlocked.Increment(ref hit ? ref _cacheHits : ref _cacheMisses);
}
