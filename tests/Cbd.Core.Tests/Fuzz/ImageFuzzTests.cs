using System.Buffers.Binary;
using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;
using CsCheck;
using Xunit.Abstractions;

namespace Cbd.Core.Tests.Fuzz;

/// <summary>
/// Fuzz targets for image open, check and repair: a small valid image whose header, lbat and pbat pblks
/// are mutated, then opened read-only and read-write, read whole, written, flushed, closed, reopened,
/// checked and repaired. Asserted: no exception but the documented ones (InvalidDataException at open,
/// LblkCorruptException for a damaged lblk, OutOfSpaceException for a write), no hang, no lblk whose
/// entry was left alone returning anything but its contents, and repair leaving an image that checks
/// clean. Each run is short inside the suite; CBD_FUZZ_SECONDS runs each target that many seconds.
/// </summary>
public class ImageFuzzTests(ITestOutputHelper output)
{
    private const int LblkSize = 65536;
    private const int Lblks = 256;
    private static readonly TimeSpan s_hang = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Two zones of 128 lblks; zone 1 has 50 data pblks. lblks 0..19 compressible, 20..23 random (stored
    /// uncompressed), 128..134 at home in zone 1 (which fills, so they spill into zone 0), 200 and 255 a
    /// single pblk each; closed clean.
    /// </summary>
    private static readonly Lazy<Task<BaseImage>> s_base = new(BuildAsync);

    private sealed record BaseImage(MemoryBackingStore Store, Geometry Geometry, byte[]?[] Contents);

    private static async Task<BaseImage> BuildAsync()
    {
        long physical = (32777L + 48) * Layout.PblkSize;
        var store = new MemoryBackingStore(physical);
        await ImageFormatter.FormatAsync(store, new FormatOptions { LogicalSize = (long)Lblks * LblkSize });
        var contents = new byte[]?[Lblks];
        for (int lblk = 0; lblk < 20; lblk++)
            contents[lblk] = DeviceTestKit.Compressible(LblkSize, lblk);
        for (int lblk = 20; lblk < 24; lblk++)
            contents[lblk] = DeviceTestKit.Random(LblkSize, lblk);
        for (int lblk = 128; lblk < 134; lblk++)
            contents[lblk] = DeviceTestKit.Compressible(LblkSize, lblk);
        contents[134] = DeviceTestKit.Random(LblkSize, 134);
        contents[200] = Small(200);
        contents[255] = Small(255);
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            for (int lblk = 0; lblk < Lblks; lblk++)
            {
                if (contents[lblk] is { } data)
                    await device.WriteAsync((long)lblk * LblkSize, data);
            }
        }
        var geometry = await Geometry.ReadAsync(store);
        Assert.Equal(2u, geometry.NrZones);
        Assert.Equal(50, geometry.DataPblks(1));
        return new BaseImage(store, geometry, contents);
    }

    private static byte[] Small(int seed)
    {
        var data = new byte[LblkSize];
        DeviceTestKit.Random(64, seed).CopyTo(data, 0);
        return data;
    }

    public enum Target { Header, Lbat0, Lbat1, Pbat0, Pbat1 }

    public enum Change { Xor, Zero, CopyEntry }

    public sealed record Mutation(Target Target, Change Change, int Position, byte Value, int From)
    {
        public override string ToString() => Change == Change.CopyEntry
            ? $"entry of lblk {From} copied over lblk {Position % Lblks}"
            : $"{Target}[{Position}] {(Change == Change.Xor ? $"^= 0x{Value:x2}" : "= 0")}";
    }

    public sealed record Write(int Lblk, bool Whole, int Seed, int Kind)
    {
        public override string ToString() => $"write lblk {Lblk} {(Whole ? "whole" : "partial")} kind {Kind} seed {Seed}";
    }

    public sealed record Case(Mutation[] Mutations, bool FixHeaderChecksum, bool MarkDirty, Write[] Writes)
    {
        public override string ToString() =>
            $"{string.Join("; ", Mutations.Select(m => m.ToString()))}{(FixHeaderChecksum ? "; header checksum fixed" : "")}" +
            $"{(MarkDirty ? "; marked dirty" : "")} | {string.Join("; ", Writes.Select(w => w.ToString()))}";
    }

