using System.Numerics;
using Cbd.Core.Format;

namespace Cbd.Core.Engine;

/// <summary>
/// One zone's physical block allocation table in memory: bit i set = data pblk i of the zone is in use.
/// The bytes on disk are <see cref="PbatLayout"/>'s. Not thread-safe: the <see cref="Allocator"/> serializes access.
/// </summary>
internal sealed class Pbat
{
    private readonly ulong[] _words = new ulong[PbatLayout.Words];
    private int _searchFrom;

    public Pbat(int dataPblks)
    {
        DataPblks = dataPblks;
        Free = dataPblks;
    }

    /// <summary>Data pblks in the zone (bits past it are never set).</summary>
    public int DataPblks { get; }
    public int Free { get; private set; }

    /// <summary>Changed since last written to disk.</summary>
    public bool Dirty { get; set; }

    public bool IsSet(int bit) => (_words[bit >> 6] & (1UL << bit)) != 0;

    public void Set(int bit)
    {
        Invariant.Check(bit < DataPblks && !IsSet(bit), $"pbat bit {bit} set twice");
        _words[bit >> 6] |= 1UL << bit;
        Free--;
        Dirty = true;
    }

    public void Clear(int bit)
    {
        Invariant.Check(IsSet(bit), $"pbat bit {bit} freed while free");
        _words[bit >> 6] &= ~(1UL << bit);
        Free++;
        Dirty = true;
        if (bit < _searchFrom)
            _searchFrom = bit;
    }

    /// <summary>
    /// Allocates <paramref name="count"/> bits, a contiguous run when one exists, else the first free
    /// bits; returns false (allocating nothing) when the zone has fewer free bits than that.
    /// </summary>
    public bool TryAllocate(int count, Span<int> bits)
    {
        if (Free < count)
            return false;
        int start = FindRun(count, _searchFrom);
        if (start < 0 && _searchFrom > 0)
            start = FindRun(count, 0);
        if (start >= 0)
        {
            for (int i = 0; i < count; i++)
            {
                Set(start + i);
                bits[i] = start + i;
            }
            _searchFrom = start + count;
            return true;
        }
        int found = 0;
        for (int w = 0; w < _words.Length && found < count; w++)
        {
            ulong free = ~_words[w];
            while (free != 0 && found < count)
            {
                int bit = (w << 6) + BitOperations.TrailingZeroCount(free);
                free &= free - 1;
                if (bit >= DataPblks)
                    break;
                Set(bit);
                bits[found++] = bit;
            }
        }
        Invariant.Check(found == count, "pbat free count disagrees with its bits");
        return true;
    }

    /// <summary>
    /// The first bit of the first run of <paramref name="count"/> free bits at or after <paramref name="from"/>, or -1: a word
    /// at a time (a zone is 512 words), since small write-backs into a fragmented zone made a bit-by-bit walk the hot spot.
    /// </summary>
    private int FindRun(int count, int from)
    {
        int carry = 0; // free bits at the top of the words before, contiguous with the next word
        int words = (DataPblks + 63) >> 6;
        for (int w = from >> 6; w < words; w++)
        {
            int first = w << 6;
            ulong free = ~_words[w];
            if (first < from)
                free &= ulong.MaxValue << (from - first);
            if (DataPblks - first < 64)
                free &= (1UL << (DataPblks - first)) - 1;
            // A run that began in the words before (if any) and goes on here from bit 0.
            if (carry + BitOperations.TrailingZeroCount(~free) >= count)
                return first - carry;
            if (free == ulong.MaxValue)
            {
                carry += 64;
                continue;
            }
            if (count <= 64)
            {
                // Bit i of runs is set when bits i .. i + len - 1 are all free.
                ulong runs = free;
                for (int len = 1; len < count && runs != 0;)
                {
                    int shift = Math.Min(len, count - len);
                    runs &= runs >> shift;
                    len += shift;
                }
                if (runs != 0)
                    return first + BitOperations.TrailingZeroCount(runs);
            }
            carry = BitOperations.LeadingZeroCount(~free);
        }
        return -1;
    }

    public void Load(ReadOnlySpan<byte> page)
    {
        Free = DataPblks - PbatLayout.ReadWords(page, _words);
        _searchFrom = 0;
        Dirty = false;
    }

    /// <summary>Bits set past <see cref="DataPblks"/>: such a pbat is corrupt.</summary>
    public int BitsBeyondData()
    {
        int n = 0;
        for (int bit = DataPblks; bit < PbatLayout.Bits; bit++)
            n += IsSet(bit) ? 1 : 0;
        return n;
    }

    /// <summary>Clears the bits past <see cref="DataPblks"/> (they name no pblk, so nothing is lost); returns how many were set.</summary>
    public int ClearBeyondData()
    {
        int n = BitsBeyondData();
        if (n == 0)
            return 0;
        for (int bit = DataPblks; bit < PbatLayout.Bits; bit++)
            _words[bit >> 6] &= ~(1UL << bit);
        Recount();
        Dirty = true;
        return n;
    }

    /// <summary>
    /// Compares the bits with the pblks the lbats claim: a claimed pblk marked free is marked used
    /// (fenced, so it is never handed out); a used pblk nobody claims is left as it is (a leak, which
    /// costs space, not data). Returns how many of each, and the first of each.
    /// </summary>
    public (int Fenced, int FirstFenced, int Leaked, int FirstLeaked) Reconcile(ReadOnlySpan<ulong> claims)
    {
        int fenced = 0, leaked = 0, firstFenced = -1, firstLeaked = -1;
        for (int w = 0; w < _words.Length; w++)
        {
            ulong claimed = claims.IsEmpty ? 0 : claims[w];
            ulong missing = claimed & ~_words[w];
            ulong stray = _words[w] & ~claimed;
            if (missing != 0)
            {
                if (firstFenced < 0)
                    firstFenced = (w << 6) + BitOperations.TrailingZeroCount(missing);
                fenced += BitOperations.PopCount(missing);
                _words[w] |= missing;
            }
            if (stray != 0)
            {
                if (firstLeaked < 0)
                    firstLeaked = (w << 6) + BitOperations.TrailingZeroCount(stray);
                leaked += BitOperations.PopCount(stray);
            }
        }
        if (fenced > 0)
        {
            Recount();
            Dirty = true;
        }
        return (fenced, firstFenced, leaked, firstLeaked);
    }

    private void Recount()
    {
        int used = 0;
        foreach (ulong word in _words)
            used += BitOperations.PopCount(word);
        Free = DataPblks - used;
    }

    public void Store(Span<byte> page)
    {
        PbatLayout.WriteWords(_words, page);
    }

    public void ClearAll()
    {
        Array.Clear(_words);
        Free = DataPblks;
        _searchFrom = 0;
        Dirty = true;
    }
}
