using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

public class LblkAllocFormatTests
{
    private const ulong Pblks16 = 1UL << 16;          // largest device with 16-bit pblk numbers
    private const ulong Pblks32 = 1UL << 32;          // largest device with 32-bit pblk numbers
    private const ulong Pblks48 = 1UL << 48;          // largest device the format allows

    /// <summary>A device size (in pblks) for each pblk width.</summary>
    private static ulong DeviceOf(int pblkBits) => pblkBits switch { 16 => 1000, 32 => Pblks16 + 1, _ => Pblks32 + 1 };

    private static ulong MaxPblk(int pblkBits) => pblkBits == 48 ? (1UL << 48) - 1 : (1UL << pblkBits) - 1;

    public static TheoryData<int, int, int, bool> AllEncodings()
    {
        var data = new TheoryData<int, int, int, bool>();
        foreach (int shift in new[] { 0, 1, 4, 5, 6 })
        {
            foreach (int pblkBits in new[] { 16, 32, 48 })
            {
                data.Add(shift <= 4 ? 16 : 32, pblkBits, shift, false);
                data.Add(shift <= 4 ? 16 : 32, pblkBits, shift, true);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(AllEncodings))]
    public void Entry_size_is_length_plus_one_pblk_number_per_pblk_plus_crc(int lengthBits, int pblkBits, int shift, bool crc)
    {
        var format = new LblkAllocFormat(shift, DeviceOf(pblkBits), crc);
        int n = 1 << shift;
        Assert.Equal(lengthBits, format.LengthBits);
        Assert.Equal(pblkBits, format.PblkBits);
        Assert.Equal($"lblk_alloc_{lengthBits}_{pblkBits}", format.Name);
        Assert.Equal(lengthBits / 8 + pblkBits / 8 * n + (crc ? 4 : 0), format.EntrySize);
        Assert.Equal(512 / format.EntrySize, format.EntriesPerSector);
        Assert.Equal(n, format.PblksPerLblk);
        Assert.Equal(4096 << shift, format.LblkSize);
        Assert.Equal((4096 << shift) - 4096, format.MaxCompressedLength);
        Assert.Equal(lengthBits == 16 ? 0xFFFFu : 0xFFFFFFFFu, format.UncompressedLength);
    }

    [Theory]
    [InlineData(8, 65536UL, false)]
    [InlineData(7, 65537UL, false)]
    [InlineData(7, (1UL << 32) + 1, true)]
    public void Entry_too_large_for_a_sector_has_no_entries_per_sector(int shift, ulong nrPblks, bool crc)
    {
        var format = new LblkAllocFormat(shift, nrPblks, crc);
        Assert.True(format.EntrySize > 512);
        Assert.Equal(0, format.EntriesPerSector);
    }

    public static TheoryData<int, ulong, bool, uint, ulong[], uint, string> GoldenEntries() => new()
    {
        // lblk_alloc_16_16: u16 length, u16 pblks
        { 1, 1000, false, 0x1234, [0xABCD, 0x0102], 0, "3412" + "CDAB" + "0201" },
        { 1, 1000, true, 0x1234, [0xABCD, 0x0102], 0xDEADBEEF, "3412" + "CDAB" + "0201" + "EFBEADDE" },
        // lblk_alloc_16_32: u16 length, u32 pblks
        { 1, Pblks16 + 1, false, 0x1234, [0x89ABCDEF, 0x01020304], 0, "3412" + "EFCDAB89" + "04030201" },
        { 1, Pblks16 + 1, true, 0x1234, [0x89ABCDEF, 0x01020304], 0xDEADBEEF, "3412" + "EFCDAB89" + "04030201" + "EFBEADDE" },
        // lblk_alloc_16_48: u16 length, pblks as u32 low then u16 high (6 bytes little-endian)
        { 1, Pblks32 + 1, false, 0x1234, [0xA1B2C3D4E5F6, 0x010203040506], 0, "3412" + "F6E5D4C3B2A1" + "060504030201" },
        { 1, Pblks32 + 1, true, 0x1234, [0xA1B2C3D4E5F6, 0x010203040506], 0xDEADBEEF, "3412" + "F6E5D4C3B2A1" + "060504030201" + "EFBEADDE" },
        // lblk_alloc_32_16: u32 length, 32 pblk slots of u16 (two used here, the rest zero)
        { 5, 1000, false, 0x00012345, [0xABCD, 0x0102], 0, "45230100" + "CDAB" + "0201" + Zeros(30 * 2) },
        { 5, 1000, true, 0x00012345, [0xABCD, 0x0102], 0xDEADBEEF, "45230100" + "CDAB" + "0201" + Zeros(30 * 2) + "EFBEADDE" },
        // lblk_alloc_32_32
        { 5, Pblks16 + 1, false, 0x00012345, [0x89ABCDEF, 0x01020304], 0, "45230100" + "EFCDAB89" + "04030201" + Zeros(30 * 4) },
        { 5, Pblks16 + 1, true, 0x00012345, [0x89ABCDEF, 0x01020304], 0xDEADBEEF, "45230100" + "EFCDAB89" + "04030201" + Zeros(30 * 4) + "EFBEADDE" },
        // lblk_alloc_32_48
        { 5, Pblks32 + 1, false, 0x00012345, [0xA1B2C3D4E5F6, 0x010203040506], 0, "45230100" + "F6E5D4C3B2A1" + "060504030201" + Zeros(30 * 6) },
        { 5, Pblks32 + 1, true, 0x00012345, [0xA1B2C3D4E5F6, 0x010203040506], 0xDEADBEEF, "45230100" + "F6E5D4C3B2A1" + "060504030201" + Zeros(30 * 6) + "EFBEADDE" },
        // the uncompressed marker of each length width
        { 0, 1000, false, 0xFFFF, [0x0007], 0, "FFFF" + "0700" },
        { 5, 1000, false, 0xFFFFFFFF, [1, 2], 0, "FFFFFFFF" + "0100" + "0200" + Zeros(30 * 2) },
    };

    private static string Zeros(int bytes) => new('0', bytes * 2);

    [Theory]
    [MemberData(nameof(GoldenEntries))]
    public void Golden_bytes_of_one_entry_per_encoding(int shift, ulong nrPblks, bool crc, uint length, ulong[] pblks, uint checksum, string hex)
    {
        var format = new LblkAllocFormat(shift, nrPblks, crc);
        byte[] expected = Convert.FromHexString(hex);
        Assert.Equal(expected.Length, format.EntrySize);

        var entry = new byte[format.EntrySize + 8];
        entry.AsSpan().Fill(0xEE);
        format.Write(entry, pblks, length, checksum);
        Assert.Equal(expected, entry[..format.EntrySize]);
        Assert.All(entry[format.EntrySize..], b => Assert.Equal(0xEE, b)); // never writes past its entry

        var slots = new ulong[format.PblksPerLblk];
        format.Read(expected, slots, out uint readLength, out uint readCrc);
        Assert.Equal(length, readLength);
        Assert.Equal(crc ? checksum : 0, readCrc);
        Assert.Equal(pblks, slots[..pblks.Length]);
        Assert.All(slots[pblks.Length..], p => Assert.Equal(0UL, p));
    }

    private sealed record EntryCase(int Shift, int PblkBits, bool Crc, uint Length, ulong[] Pblks, uint Checksum)
    {
        public LblkAllocFormat Format => new(Shift, DeviceOf(PblkBits), Crc);
    }

    private static Gen<ulong> PblkGen(int bits) =>
        Gen.Frequency((1, Gen.Const(0UL)), (1, Gen.Const(1UL)), (2, Gen.Const(MaxPblk(bits))), (6, Gen.ULong[0, MaxPblk(bits)]));

    private static Gen<uint> LengthGen(LblkAllocFormat f) =>
        Gen.Frequency(
            (1, Gen.Const(0u)), (1, Gen.Const(2u)), (1, Gen.Const((uint)f.MaxCompressedLength)), (1, Gen.Const(f.UncompressedLength)),
            (4, Gen.UInt[0, f.UncompressedLength]));

    private static readonly Gen<EntryCase> s_entries =
        Gen.Select(Gen.Int[0, 7], Gen.OneOf(16, 32, 48), Gen.Bool)
            .Where(t => t.Item1 <= LblkAllocFormat.MaxLblkShift(DeviceOf(t.Item2), t.Item3))
            .SelectMany(t =>
            {
                var (shift, bits, crc) = t;
                var format = new LblkAllocFormat(shift, DeviceOf(bits), crc);
                return Gen.Select(LengthGen(format), PblkGen(bits).Array[format.PblksPerLblk], Gen.UInt,
                    (length, pblks, checksum) => new EntryCase(shift, bits, crc, length, pblks, crc ? checksum : 0));
            });

    [Fact]
    public void Every_encoding_round_trips_any_entry()
    {
        s_entries.Sample(c =>
        {
            var format = c.Format;
            var entry = new byte[format.EntrySize];
            format.Write(entry, c.Pblks, c.Length, c.Checksum);
            var slots = new ulong[format.PblksPerLblk];
            format.Read(entry, slots, out uint length, out uint crc);
            Assert.Equal(c.Length, length);
            Assert.Equal(c.Checksum, crc);
            Assert.Equal(c.Pblks, slots);
        }, iter: 3000);
    }

    [Theory]
    [InlineData(16)]
    [InlineData(32)]
    [InlineData(48)]
    public void Largest_pblk_number_of_each_width_round_trips(int bits)
    {
        var format = new LblkAllocFormat(1, DeviceOf(bits), withCrc: true);
        ulong max = MaxPblk(bits);
        var entry = new byte[format.EntrySize];
        format.Write(entry, [max, max - 1], format.UncompressedLength, 0xFFFFFFFF);
        var slots = new ulong[2];
        format.Read(entry, slots, out uint length, out uint crc);
        Assert.Equal([max, max - 1], slots);
        Assert.Equal(format.UncompressedLength, length);
        Assert.Equal(0xFFFFFFFFu, crc);
    }

    [Fact]
    public void Short_pblk_list_writes_zero_slots()
    {
        var format = new LblkAllocFormat(2, DeviceOf(48), withCrc: false);
        var entry = new byte[format.EntrySize];
        entry.AsSpan().Fill(0xEE);
        format.Write(entry, [5], 100, 0);
        var slots = new ulong[4];
        format.Read(entry, slots, out _, out _);
        Assert.Equal([5UL, 0, 0, 0], slots);
    }

    [Theory]
    [InlineData(0UL, 16)]
    [InlineData(1UL, 16)]
    [InlineData(65536UL, 16)]
    [InlineData(65537UL, 32)]
    [InlineData(1UL << 32, 32)]
    [InlineData((1UL << 32) + 1, 48)]
    [InlineData(1UL << 48, 48)]
    public void Pblk_width_switches_exactly_when_the_last_pblk_number_no_longer_fits(ulong nrPblks, int bits)
    {
        Assert.Equal(bits, LblkAllocFormat.PblkBitsFor(nrPblks));
    }

    [Theory]
    [InlineData(1UL, false, 7)]
    [InlineData(1UL, true, 7)]
    [InlineData(65536UL, false, 7)]
    [InlineData(65536UL, true, 7)]      // 8 + 2 * 128 = 264 bytes: 512 KiB lblks
    [InlineData(65537UL, false, 6)]
    [InlineData(65537UL, true, 6)]      // 8 + 4 * 64 = 264 bytes: 256 KiB lblks
    [InlineData(1UL << 32, false, 6)]
    [InlineData(1UL << 32, true, 6)]
    [InlineData((1UL << 32) + 1, false, 6)]
    [InlineData((1UL << 32) + 1, true, 6)] // 8 + 6 * 64 = 392 bytes
    [InlineData(1UL << 48, true, 6)]
    public void Max_lblk_shift_is_the_largest_whose_entry_fits_in_a_sector(ulong nrPblks, bool crc, int expected)
    {
        Assert.Equal(expected, LblkAllocFormat.MaxLblkShift(nrPblks, crc));
        Assert.True(new LblkAllocFormat(expected, nrPblks, crc).EntrySize <= 512);
        Assert.True(new LblkAllocFormat(expected + 1, nrPblks, crc).EntrySize > 512);
    }

    private static readonly Gen<(LblkAllocFormat Format, long Index)> s_formatAndIndex =
        Gen.Select(Gen.Int[0, 7], Gen.OneOf(16, 32, 48), Gen.Bool)
            .Where(t => t.Item1 <= LblkAllocFormat.MaxLblkShift(DeviceOf(t.Item2), t.Item3))
            .Select(Gen.Long[0, 10_000_000], (t, index) => (new LblkAllocFormat(t.Item1, DeviceOf(t.Item2), t.Item3), index));

    [Fact]
    public void Entries_never_straddle_a_sector_and_never_overlap()
    {
        s_formatAndIndex.Sample((format, index) =>
        {
            long offset = format.EntryOffset(index);
            long next = format.EntryOffset(index + 1);
            Assert.True(offset % 512 + format.EntrySize <= 512, $"{format.Name} entry {index} at {offset} crosses a sector");
            Assert.True(next >= offset + format.EntrySize, $"{format.Name} entries {index} and {index + 1} overlap");
            Assert.True(next - offset < format.EntrySize + 512, $"{format.Name} leaves more than a sector's tail between entries");
        }, iter: 5000);
    }

    [Fact]
    public void Lbat_pblks_hold_exactly_the_entries_asked_for()
    {
        s_formatAndIndex.Sample((format, index) =>
        {
            long entries = index + 1;
            long pblks = format.LbatPblks(entries);
            long end = format.EntryOffset(entries - 1) + format.EntrySize;
            Assert.True(pblks * 4096 >= end);
            Assert.True((pblks - 1) * 4096 < end);
        }, iter: 5000);
        Assert.Equal(0, new LblkAllocFormat(4, 1000, true).LbatPblks(0));
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(4, true)]
    [InlineData(5, false)]
    [InlineData(7, true)]
    public void Check_length_accepts_unallocated_compressed_and_uncompressed_only(int shift, bool crc)
    {
        var format = new LblkAllocFormat(shift, 1000, crc);
        uint max = (uint)format.MaxCompressedLength;
        Assert.Null(format.CheckLength(0));
        Assert.Null(format.CheckLength(format.UncompressedLength));
        foreach (uint bad in new[] { 1u, max + 1, format.UncompressedLength - 1, (uint)format.LblkSize })
        {
            string? why = format.CheckLength(bad);
            Assert.NotNull(why);
            Assert.Contains($"length {bad}:", why);
            Assert.Contains($"0x{format.UncompressedLength:X}", why);
        }
        if (shift == 0)
        {
            Assert.Equal(0u, max); // a one-pblk lblk cannot save a pblk: it is never stored compressed
            Assert.NotNull(format.CheckLength(2));
        }
        else
        {
            Assert.Null(format.CheckLength(2));
            Assert.Null(format.CheckLength(max));
            Assert.Contains($"2..{max}", format.CheckLength(1));
        }
    }

    [Fact]
    public void Sixteen_bit_lengths_reject_values_that_do_not_fit_the_field()
    {
        var format = new LblkAllocFormat(4, 1000, false);
        Assert.NotNull(format.CheckLength(0x10000));
        Assert.NotNull(format.CheckLength(0xFFFFFFFF));
    }

    [Theory]
    [InlineData(0u, 0, 0)]
    [InlineData(2u, 1, 2)]
    [InlineData(4096u, 1, 4096)]
    [InlineData(4097u, 2, 4097)]
    [InlineData(61440u, 15, 61440)]
    [InlineData(0xFFFFu, 16, 65536)]
    public void Pblks_and_stored_bytes_follow_the_length_field(uint length, int pblks, int stored)
    {
        var format = new LblkAllocFormat(4, 1000, false);
        Assert.Equal(pblks, format.PblksFor(length));
        if (length != 0)
            Assert.Equal(stored, format.StoredBytes(length));
    }

    [Fact]
    public void Uncompressed_32_bit_length_takes_every_pblk()
    {
        var format = new LblkAllocFormat(6, 1000, false);
        Assert.Equal(64, format.PblksFor(0xFFFFFFFF));
        Assert.Equal(256 * 1024, format.StoredBytes(0xFFFFFFFF));
        Assert.Equal(63, format.PblksFor((uint)format.MaxCompressedLength));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(31)]
    public void Shift_outside_0_to_30_is_refused(int shift)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LblkAllocFormat(shift, 1000, false));
    }
}
