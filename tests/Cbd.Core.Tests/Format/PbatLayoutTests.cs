using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

/// <summary>The pbat bytes as docs/FORMAT.md ("pbat") gives them: bit i is bit i mod 8 of byte i / 8.</summary>
public class PbatLayoutTests
{
    [Fact]
    public void A_pbat_is_one_pblk_with_a_bit_per_data_pblk_of_a_full_zone()
    {
        Assert.Equal(4096, PbatLayout.Bytes);
        Assert.Equal(32768, PbatLayout.Bits);
        Assert.Equal(512, PbatLayout.Words);
    }

    [Theory]
    [InlineData(0, 0, 0x01)]
    [InlineData(7, 0, 0x80)]
    [InlineData(8, 1, 0x01)]
    [InlineData(69, 8, 0x20)]
    [InlineData(32767, 4095, 0x80)]
    public void Bit_i_is_bit_i_mod_8_of_byte_i_div_8(int bit, int index, byte value)
    {
        var page = new byte[PbatLayout.Bytes];
        var words = new ulong[PbatLayout.Words];
        words[bit / 64] = 1UL << (bit % 64);
        PbatLayout.WriteWords(words, page);
        Assert.Equal(value, page[index]);
        Assert.Equal(1, page.Count(b => b != 0));
        Assert.True(PbatLayout.IsSet(page, bit));
        Assert.Equal(1, PbatLayout.ReadWords(page, new ulong[PbatLayout.Words]));
        PbatLayout.Clear(page, bit);
        Assert.False(page.AsSpan().ContainsAnyExcept((byte)0));
    }

    [Fact]
    public void Words_round_trip_and_counts_agree_with_the_bits()
    {
        Gen.Byte.Array[PbatLayout.Bytes].Select(Gen.Int[0, PbatLayout.Bits]).Sample((page, dataPblks) =>
        {
            var words = new ulong[PbatLayout.Words];
            int set = PbatLayout.ReadWords(page, words);
            var back = new byte[PbatLayout.Bytes];
            PbatLayout.WriteWords(words, back);
            Assert.Equal(page, back);
            Assert.Equal(Enumerable.Range(0, PbatLayout.Bits).Count(i => (page[i / 8] >> (i % 8) & 1) != 0), set);
            Assert.Equal(Enumerable.Range(0, dataPblks).Count(i => (page[i / 8] >> (i % 8) & 1) != 0), PbatLayout.CountSet(page, dataPblks));
        }, iter: 200);
    }

    [Fact]
    public void A_differing_run_ends_where_the_difference_changes()
    {
        var a = new byte[PbatLayout.Bytes];
        var b = new byte[PbatLayout.Bytes];
        a[0] = 0b0000_1110; // bits 1-3 set only in a
        b[0] = 0b0011_0000; // bits 4-5 set only in b
        a[1] = 0b0000_0001; // bit 8 set in both
        b[1] = 0b0000_0001;
        Assert.Equal(0, PbatLayout.DifferingRun(a, b, 0, 64));
        Assert.Equal(3, PbatLayout.DifferingRun(a, b, 1, 64));
        Assert.Equal(2, PbatLayout.DifferingRun(a, b, 4, 64));
        Assert.Equal(1, PbatLayout.DifferingRun(a, b, 4, 5));
        Assert.Equal(0, PbatLayout.DifferingRun(a, b, 8, 64));
    }
}
