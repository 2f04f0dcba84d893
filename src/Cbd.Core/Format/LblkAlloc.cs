using System.Collections;

namespace Cbd.Core.Format;

/// <summary>
/// One lblk_alloc entry, decoded and valid (docs/FORMAT.md, "lblk_alloc entries"): the length field, the
/// crc, and the pblks in use, in order. The pblk numbers are not copied: they stay in the memory the entry
/// was decoded from (a pooled buffer, or an array of the caller's), so a decode allocates nothing.
/// </summary>
/// <remarks>
/// The on-disk bytes, X/8 length then n pblk fields of Y/8 bytes then the u32 crc, are read and written by
/// <see cref="LblkAllocFormat"/>; <see cref="TryDecode(Geometry, uint, uint, ReadOnlyMemory{ulong}, out LblkAlloc, out LblkAllocError)"/>
/// is the one validator of the fields, used by the engine's lbat cache and recovery scan and by check and repair.
/// </remarks>
public readonly struct LblkAlloc
{
    public LblkAlloc(uint length, uint crc, ReadOnlyMemory<ulong> pblks)
    {
        Length = length;
        Crc = crc;
        Pblks = new PblkList(pblks);
    }

    /// <summary>The length field: 0 unallocated, all ones uncompressed, else stored bytes.</summary>
    public uint Length { get; }
    public uint Crc { get; }

    /// <summary>The pblks in use, in order (unused slots dropped).</summary>
    public PblkList Pblks { get; }
    public bool IsAllocated => Length != 0;

    public static LblkAlloc Unallocated => default;

    /// <summary>The same entry with another crc (which the validator does not judge: only reading the data can).</summary>
    public LblkAlloc WithCrc(uint crc) => new(Length, crc, Pblks.Memory);

    /// <summary>Writes the entry's bytes at the start of <paramref name="destination"/>.</summary>
    public void Encode(LblkAllocFormat format, Span<byte> destination) => format.Write(destination, Pblks.Span, Length, Crc);

    /// <summary>
    /// Validates an entry's raw fields (as <see cref="LblkAllocFormat.Read"/> gives them). On success
    /// <paramref name="alloc"/> refers to the first pblks of <paramref name="slots"/>; on failure
    /// <paramref name="error"/> says which field is wrong and how.
    /// </summary>
    public static bool TryDecode(Geometry geometry, uint length, uint crc, ReadOnlyMemory<ulong> slots, out LblkAlloc alloc, out LblkAllocError error)
    {
        if (!TryValidate(geometry, length, crc, slots.Span, out int used, out error))
        {
            alloc = default;
            return false;
        }
        alloc = length == 0 ? default : new LblkAlloc(length, crc, slots[..used]);
        return true;
    }

    /// <summary>Reads the entry at the start of <paramref name="entry"/> into <paramref name="slots"/> (at least n long) and validates it.</summary>
    public static bool TryDecode(Geometry geometry, ReadOnlySpan<byte> entry, Memory<ulong> slots, out LblkAlloc alloc, out LblkAllocError error)
    {
        var format = geometry.Alloc;
        var all = slots[..format.PblksPerLblk];
        format.Read(entry, all.Span, out uint length, out uint crc);
        return TryDecode(geometry, length, crc, all, out alloc, out error);
    }

    /// <summary>
    /// The rules of a valid entry, in the order a reader applies them: an unallocated entry is all zeros; the
    /// length is one the format allows; each used slot names a data pblk, none twice; unused slots are 0.
    /// <paramref name="used"/> is the number of used slots.
    /// </summary>
    public static bool TryValidate(Geometry geometry, uint length, uint crc, ReadOnlySpan<ulong> slots, out int used, out LblkAllocError error)
    {
        var format = geometry.Alloc;
        used = 0;
        if (length == 0)
        {
            error = slots.ContainsAnyExcept(0UL) || crc != 0 ? new LblkAllocError(LblkAllocFault.UnallocatedNotZero, length) : default;
            return error.Fault == LblkAllocFault.None;
        }
        if (format.CheckLength(length) is not null)
        {
            error = new LblkAllocError(LblkAllocFault.BadLength, length);
            return false;
        }
        int count = format.PblksFor(length);
        for (int i = 0; i < slots.Length; i++)
        {
            if (i < count)
            {
                var fault = CheckSlot(geometry, slots, i, out int first);
                if (fault != LblkAllocFault.None)
                {
                    error = new LblkAllocError(fault, length, i, slots[i], first);
                    return false;
                }
            }
            else if (slots[i] != 0)
            {
                error = new LblkAllocError(LblkAllocFault.UnusedSlotNotZero, length, i, slots[i]);
                return false;
            }
        }
        used = count;
        error = default;
        return true;
    }

    /// <summary>
    /// Judges used slot <paramref name="index"/>: <see cref="LblkAllocFault.PblkOutsideDevice"/>,
    /// <see cref="LblkAllocFault.PblkInMetadata"/>, <see cref="LblkAllocFault.PblkRepeated"/> (then
    /// <paramref name="first"/> is the earlier slot naming the same pblk) or none.
    /// </summary>
    public static LblkAllocFault CheckSlot(Geometry geometry, ReadOnlySpan<ulong> slots, int index, out int first)
    {
        ulong pblk = slots[index];
        first = -1;
        if (pblk >= geometry.NrPblks)
            return LblkAllocFault.PblkOutsideDevice;
        if (!geometry.TryLocateDataPblk(pblk, out _, out _))
            return LblkAllocFault.PblkInMetadata;
        first = slots[..index].IndexOf(pblk);
        return first >= 0 ? LblkAllocFault.PblkRepeated : LblkAllocFault.None;
    }
}

