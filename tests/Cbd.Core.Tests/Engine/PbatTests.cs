using Cbd.Core.Engine;
using CsCheck;

namespace Cbd.Core.Tests.Engine;

/// <summary>A zone's pbat hands out a contiguous run of free pblks whenever the zone has one, else the first free ones.</summary>
public class PbatTests
{
    /// <summary>Whether bits [0, size) hold a run of <paramref name="count"/> free bits.</summary>
    private static bool HasRun(bool[] used, int count)
    {
        int run = 0;
        foreach (bool bit in used)
        {
            run = bit ? 0 : run + 1;
            if (run >= count)
                return true;
        }
        return false;
    }

    [Fact]
    public void An_allocation_takes_a_free_run_when_there_is_one_else_the_first_free_bits()
    {
        // Zones of any size up to a full one, used at any density, allocations of 1 to 80 bits (runs across words too).
        Gen.Select(Gen.Int[1, 32768], Gen.Int[0, 100], Gen.Int[1, 80], Gen.Int[0, 5], Gen.UInt)
            .Sample((dataPblks, density, count, clustered, seed) =>
            {
                var random = new Random((int)seed);
                var pbat = new Pbat(dataPblks);
                var used = new bool[dataPblks];
                for (int bit = 0; bit < dataPblks; bit++)
                {
                    // Clustered zones have long used and free stretches, as after many write-backs.
                    bool take = clustered > 0 ? (bit / (clustered * 37 + 1)) % 2 == 0 && random.Next(100) < density + 20 : random.Next(100) < density;
                    if (take)
                    {
                        pbat.Set(bit);
                        used[bit] = true;
                    }
                }
                // A first allocation moves the search cursor somewhere inside the zone.
                var bits = new int[count];
                bool hadRun = HasRun(used, count);
                int free = used.Count(b => !b);
                bool ok = pbat.TryAllocate(count, bits);
                Assert.Equal(free >= count, ok);
                if (!ok)
                    return;
                foreach (int bit in bits)
                {
                    Assert.False(used[bit], $"bit {bit} handed out while in use");
                    used[bit] = true;
                }
                Assert.Equal(free - count, pbat.Free);
                if (hadRun)
                {
                    for (int i = 1; i < count; i++)
                        Assert.Equal(bits[0] + i, bits[i]);
                }
                else
                {
                    Assert.Equal(bits.Order(), bits);
                }
                // A second one searches from after the first, and still finds a run if one is left anywhere.
                hadRun = HasRun(used, count);
                free -= count;
                if (free < count)
                    return;
                Assert.True(pbat.TryAllocate(count, bits));
                foreach (int bit in bits)
                    Assert.False(used[bit], $"bit {bit} handed out while in use");
                if (hadRun)
                {
                    for (int i = 1; i < count; i++)
                        Assert.Equal(bits[0] + i, bits[i]);
                }
            }, iter: 2000);
    }

    [Theory]
    [InlineData(128, 64, 128, 8, 64)]     // the only run fills the last word
    [InlineData(200, 60, 70, 10, 60)]     // a run across a word boundary
    [InlineData(300, 10, 200, 150, 10)]   // a run longer than a word
    [InlineData(64, 0, 3, 3, 0)]          // at the very start
    [InlineData(100, 97, 100, 3, 97)]     // at the very end, in a partial word
    public void A_run_is_found_wherever_it_lies(int dataPblks, int freeFrom, int freeTo, int count, int expected)
    {
        var pbat = new Pbat(dataPblks);
        for (int bit = 0; bit < dataPblks; bit++)
        {
            if (bit < freeFrom || bit >= freeTo)
                pbat.Set(bit);
        }
        // Scattered free bits before the run, which a fallback to the first free bits would take.
        for (int bit = 1; bit < freeFrom; bit += 7)
            pbat.Clear(bit);
        var bits = new int[count];
        Assert.True(pbat.TryAllocate(count, bits));
        Assert.Equal(Enumerable.Range(expected, count), bits);
    }
}