    // Positions favour the bytes that hold something: the used part of pbat 0, the few bits of pbat 1
    // and the bits just past its 50 data pblks, the header's fields.
    private static readonly Gen<Mutation> s_mutation = Gen.Frequency(
        (2, Gen.Select(Gen.Int[0, 0x1FF], Gen.Byte[1, 255], (p, v) => new Mutation(Target.Header, Change.Xor, p, v, 0))),
        (4, Gen.Select(Gen.Enum<Target>().Where(t => t is Target.Lbat0 or Target.Lbat1), Gen.Int[0, 2 * Layout.PblkSize - 1], Gen.Byte[1, 255], Gen.Bool,
            (t, p, v, z) => new Mutation(t, z ? Change.Zero : Change.Xor, p, v, 0))),
        (3, Gen.Select(Gen.OneOf(Gen.Int[0, 63], Gen.Int[0, Layout.PblkSize - 1]), Gen.Byte[1, 255], Gen.Bool,
            (p, v, z) => new Mutation(Target.Pbat0, z ? Change.Zero : Change.Xor, p, v, 0))),
        (2, Gen.Select(Gen.Int[0, 15], Gen.Byte[1, 255], (p, v) => new Mutation(Target.Pbat1, Change.Xor, p, v, 0))),
        (2, Gen.Select(Gen.OneOf(Gen.Int[0, 23], Gen.Int[128, 134]), Gen.Int[0, Lblks - 1],
            (from, to) => new Mutation(Target.Lbat0, Change.CopyEntry, to, 0, from))));

    private static readonly Gen<Write> s_write = Gen.Select(
        Gen.OneOf(Gen.Int[0, 30], Gen.Int[126, 140], Gen.Int[0, Lblks - 1]), Gen.Bool, Gen.Int[0, 10_000], Gen.Int[0, 2],
        (l, w, s, k) => new Write(l, w, s, k));

    private static readonly Gen<Case> s_case = Gen.Select(
        s_mutation.Array[1, 6], Gen.Frequency((1, Gen.Const(true)), (3, Gen.Const(false))), Gen.Frequency((1, Gen.Const(true)), (3, Gen.Const(false))),
        s_write.Array[0, 5],
        (m, f, d, w) => new Case(m, f, d, w));

    /// <summary>Iterations in the suite, or the seconds from CBD_FUZZ_SECONDS; says how many cases ran.</summary>
    private async Task SampleAsync(Gen<Case> gen, Func<Case, Task> run, int iterations)
    {
        int cases = 0;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        Func<Case, Task> counted = c =>
        {
            Interlocked.Increment(ref cases);
            return run(c);
        };
        try
        {
            string? seconds = Environment.GetEnvironmentVariable("CBD_FUZZ_SECONDS");
            if (seconds is not null && int.TryParse(seconds, out int s) && s > 0)
                await gen.SampleAsync(counted, time: s, threads: 1, print: c => c.ToString());
            else
                await gen.SampleAsync(counted, iter: iterations, threads: 1, print: c => c.ToString());
        }
        finally
        {
            output.WriteLine($"{cases} cases in {watch.Elapsed.TotalSeconds:F0} s");
        }
    }

    [Fact]
    public Task Mutated_image_opens_reads_writes_checks_and_repairs() =>
        SampleAsync(s_case, c => RunAsync(c).WaitAsync(s_hang), iterations: 60);

    /// <summary>Header mutations only, their checksum fixed, so that they reach geometry validation.</summary>
    [Fact]
    public Task Mutated_header_with_a_valid_checksum_is_refused_or_served() =>
        SampleAsync(
            Gen.Select(Gen.Select(Gen.Int[0, 0x3F], Gen.Byte[1, 255], (p, v) => new Mutation(Target.Header, Change.Xor, p, v, 0)).Array[1, 3], s_write.Array[0, 3],
                (m, w) => new Case(m, FixHeaderChecksum: true, MarkDirty: false, w)),
            c => RunAsync(c).WaitAsync(s_hang), iterations: 15);