/// <summary>Why an lblk_alloc entry is invalid (docs/FORMAT.md, "lblk_alloc entries").</summary>
public enum LblkAllocFault : byte
{
    None,

    /// <summary>Length 0, but a pblk field or the crc is not 0.</summary>
    UnallocatedNotZero,

    /// <summary>A length the format does not allow: 1, or above lblk size - 4096 but not all ones.</summary>
    BadLength,

    /// <summary>A used slot names a pblk at or past the end of the device.</summary>
    PblkOutsideDevice,

    /// <summary>A used slot names the header, a pbat or an lbat pblk, or a pblk past a zone's data.</summary>
    PblkInMetadata,

    /// <summary>Two used slots name the same pblk.</summary>
    PblkRepeated,

    /// <summary>A slot past the used ones is not 0.</summary>
    UnusedSlotNotZero,
}

/// <summary>An invalid entry's fault and length field, the slot at fault and the pblk number there (and for a repeated pblk, the slot that named it first).</summary>
public readonly record struct LblkAllocError(LblkAllocFault Fault, uint Length = 0, int Slot = -1, ulong Pblk = 0, int FirstSlot = -1)
{
    /// <summary>One line naming the lblk, the field, its value and what was expected.</summary>
    public string Describe(Geometry geometry, ulong lblk) => Fault switch
    {
        LblkAllocFault.UnallocatedNotZero => $"lblk {lblk}: unallocated entry with non-zero pblk or crc fields",
        LblkAllocFault.BadLength => $"lblk {lblk}: lblk_alloc {geometry.Alloc.CheckLength(Length)}",
        LblkAllocFault.PblkOutsideDevice or LblkAllocFault.PblkInMetadata => $"lblk {lblk}: lblk_alloc pblk[{Slot}] = {Pblk} is not a data pblk of the device",
        LblkAllocFault.PblkRepeated => $"lblk {lblk}: lblk_alloc pblk[{FirstSlot}] and pblk[{Slot}] are both {Pblk}",
        LblkAllocFault.UnusedSlotNotZero =>
            $"lblk {lblk}: lblk_alloc pblk[{Slot}] = {Pblk}, expected 0 past the {geometry.Alloc.PblksFor(Length)} pblks of length {Length}",
        _ => $"lblk {lblk}: lblk_alloc entry is valid",
    };
}

/// <summary>The pblk numbers of a decoded entry: a view of the memory it was decoded from, enumerable without allocating.</summary>
public readonly struct PblkList(ReadOnlyMemory<ulong> pblks) : IReadOnlyList<ulong>
{
    public ReadOnlyMemory<ulong> Memory { get; } = pblks;
    public ReadOnlySpan<ulong> Span => Memory.Span;
    public int Length => Memory.Length;
    public int Count => Memory.Length;
    public ulong this[int index] => Memory.Span[index];

    public ReadOnlySpan<ulong>.Enumerator GetEnumerator() => Memory.Span.GetEnumerator();

    IEnumerator<ulong> IEnumerable<ulong>.GetEnumerator()
    {
        for (int i = 0; i < Memory.Length; i++)
            yield return Memory.Span[i];
    }

    IEnumerator IEnumerable.GetEnumerator() => ((IEnumerable<ulong>)this).GetEnumerator();

    /// <summary>An independent copy, for a caller that keeps the numbers after the memory they came from is reused.</summary>
    public ulong[] ToArray() => Memory.ToArray();

    public override string ToString() => string.Join(',', (IEnumerable<ulong>)this);

    public static implicit operator ReadOnlyMemory<ulong>(PblkList list) => list.Memory;
}
