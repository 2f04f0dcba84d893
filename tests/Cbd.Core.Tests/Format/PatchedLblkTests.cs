using System.Buffers.Binary;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

/// <summary>The patched stored form, pinned from docs/FORMAT.md ("Patched lblks"), decoded as the lblk it stands for, and every corruption of it caught.</summary>
public class PatchedLblkTests
{
    private const int LblkSize = 65536;
    private const ulong Lblk = 42;
    private static readonly LblkAllocFormat s_crc = new(4, 1000, withCrc: true);
    private static readonly LblkAllocFormat s_noCrc = new(4, 1000, withCrc: false);

    // The crc as FORMAT.md defines it, and compressible lblks, as the plain stored form's tests have them.
    private static uint FormatCrc(ulong lblk, ReadOnlySpan<byte> bytes) => StoredLblkTests.FormatCrc(lblk, bytes);

    private static byte[] Compressible(int seed) => StoredLblkTests.Compressible(seed);

    /// <summary>A patch of <paramref name="data"/> at <paramref name="offset"/>, compressed when LZ4 saves anything, as a log record's payload is.</summary>
    private static LblkPatch DataPatch(int offset, byte[] data)
    {
        var compressed = new byte[data.Length];
        int n = Codec.Create(CompressionAlgorithm.Lz4, 0).Compress(data, compressed.AsSpan(0, data.Length - 1));
        return n > 0
            ? new LblkPatch(LogRecordKind.Data, 1, offset, data.Length, compressed.AsMemory(0, n))
            : new LblkPatch(LogRecordKind.Data, LogRecord.Raw, offset, data.Length, data);
    }

    /// <summary>
    /// The stored bytes of <paramref name="baseData"/> encoded as a plain compressed lblk (the base), and the whole patched form
    /// over it: patch area, padding, base.
    /// </summary>
    private static (byte[] Stored, LblkAlloc Alloc, PatchedForm Form) Patched(LblkAllocFormat format, byte[]? baseData, IReadOnlyList<LblkPatch> patches) =>
        TryPatched(format, baseData, patches) ?? throw new InvalidOperationException("the patches do not save a pblk");

    private static (byte[] Stored, LblkAlloc Alloc, PatchedForm Form)? TryPatched(LblkAllocFormat format, byte[]? baseData, IReadOnlyList<LblkPatch> patches)
    {
        var basis = PatchedLblk.Base.None;
        byte[] baseBytes = [];
        if (baseData is not null)
        {
            var buffer = new byte[LblkSize];
            var baseForm = StoredLblk.Encode(format, Codec.Create(CompressionAlgorithm.Lz4, 0), Lblk, baseData, buffer);
            Assert.NotEqual(format.UncompressedLength, baseForm.Length);
            baseBytes = buffer[..(baseForm.Pblks * 4096)];
            basis = new PatchedLblk.Base(baseForm.Length, baseForm.Crc, baseForm.Pblks);
        }
        var area = new byte[LblkSize];
        if (PatchedLblk.Encode(format, Lblk, basis, patches, area) is not { } form)
            return null;
        var stored = new byte[form.PatchPblks * 4096 + baseBytes.Length];
        area.AsSpan(0, form.PatchPblks * 4096).CopyTo(stored);
        baseBytes.CopyTo(stored, form.PatchPblks * 4096);
        int pblks = form.PatchPblks + basis.Pblks;
        return (stored, new LblkAlloc(form.Length, form.Crc, Enumerable.Range(0, pblks).Select(i => 100UL + (ulong)i).ToArray()), form);
    }

    private static byte[] Decode(LblkAllocFormat format, byte[] stored, LblkAlloc alloc, out StoredLblkResult result, int prefix = 0)
    {
        var data = new byte[LblkSize];
        result = StoredLblk.Decode(format, Lblk, alloc, stored, data, prefix);
        return data;
    }

