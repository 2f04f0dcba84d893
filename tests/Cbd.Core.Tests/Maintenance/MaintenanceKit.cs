using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;

namespace Cbd.Core.Tests.Maintenance;

/// <summary>Images with known contents on in-memory stores, and the raw access that damages them.</summary>
internal static class MaintenanceKit
{
    public const long MiB = 1 << 20;

    public static async Task<MemoryBackingStore> FormatAsync(long physical, FormatOptions? options = null)
    {
        var store = new MemoryBackingStore(physical);
        await ImageFormatter.FormatAsync(store, options ?? new FormatOptions());
        return store;
    }

    public static ValueTask<CompressedDevice> OpenAsync(IBackingStore store, DeviceOptions? options = null) =>
        DeviceTestKit.OpenAsync(store, options);

    /// <summary>Writes each lblk of <paramref name="model"/> whole and closes the device cleanly.</summary>
    public static async Task WriteAsync(IBackingStore store, IReadOnlyDictionary<long, byte[]> model)
    {
        await using var device = await OpenAsync(store);
        foreach (var (lblk, data) in model)
            await device.WriteAsync(lblk * device.BlockSize, data);
    }

    /// <summary>Reads every lblk of the model back through a device: lost ones must read as zeros, the rest as written.</summary>
    public static async Task VerifyAsync(IBackingStore store, IReadOnlyDictionary<long, byte[]> model, IReadOnlyCollection<ulong>? lost = null)
    {
        // Read-only: a read-write open would itself rebuild a dirty image and close it clean.
        await using var device = await OpenAsync(store, new DeviceOptions { ReadOnly = true });
        var back = new byte[device.BlockSize];
        foreach (var (lblk, data) in model)
        {
            await device.ReadAsync(lblk * device.BlockSize, back);
            if (lost is not null && lost.Contains((ulong)lblk))
                Assert.False(back.AsSpan().ContainsAnyExcept((byte)0), $"lost lblk {lblk} does not read as zeros");
            else
                Assert.True(data.AsSpan().SequenceEqual(back), $"lblk {lblk} does not read back what was written");
        }
    }

    public static async Task<(Header Header, Geometry Geometry)> ReadGeometryAsync(IBackingStore store)
    {
        var page = new byte[Layout.HeaderSize];
        await store.ReadAsync(0, page);
        Assert.True(Header.TryRead(page, out var header));
        return (header, Geometry.FromHeader(header, Math.Max(store.Length, (long)header.NrPhysicalSectors * Layout.SectorSize)));
    }

    public static async Task WriteHeaderAsync(IBackingStore store, Header header)
    {
        var page = new byte[Layout.HeaderSize];
        header.Write(page);
        await store.WriteAsync(0, page.AsMemory(0, Layout.SectorSize));
    }

    public sealed record RawEntry(ulong[] Slots, uint Length, uint Crc)
    {
        public int Used(Geometry g) => g.Alloc.PblksFor(Length);
    }

    public static async Task<RawEntry> ReadEntryAsync(IBackingStore store, Geometry g, ulong lblk)
    {
        var bytes = new byte[g.Alloc.EntrySize];
        await store.ReadAsync(g.EntryByteOffset(lblk), bytes);
        var slots = new ulong[g.Alloc.PblksPerLblk];
        g.Alloc.Read(bytes, slots, out uint length, out uint crc);
        return new RawEntry(slots, length, crc);
    }

    public static async Task WriteEntryAsync(IBackingStore store, Geometry g, ulong lblk, RawEntry entry)
    {
        var bytes = new byte[g.Alloc.EntrySize];
        g.Alloc.Write(bytes, entry.Slots, entry.Length, entry.Crc);
        await store.WriteAsync(g.EntryByteOffset(lblk), bytes);
    }

    /// <summary>Sets or clears the pbat bit of a data pblk.</summary>
    public static async Task SetPbatBitAsync(IBackingStore store, Geometry g, uint zone, int bit, bool value)
    {
        long offset = (long)g.ZoneStart(zone) * Layout.PblkSize + bit / 8;
        var b = new byte[1];
        await store.ReadAsync(offset, b);
        b[0] = value ? (byte)(b[0] | 1 << (bit % 8)) : (byte)(b[0] & ~(1 << (bit % 8)));
        await store.WriteAsync(offset, b);
    }

    public static byte[] Compressible(int length, int seed) => DeviceTestKit.Compressible(length, seed);

    public static byte[] Random(int length, int seed) => DeviceTestKit.Random(length, seed);
}

/// <summary>
/// A store that dies after a number of changes and then yields what a power cut could leave: every
/// change made durable by a completed flush, plus any subset, in order, of the changes after it.
/// Length changes are taken as durable at once.
/// </summary>
internal sealed class CrashingStore(MemoryBackingStore image, int changesBeforeCrash) : IBackingStore
{
    private readonly MemoryBackingStore _live = image.Clone();
    private readonly MemoryBackingStore _durable = image.Clone();
    private readonly List<Action<MemoryBackingStore>> _pending = [];
    private int _left = changesBeforeCrash;

    /// <summary>Changes made before the crash (all of them when none came).</summary>
    public int Changes { get; private set; }
    public bool Crashed { get; private set; }
    public long Length => _live.Length;
    public bool CanWrite => true;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => _live.ReadAsync(offset, buffer, cancellationToken);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        Tick();
        byte[] copy = data.ToArray();
        _live.Write(offset, copy);
        _pending.Add(s => s.Write(offset, copy));
        return ValueTask.CompletedTask;
    }

    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        Tick();
        _live.ZeroRangeAsync(offset, length).GetAwaiter().GetResult();
        _pending.Add(s => s.ZeroRangeAsync(offset, length).GetAwaiter().GetResult());
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (Crashed)
            throw new IOException("simulated power cut");
        foreach (var change in _pending)
            change(_durable);
        _pending.Clear();
        return ValueTask.CompletedTask;
    }

    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default)
    {
        Tick();
        _live.SetLengthAsync(length).GetAwaiter().GetResult();
        _durable.SetLengthAsync(length).GetAwaiter().GetResult();
        return ValueTask.CompletedTask;
    }

    /// <summary>One image the crash could have left.</summary>
    public MemoryBackingStore AfterCrash(Random random)
    {
        var image = _durable.Clone();
        foreach (var change in _pending)
        {
            if (random.Next(2) == 0)
                change(image);
        }
        return image;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private void Tick()
    {
        if (Crashed || _left-- <= 0)
        {
            Crashed = true;
            throw new IOException("simulated power cut");
        }
        Changes++;
    }
}
