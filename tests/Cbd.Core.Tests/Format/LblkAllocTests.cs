using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

/// <summary>
/// <see cref="LblkAlloc.TryValidate"/> against a model written from docs/FORMAT.md's rules ("lblk_alloc
/// entries", "Geometry"), not from the code: every entry the model calls valid decodes, every other one
/// fails with the fault the model expects first.
/// </summary>
public class LblkAllocTests
{
    private const long Physical = 600L << 20; // 153600 pblks: five zones, the last one partial
    private static readonly Geometry s_geometry = Geometry.FromHeader(ImageFormatter.Plan(Physical, new FormatOptions()), Physical);

    /// <summary>The data pblks of every zone, from the zone table of FORMAT.md.</summary>
    private static bool IsDataPblk(Geometry g, ulong pblk)
    {
        ulong stride = 1 + g.LbatPblks + 32768;
        for (ulong z = 0; z < g.NrZones; z++)
        {
            ulong data = 1 + z * stride + 1 + g.LbatPblks;
            ulong count = Math.Min(32768, g.NrPblks - data);
            if (pblk >= data && pblk < data + count)
                return true;
        }
        return false;
    }

    private static LblkAllocFault Expected(Geometry g, uint length, uint crc, ulong[] slots)
    {
        int n = slots.Length;
        uint uncompressed = 0xFFFF; // 64 KiB lblks: a 16-bit length
        if (length == 0)
            return slots.All(s => s == 0) && crc == 0 ? LblkAllocFault.None : LblkAllocFault.UnallocatedNotZero;
        if (length != uncompressed && (length < 2 || length > 65536 - 4096))
            return LblkAllocFault.BadLength;
        int used = length == uncompressed ? n : (int)((length + 4095) / 4096);
        for (int i = 0; i < n; i++)
        {
            ulong p = slots[i];
            if (i >= used)
            {
                if (p != 0)
                    return LblkAllocFault.UnusedSlotNotZero;
                continue;
            }
            if (p >= g.NrPblks)
                return LblkAllocFault.PblkOutsideDevice;
            if (!IsDataPblk(g, p))
                return LblkAllocFault.PblkInMetadata;
            if (slots.Take(i).Contains(p))
                return LblkAllocFault.PblkRepeated;
        }
        return LblkAllocFault.None;
    }

    private static Gen<ulong> Pblk(Geometry g) => Gen.Frequency(
        (4, Gen.ULong[g.DataStart(0), g.NrPblks - 1]),                     // mostly data, sometimes metadata of a later zone
        (2, Gen.ULong[g.DataStart(0), g.DataStart(0) + 40]),               // small range: repeats
        (1, Gen.Const(0UL)),                                               // the header (or an unused slot)
        (1, Gen.ULong[g.ZoneStart(1), g.DataStart(1) - 1]),                // zone 1's pbat and lbat
        (1, Gen.ULong[g.NrPblks, ulong.MaxValue >> 16]));                  // past the device

    private static readonly Gen<(uint Length, uint Crc, ulong[] Slots)> s_entry = Gen.Select(
        Gen.Frequency((2, Gen.Const(0u)), (1, Gen.Const(1u)), (2, Gen.Const(0xFFFFu)), (6, Gen.UInt[2, 61440]), (1, Gen.UInt[61441, 0xFFFE])),
        Gen.Frequency((3, Gen.Const(0u)), (1, Gen.UInt)),
        Pblk(s_geometry).Array[16],
        Gen.Int[0, 16])
        .Select((length, crc, slots, zeroFrom) =>
        {
            // Most entries have their unused slots zero, as a writer leaves them.
            if (zeroFrom > 0)
                Array.Clear(slots, Math.Min(zeroFrom, slots.Length), slots.Length - Math.Min(zeroFrom, slots.Length));
            if (length == 0 && zeroFrom > 8)
                Array.Clear(slots);
            return (length, crc, slots);
        });

    [Fact]
    public void TryDecode_agrees_with_the_format_rules_on_every_entry()
    {
        var g = s_geometry;
        Assert.True(g.NrZones >= 3, "the geometry needs zones beyond the first");
        s_entry.Sample(e =>
        {
            var expected = Expected(g, e.Length, e.Crc, e.Slots);
            bool ok = LblkAlloc.TryDecode(g, e.Length, e.Crc, e.Slots, out var alloc, out var error);
            Assert.Equal(expected, error.Fault);
            Assert.Equal(expected == LblkAllocFault.None, ok);
            if (!ok)
                return;
            Assert.Equal(e.Length, alloc.Length);
            Assert.Equal(e.Length == 0 ? 0u : e.Crc, alloc.Crc);
            Assert.Equal(g.Alloc.PblksFor(e.Length), alloc.Pblks.Length);
            Assert.Equal(e.Slots.Take(alloc.Pblks.Length), alloc.Pblks.ToArray());
        }, iter: 20_000);
    }