    // What the fuzz targets found, kept as named cases.

    /// <summary>nr_physical_sectors grown to 32 TiB (checksum valid): open refuses, repair extends the store to it.</summary>
    [Fact]
    public Task Header_growing_the_physical_size_past_the_store_is_refused_and_repair_extends_the_store() =>
        RunAsync(new Case([new(Target.Header, Change.Xor, 12, 0x10, 0)], FixHeaderChecksum: true, MarkDirty: false, [new(3, true, 5, 0)]));

    /// <summary>lblk_shift 4 -> 5: entries decode as garbage, each such lblk reads EIO, and a 64 KiB write is partial.</summary>
    [Fact]
    public Task Header_with_another_lblk_shift_fails_only_the_lblks_it_garbles() =>
        RunAsync(new Case([new(Target.Header, Change.Xor, 24, 0x01, 0)], FixHeaderChecksum: true, MarkDirty: false, [new(3, true, 5, 0)]));

    /// <summary>nr_logical_sectors changed (here shrunk): lblks past the new end are simply not there.</summary>
    [Fact]
    public Task Header_with_another_logical_size_serves_and_repairs() =>
        RunAsync(new Case([new(Target.Header, Change.Xor, 17, 0xcc, 0)], FixHeaderChecksum: true, MarkDirty: false,
            [new(15, true, 5455, 1), new(164, true, 9211, 1), new(5, true, 6499, 0)]));

    /// <summary>Bits set past zone 1's 50 data pblks (the previous engine failed every write after them).</summary>
    [Fact]
    public Task Pbat_bits_past_the_data_with_a_partial_write() =>
        RunAsync(new Case([new(Target.Pbat0, Change.Xor, 1610, 0x7e, 0), new(Target.Pbat1, Change.Xor, 11, 0x7f, 0)], FixHeaderChecksum: true, MarkDirty: false,
            [new(193, false, 945, 1), new(130, true, 1, 0)]));

    /// <summary>One case: mutate, then every stage, each asserting what it may and may not do.</summary>
    internal static async Task RunAsync(Case c)
    {
        var image = await s_base.Value;
        var g = image.Geometry;
        var store = image.Store.Clone();
        var damaged = new HashSet<int>();
        bool headerChanged = Mutate(store, g, c, damaged);

        // Read-only first: what every lblk reads before any session changed anything.
        var (before, refused) = await ReadAllAsync(store);
        if (!refused && !headerChanged)
            AssertIntact(image, before, damaged, [], "before the session");

        var expected = new Dictionary<int, byte[]>();
        var unknown = new HashSet<int>();
        if (!refused)
        {
            var lines = new List<string>();
            var device = await CompressedDevice.OpenAsync(new KeepOpen(store), new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Log = lines.Add });
            await using (device)
            {
                foreach (var write in c.Writes)
                {
                    if (write.Lblk * (long)LblkSize >= device.Size)
                        continue;
                    var data = write.Kind switch
                    {
                        0 => DeviceTestKit.Compressible(LblkSize, write.Seed),
                        1 => DeviceTestKit.Random(LblkSize, write.Seed),
                        _ => Small(write.Seed),
                    };
                    long offset = (long)write.Lblk * LblkSize + (write.Whole ? 0 : 4096);
                    var bytes = write.Whole ? data : data.AsMemory(0, 8192);
                    try
                    {
                        await device.WriteAsync(offset, bytes);
                        if (write.Whole)
                        {
                            expected[write.Lblk] = data;
                            unknown.Remove(write.Lblk);
                        }
                        else
                        {
                            expected.Remove(write.Lblk);
                            unknown.Add(write.Lblk);
                        }
                    }
                    catch (LblkCorruptException e) when (headerChanged || (!write.Whole && e.Lblk == write.Lblk && damaged.Contains(write.Lblk)))
                    {
                        // A partial write needs the old contents; with a mutated lblk_shift a 64 KiB write is partial too.
                        expected.Remove(write.Lblk);
                        unknown.Add(write.Lblk);
                    }
                    catch (OutOfSpaceException)
                    {
                        expected.Remove(write.Lblk);
                        unknown.Add(write.Lblk);
                    }
                }
                await device.FlushAsync();
            }
            Assert.DoesNotContain(lines, l => l.Contains("   at ", StringComparison.Ordinal));

            var (after, refusedAfter) = await ReadAllAsync(store);
            Assert.False(refusedAfter, "an image that opened before the session was refused after its clean close");
            foreach (var (lblk, data) in expected)
                Assert.True(after[lblk] is { } back && back.AsSpan().SequenceEqual(data), $"lblk {lblk} does not read what the session wrote");
            if (!headerChanged)
                AssertIntact(image, after, damaged, [.. expected.Keys, .. unknown], "after the session");
        }

