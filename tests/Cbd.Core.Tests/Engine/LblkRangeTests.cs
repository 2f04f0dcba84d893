using Cbd.Core.Engine;
using CsCheck;

namespace Cbd.Core.Tests.Engine;

public class LblkRangeTests
{
    [Fact]
    public void Pieces_are_contiguous_cover_the_range_and_never_cross_an_lblk()
    {
        var gen = Gen.Select(Gen.Int[12, 19].Select(shift => 1 << shift), Gen.Long[0, 1L << 40], Gen.Long[0, 1L << 22]);
        gen.Sample((lblkSize, offset, length) =>
        {
            long position = offset;
            long start = 0;
            foreach (var piece in new LblkRange(offset, length, lblkSize))
            {
                Assert.True(piece.Length > 0, "an empty piece");
                Assert.Equal(start, piece.Start);
                Assert.Equal((ulong)(position / lblkSize), piece.Lblk);
                Assert.Equal(position % lblkSize, piece.Within);
                Assert.True(piece.Within + piece.Length <= lblkSize, $"piece {piece} crosses the end of its lblk");
                // Only the first piece may start inside its lblk, only the last may end inside it.
                Assert.True(piece.Within == 0 || start == 0, $"piece {piece} starts inside its lblk but is not the first");
                Assert.True(piece.Within + piece.Length == lblkSize || start + piece.Length == length, $"piece {piece} ends inside its lblk but is not the last");
                position += piece.Length;
                start += piece.Length;
            }
            Assert.Equal(length, start);
        });
    }

    [Theory]
    [InlineData(0, 0, new int[0])]
    [InlineData(100, 4096, new[] { 3996, 100 })]
    [InlineData(4096, 8192, new[] { 4096, 4096 })]
    [InlineData(4095, 2, new[] { 1, 1 })]
    public void Splits_at_lblk_boundaries(long offset, long length, int[] expected)
    {
        var lengths = new List<int>();
        foreach (var piece in new LblkRange(offset, length, 4096))
            lengths.Add(piece.Length);
        Assert.Equal(expected, lengths);
    }
}