    [Fact]
    public void An_encoded_entry_decodes_to_itself()
    {
        var g = s_geometry;
        // Valid entries: a valid length, and distinct data pblks of a full zone in the used slots.
        var valid = Gen.Select(Gen.Frequency((1, Gen.Const(0xFFFFu)), (4, Gen.UInt[2, 61440])), Gen.UInt, Gen.UInt[0, 2], Gen.Int[0, 32767], Gen.Int[1, 2000])
            .Select((length, crc, zone, start, step) =>
            {
                int used = g.Alloc.PblksFor(length);
                var slots = new ulong[16];
                for (int i = 0; i < used; i++)
                    slots[i] = g.DataStart(zone) + (ulong)((start + i * step) % 32768);
                return (Length: length, Crc: crc, Slots: slots);
            });
        valid.Sample(e =>
        {
            var bytes = new byte[g.Alloc.EntrySize];
            var slots = new ulong[g.Alloc.PblksPerLblk];
            Assert.True(LblkAlloc.TryDecode(g, e.Length, e.Crc, e.Slots, out var alloc, out _));
            alloc.Encode(g.Alloc, bytes);
            Assert.True(LblkAlloc.TryDecode(g, bytes, slots, out var back, out _));
            Assert.Equal((alloc.Length, alloc.Crc), (back.Length, back.Crc));
            Assert.Equal(alloc.Pblks.ToArray(), back.Pblks.ToArray());
        }, iter: 2_000);
    }

    public static TheoryData<uint, ulong[], LblkAllocFault, string> FaultCases()
    {
        var g = s_geometry;
        ulong d = g.DataStart(0);
        ulong[] Slots(params ulong[] used) => [.. used, .. new ulong[16 - used.Length]];
        return new()
        {
            { 0, Slots(d), LblkAllocFault.UnallocatedNotZero, "lblk 3: unallocated entry with non-zero pblk or crc fields" },
            { 1, Slots(d), LblkAllocFault.BadLength, "lblk 3: lblk_alloc length 1: expected 0 (unallocated), 2..61440 (compressed) or 0xFFFF (uncompressed)" },
            { 61441, Slots(d), LblkAllocFault.BadLength, "lblk 3: lblk_alloc length 61441: expected 0 (unallocated), 2..61440 (compressed) or 0xFFFF (uncompressed)" },
            { 5000, Slots(d, g.NrPblks), LblkAllocFault.PblkOutsideDevice, $"lblk 3: lblk_alloc pblk[1] = {g.NrPblks} is not a data pblk of the device" },
            { 5000, Slots(d, g.ZoneStart(1)), LblkAllocFault.PblkInMetadata, $"lblk 3: lblk_alloc pblk[1] = {g.ZoneStart(1)} is not a data pblk of the device" },
            { 5000, Slots(d, d), LblkAllocFault.PblkRepeated, $"lblk 3: lblk_alloc pblk[0] and pblk[1] are both {d}" },
            { 5000, Slots(d, d + 1, 9), LblkAllocFault.UnusedSlotNotZero, "lblk 3: lblk_alloc pblk[2] = 9, expected 0 past the 2 pblks of length 5000" },
        };
    }

    [Theory]
    [MemberData(nameof(FaultCases))]
    public void Each_fault_is_named_with_its_field_and_value(uint length, ulong[] slots, LblkAllocFault fault, string message)
    {
        Assert.False(LblkAlloc.TryDecode(s_geometry, length, 0, slots, out _, out var error));
        Assert.Equal(fault, error.Fault);
        Assert.Equal(message, error.Describe(s_geometry, 3));
    }

    [Fact]
    public void Decoding_allocates_nothing()
    {
        var g = s_geometry;
        var bytes = new byte[g.Alloc.EntrySize];
        var slots = new ulong[g.Alloc.PblksPerLblk];
        new LblkAlloc(0xFFFF, 7, Enumerable.Range(0, 16).Select(i => g.DataStart(0) + (ulong)i).ToArray()).Encode(g.Alloc, bytes);
        Assert.True(LblkAlloc.TryDecode(g, bytes, slots, out _, out _));
        // The JIT's own work while it recompiles the loop (tiering, on-stack replacement) is counted against this thread
        // too: a round of 1000 decodes is measured again once warm, and the steady state must allocate nothing.
        long allocated = -1;
        ulong sum = 0;
        for (int round = 0; round < 5 && allocated != 0; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            sum += DecodeMany(g, bytes, slots);
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        Assert.Equal(0, allocated);
        Assert.NotEqual(0UL, sum);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static ulong DecodeMany(Geometry g, byte[] bytes, ulong[] slots)
    {
        ulong sum = 0;
        for (int i = 0; i < 1000; i++)
        {
            LblkAlloc.TryDecode(g, bytes, slots, out var alloc, out _);
            foreach (ulong p in alloc.Pblks)
                sum += p;
        }
        return sum;
    }

    [Fact]
    public void Pblks_print_as_a_comma_separated_list()
    {
        var alloc = new LblkAlloc(5000, 0, new ulong[] { 7, 8 });
        Assert.Equal("7,8", string.Join(',', alloc.Pblks));
        Assert.Equal("7,8", $"{alloc.Pblks}");
    }
}