        var check = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        var repair = await DeviceRepairer.RepairAsync(new KeepOpen(store), new RepairOptions { Data = true });
        if (!repair.Repaired)
        {
            Assert.Null(check.Geometry);
            return;
        }
        var again = await DeviceChecker.CheckAsync(store, new CheckOptions { Data = true });
        Assert.True(again.Problems.Count == 0, $"after repair: {string.Join("; ", again.Problems.Select(p => p.Message))}");
        var (repaired, refusedRepaired) = await ReadAllAsync(store);
        Assert.False(refusedRepaired, "a repaired image was refused");
        Assert.DoesNotContain(repaired, r => r is null);
        if (!headerChanged && !refused)
        {
            var lost = repair.LostLblks.Select(l => (int)l).ToHashSet();
            foreach (var (lblk, data) in expected)
                Assert.True(lost.Contains(lblk) || repaired[lblk]!.AsSpan().SequenceEqual(data), $"lblk {lblk} lost its new contents in repair");
            AssertIntact(image, repaired, damaged, [.. expected.Keys, .. unknown, .. lost], "after repair");
        }
    }

    /// <summary>Every lblk whose entry was left alone reads its original contents.</summary>
    private static void AssertIntact(BaseImage image, byte[]?[] reads, HashSet<int> damaged, HashSet<int> skip, string when)
    {
        for (int lblk = 0; lblk < Lblks; lblk++)
        {
            if (damaged.Contains(lblk) || skip.Contains(lblk))
                continue;
            var want = image.Contents[lblk] ?? new byte[LblkSize];
            Assert.True(reads[lblk] is { } got && got.AsSpan().SequenceEqual(want),
                $"{when}: lblk {lblk}, whose entry was not damaged, {(reads[lblk] is null ? "fails to read" : "reads other data")}");
        }
    }

    /// <summary>Applies the mutations; returns whether the header changed; fills the lblks whose entries changed.</summary>
    private static bool Mutate(MemoryBackingStore store, Geometry g, Case c, HashSet<int> damaged)
    {
        var entriesBefore = ReadEntries(store, g);
        var headerBefore = new byte[Layout.SectorSize];
        store.Read(0, headerBefore);
        foreach (var m in c.Mutations)
        {
            if (m.Change == Change.CopyEntry)
            {
                var entry = new byte[g.Alloc.EntrySize];
                store.Read(g.EntryByteOffset((ulong)m.From), entry);
                store.Write(g.EntryByteOffset((ulong)(m.Position % Lblks)), entry);
                continue;
            }
            long offset = m.Target switch
            {
                Target.Header => 0,
                Target.Lbat0 => (long)g.LbatStart(0) * Layout.PblkSize,
                Target.Lbat1 => (long)g.LbatStart(1) * Layout.PblkSize,
                Target.Pbat0 => (long)g.ZoneStart(0) * Layout.PblkSize,
                _ => (long)g.ZoneStart(1) * Layout.PblkSize,
            } + m.Position;
            var b = new byte[1];
            store.Read(offset, b);
            b[0] = m.Change == Change.Xor ? (byte)(b[0] ^ m.Value) : (byte)0;
            store.Write(offset, b);
        }
        var header = new byte[Layout.SectorSize];
        store.Read(0, header);
        if (c.FixHeaderChecksum)
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(0x1FC), Checksums.Crc32C(header.AsSpan(0, 0x1FC)));
        bool changed = !header.AsSpan().SequenceEqual(headerBefore);
        if (c.MarkDirty && TryReadHeader(header, out var h))
        {
            var full = new byte[Layout.HeaderSize];
            (h with { Flags = h.Flags | HeaderFlags.Dirty }).Write(full);
            full.AsSpan(0, Layout.SectorSize).CopyTo(header);
        }
        store.Write(0, header);
        var entriesAfter = ReadEntries(store, g);
        for (int lblk = 0; lblk < Lblks; lblk++)
        {
            if (!entriesBefore[lblk].AsSpan().SequenceEqual(entriesAfter[lblk]))
                damaged.Add(lblk);
        }
        return changed;
    }

    private static bool TryReadHeader(byte[] sector, out Header header)
    {
        try
        {
            return Header.TryRead(sector, out header);
        }
        catch (InvalidDataException)
        {
            header = null!;
            return false;
        }
    }

    private static byte[][] ReadEntries(MemoryBackingStore store, Geometry g)
    {
        var entries = new byte[Lblks][];
        for (int lblk = 0; lblk < Lblks; lblk++)
        {
            entries[lblk] = new byte[g.Alloc.EntrySize];
            store.Read(g.EntryByteOffset((ulong)lblk), entries[lblk]);
        }
        return entries;
    }

    /// <summary>Reads every lblk through a read-only open: its bytes, or null for a documented read error.</summary>
    private static async Task<(byte[]?[] Reads, bool Refused)> ReadAllAsync(MemoryBackingStore store)
    {
        var reads = new byte[]?[Lblks];
        CompressedDevice device;
        try
        {
            device = await CompressedDevice.OpenAsync(new KeepOpen(store), new DeviceOptions { ReadOnly = true });
        }
        catch (InvalidDataException)
        {
            return (reads, true);
        }
        await using (device)
        {
            int lblks = (int)Math.Min(Lblks, device.Size / LblkSize);
            // Past a logical size that a mutated header shrank: nothing to read, and no error either.
            for (int lblk = lblks; lblk < Lblks; lblk++)
                reads[lblk] = [];
            for (int lblk = 0; lblk < lblks; lblk++)
            {
                var back = new byte[LblkSize];
                try
                {
                    await device.ReadAsync((long)lblk * LblkSize, back);
                    reads[lblk] = back;
                }
                catch (LblkCorruptException e) when (e.Lblk >= (long)lblk * LblkSize / device.BlockSize && e.Lblk <= ((long)lblk * LblkSize + LblkSize - 1) / device.BlockSize)
                {
                    // A mutated lblk_shift makes the device's lblks other than these 64 KiB reads.
                }
            }
        }
        return (reads, false);
    }

    /// <summary>
    /// Lets the store outlive the device that owns it. Zeroing is clipped to what was ever written: past
    /// that the memory store already reads zeros, and a repair that extends it to a header's terabytes
    /// would otherwise walk every 64 KiB chunk of the range.
    /// </summary>
    private sealed class KeepOpen(MemoryBackingStore inner) : IBackingStore
    {
        private long _written = inner.Length;

        public long Length => inner.Length;
        public bool CanWrite => inner.CanWrite;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(offset, buffer, cancellationToken);

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
        {
            _written = Math.Max(_written, offset + data.Length);
            return inner.WriteAsync(offset, data, cancellationToken);
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);

        public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) =>
            offset >= _written ? ValueTask.CompletedTask : inner.ZeroRangeAsync(offset, Math.Min(length, _written - offset), cancellationToken);

        public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default)
        {
            _written = Math.Min(_written, length);
            return inner.SetLengthAsync(length, cancellationToken);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