    [Fact]
    public void The_patch_area_is_laid_out_as_the_format_says_and_the_base_follows_at_the_next_pblk()
    {
        var baseData = Compressible(3);
        var bytes = new byte[4096];
        new Random(1).NextBytes(bytes);
        var patches = new[] { new LblkPatch(LogRecordKind.Data, LogRecord.Raw, 8192, 4096, bytes), new LblkPatch(LogRecordKind.Zero, LogRecord.Raw, 100, 50, default) };
        var (stored, alloc, form) = Patched(s_crc, baseData, patches);

        Assert.Equal(PatchedLblk.AlgorithmId, stored[0]);
        Assert.Equal(0, stored[1]);
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(stored.AsSpan(2)));
        int patchBytes = 16 + 16 + 4096 + 16;
        Assert.Equal(patchBytes, (int)BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(4)));
        Assert.Equal(patchBytes, form.PatchBytes);
        Assert.Equal(2, form.PatchPblks);
        uint baseLength = BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(8));
        Assert.Equal(form.PatchPblks * 4096 + baseLength, alloc.Length);
        Assert.Equal(FormatCrc(Lblk, stored.AsSpan(8192, (int)baseLength)), BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(12)));
        // The first patch: offset, length, kind, algorithm, reserved, payload_length, then its bytes.
        Assert.Equal(8192u, BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(16)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(20)));
        Assert.Equal(1, stored[24]);
        Assert.Equal(0, stored[25]);
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(28)));
        Assert.Equal(bytes, stored.AsSpan(32, 4096).ToArray());
        // The second, a zero patch without payload.
        Assert.Equal(100u, BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(32 + 4096)));
        Assert.Equal(2, stored[32 + 4096 + 8]);
        Assert.False(stored.AsSpan(patchBytes, 8192 - patchBytes).ContainsAnyExcept((byte)0));
        // The entry's crc covers the lblk number and the patch area only.
        Assert.Equal(FormatCrc(Lblk, stored.AsSpan(0, patchBytes)), alloc.Crc);
        Assert.Equal(1, stored[8192]); // the base names its own algorithm, lz4

        var expected = baseData.ToArray();
        bytes.CopyTo(expected, 8192);
        expected.AsSpan(100, 50).Clear();
        var data = Decode(s_crc, stored, alloc, out var result);
        Assert.True(result.Ok, result.Fault.ToString());
        Assert.Equal(expected, data);
    }

    [Fact]
    public void Patches_apply_in_order_over_a_base_or_over_zeros()
    {
        var first = Enumerable.Repeat((byte)'x', 3000).ToArray();
        var second = Enumerable.Repeat((byte)'y', 1000).ToArray();
        var patches = new[] { DataPatch(5000, first), DataPatch(6000, second) };
        foreach (var baseData in new[] { Compressible(7), null })
        {
            var (stored, alloc, _) = Patched(s_crc, baseData, patches);
            var expected = baseData?.ToArray() ?? new byte[LblkSize];
            first.CopyTo(expected, 5000);
            second.CopyTo(expected, 6000);
            Assert.Equal(expected, Decode(s_crc, stored, alloc, out var result));
            Assert.True(result.Ok);
        }
    }

    [Fact]
    public void Any_patches_over_any_base_read_as_the_changes_applied_in_order()
    {
        var gen = Gen.Select(Gen.Int[0, 15], Gen.Int[1, 8192], Gen.Int[0, 3], Gen.Bool)
            .Select((chunk, length, fill, zero) => (Offset: Math.Min(chunk * 4096, LblkSize - length), Length: length, Fill: fill, Zero: zero))
            .Array[1, 6];
        gen.Select(Gen.Bool, Gen.Bool).Sample((changes, withBase, withCrc) =>
        {
            var format = withCrc ? s_crc : s_noCrc;
            var baseData = withBase ? Compressible(5) : null;
            var expected = baseData?.ToArray() ?? new byte[LblkSize];
            var patches = new List<LblkPatch>();
            foreach (var (offset, length, fill, zero) in changes)
            {
                if (zero)
                {
                    patches.Add(new LblkPatch(LogRecordKind.Zero, LogRecord.Raw, offset, length, default));
                    expected.AsSpan(offset, length).Clear();
                    continue;
                }
                var bytes = new byte[length];
                if (fill == 0)
                    new Random(offset + length).NextBytes(bytes);
                else
                    bytes.AsSpan().Fill((byte)fill);
                patches.Add(DataPatch(offset, bytes));
                bytes.CopyTo(expected, offset);
            }
            if (TryPatched(format, baseData, patches) is not var (stored, alloc, _))
                return; // would not save a pblk
            Assert.Equal(expected, Decode(format, stored, alloc, out var result));
            Assert.True(result.Ok);
        }, iter: 200);
    }

    [Fact]
    public void A_prefix_read_decodes_what_lies_before_its_end()
    {
        var baseData = Compressible(11);
        var bytes = Enumerable.Repeat((byte)0x5A, 4096).ToArray();
        var (stored, alloc, _) = Patched(s_crc, baseData, [DataPatch(4096, bytes), DataPatch(40960, bytes)]);
        var expected = baseData.ToArray();
        bytes.CopyTo(expected, 4096);
        var data = Decode(s_crc, stored, alloc, out var result, prefix: 8192);
        Assert.True(result.Ok);
        Assert.Equal(expected.AsSpan(0, 8192).ToArray(), data.AsSpan(0, 8192).ToArray());
    }

    [Fact]
    public void Patches_that_would_not_save_a_pblk_are_refused()
    {
        var random = new byte[4096];
        new Random(3).NextBytes(random);
        var patches = Enumerable.Range(0, 15).Select(i => new LblkPatch(LogRecordKind.Data, LogRecord.Raw, i * 4096, 4096, random)).ToList();
        Assert.Null(PatchedLblk.Encode(s_crc, Lblk, PatchedLblk.Base.None, patches, new byte[LblkSize]));
        // Two raw 4 KiB patches need three pblks: over a base of 13 they leave none saved.
        Assert.Null(PatchedLblk.Encode(s_crc, Lblk, new PatchedLblk.Base(13 * 4096 - 10, 1, 13), patches[..2], new byte[LblkSize]));
        Assert.NotNull(PatchedLblk.Encode(s_crc, Lblk, new PatchedLblk.Base(12 * 4096 - 10, 1, 12), patches[..2], new byte[LblkSize]));
    }

    [Fact]
    public void A_flipped_bit_in_the_patch_area_or_the_base_is_a_checksum_mismatch()
    {
        var (stored, alloc, form) = Patched(s_crc, Compressible(2), [DataPatch(0, Enumerable.Repeat((byte)1, 100).ToArray())]);
        foreach (int at in new[] { 3, 20, form.PatchBytes - 1, form.PatchPblks * 4096 + 1, stored.Length - 4096 })
        {
            var copy = stored.ToArray();
            copy[at] ^= 0x10;
            Decode(s_crc, copy, alloc, out var result);
            Assert.Equal(StoredLblkFault.ChecksumMismatch, result.Fault);
        }
    }

    [Fact]
    public void Without_checksums_a_malformed_patch_area_is_undecodable_never_data()
    {
        var (stored, alloc, _) = Patched(s_noCrc, Compressible(4), [DataPatch(1000, Enumerable.Repeat((byte)9, 2000).ToArray())]);
        // patch_count, patch_bytes, base_length, a patch's offset, length, kind, algorithm, reserved, payload_length.
        foreach (var (at, value) in new (int, uint)[] { (2, 2), (4, 5000), (8, 70000), (16, 65000), (20, 0), (24, 7), (25, 9), (26, 1), (28, 1999) })
        {
            var copy = stored.ToArray();
            if (at is 24 or 25 or 26)
                copy[at] = (byte)value;
            else if (at == 2)
                BinaryPrimitives.WriteUInt16LittleEndian(copy.AsSpan(at), (ushort)value);
            else
                BinaryPrimitives.WriteUInt32LittleEndian(copy.AsSpan(at), value);
            Decode(s_noCrc, copy, alloc, out var result);
            Assert.Equal(StoredLblkFault.Undecodable, result.Fault);
        }
    }

    /// <summary>A merge that patches a patched lblk takes its whole stored form as the base: the patches read in the order they came.</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_patched_base_decodes_first_then_the_patches_over_it(bool withCrc)
    {
        var format = withCrc ? s_crc : s_noCrc;
        var baseData = Compressible(6);
        var expected = baseData.ToArray();
        var (stored, alloc, _) = Patched(format, baseData, [DataPatch(4096, Enumerable.Repeat((byte)1, 8192).ToArray())]);
        expected.AsSpan(4096, 8192).Fill(1);
        for (int level = 2; level <= 4; level++)
        {
            // Each level overwrites part of the one before, and zeroes a range.
            var bytes = Enumerable.Repeat((byte)level, 3000).ToArray();
            var patches = new[] { DataPatch(6000 + level * 100, bytes), new LblkPatch(LogRecordKind.Zero, LogRecord.Raw, 20000 + level, 7, default) };
            var area = new byte[LblkSize];
            var form = PatchedLblk.Encode(format, Lblk, new PatchedLblk.Base(alloc.Length, alloc.Crc, alloc.Pblks.Count), patches, area)!.Value;
            var outer = new byte[form.PatchPblks * 4096 + stored.Length];
            area.AsSpan(0, form.PatchPblks * 4096).CopyTo(outer);
            stored.CopyTo(outer, form.PatchPblks * 4096);
            Assert.Equal(form.PatchPblks * 4096 + alloc.Length, form.Length);
            (stored, alloc) = (outer, new LblkAlloc(form.Length, form.Crc, Enumerable.Range(0, form.PatchPblks + alloc.Pblks.Count).Select(i => 200UL + (ulong)i).ToArray()));
            bytes.CopyTo(expected, 6000 + level * 100);
            expected.AsSpan(20000 + level, 7).Clear();

            Assert.Equal(expected, Decode(format, stored, alloc, out var result));
            Assert.True(result.Ok, result.Fault.ToString());
            if (withCrc)
            {
                // A flipped bit in the patch area below this level's fails that area's crc, which this level keeps.
                var copy = stored.ToArray();
                copy[form.PatchPblks * 4096 + 20] ^= 1;
                Decode(format, copy, alloc, out var damaged);
                Assert.Equal(StoredLblkFault.ChecksumMismatch, damaged.Fault);
            }
        }
    }
}
