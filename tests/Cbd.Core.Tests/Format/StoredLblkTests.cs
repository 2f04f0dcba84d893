using System.Buffers.Binary;
using System.IO.Hashing;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

/// <summary>The stored form of an lblk, pinned from docs/FORMAT.md ("lblk_alloc entries"), and every corruption of it caught.</summary>
public class StoredLblkTests
{
    private const int LblkSize = 65536;
    private static readonly LblkAllocFormat s_crc = new(4, 1000, withCrc: true);
    private static readonly LblkAllocFormat s_noCrc = new(4, 1000, withCrc: false);

    /// <summary>The crc as FORMAT.md defines it: CRC32C over the lblk number (u64 little-endian), then the stored bytes.</summary>
    internal static uint FormatCrc(ulong lblk, ReadOnlySpan<byte> stored)
    {
        var bytes = new byte[8 + stored.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, lblk);
        stored.CopyTo(bytes.AsSpan(8));
        return Crc32.HashToUInt32(Crc32ParameterSet.Crc32C, bytes);
    }

    internal static byte[] Compressible(int seed) =>
        [.. Enumerable.Range(0, LblkSize).Select(i => (byte)(i / 97 % 7 == 0 ? (i * seed) >> 3 : 'a' + i % 5))];

    private static LblkAlloc AllocFor(StoredForm form) =>
        new(form.Length, form.Crc, Enumerable.Range(0, form.Pblks).Select(i => 100UL + (ulong)i).ToArray());

    [Fact]
    public void A_compressed_lblk_is_its_algorithm_id_then_the_codec_output_padded_with_zeros()
    {
        var data = Compressible(3);
        var stored = new byte[LblkSize];
        stored.AsSpan().Fill(0xEE);
        var codec = Codec.Create(CompressionAlgorithm.Zstd, 3);
        var form = StoredLblk.Encode(s_crc, codec, 42, data, stored);

        var expected = new byte[LblkSize];
        int n = codec.Compress(data, expected.AsSpan(1, LblkSize - 4096 - 1));
        Assert.True(n > 0);
        Assert.Equal((uint)(1 + n), form.Length);
        Assert.Equal(1 + n, form.StoredBytes);
        Assert.Equal((1 + n + 4095) / 4096, form.Pblks);
        Assert.Equal(3, stored[0]); // zstd
        Assert.Equal(expected.AsSpan(1, n), stored.AsSpan(1, n));
        Assert.False(stored.AsSpan(1 + n, form.Pblks * 4096 - 1 - n).ContainsAnyExcept((byte)0));
        Assert.Equal(FormatCrc(42, stored.AsSpan(0, 1 + n)), form.Crc);
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4, false)]
    [InlineData(CompressionAlgorithm.Zstd, false)]
    [InlineData(CompressionAlgorithm.Lz4, true)]
    public void A_prefix_decodes_to_the_lblk_s_first_bytes_after_the_crc_is_checked(CompressionAlgorithm algorithm, bool incompressible)
    {
        var data = Compressible(9);
        if (incompressible)
            new Random(9).NextBytes(data);
        var stored = new byte[LblkSize];
        var form = StoredLblk.Encode(s_crc, Codec.Create(algorithm, CodecLimits.Levels(algorithm).Default), 11, data, stored);
        var alloc = AllocFor(form);
        foreach (int prefix in new[] { 1, 4096, 30000, LblkSize })
        {
            var back = new byte[LblkSize];
            Assert.True(StoredLblk.Decode(s_crc, 11, alloc, stored, back, prefix).Ok);
            Assert.True(back.AsSpan(0, prefix).SequenceEqual(data.AsSpan(0, prefix)), $"prefix {prefix}");
        }
        // The crc covers every stored byte, so damage past the prefix is found all the same.
        stored[form.StoredBytes - 1] ^= 1;
        Assert.Equal(StoredLblkFault.ChecksumMismatch, StoredLblk.Decode(s_crc, 11, alloc, stored, new byte[LblkSize], 4096).Fault);
    }

    [Fact]
    public void A_prefix_is_refused_without_a_crc()
    {
        var data = Compressible(4);
        var stored = new byte[LblkSize];
        var form = StoredLblk.Encode(s_noCrc, Codec.Create(CompressionAlgorithm.Lz4, 0), 3, data, stored);
        Assert.Throws<ArgumentOutOfRangeException>(() => StoredLblk.Decode(s_noCrc, 3, AllocFor(form), stored, new byte[LblkSize], 4096));
    }

    [Fact]
    public void An_incompressible_lblk_is_stored_as_it_is_with_the_all_ones_length()
    {
        var data = new byte[LblkSize];
        new Random(5).NextBytes(data);
        var stored = new byte[LblkSize];
        var form = StoredLblk.Encode(s_crc, Codec.Create(CompressionAlgorithm.Lz4, 0), 7, data, stored);
        Assert.Equal(new StoredForm(0xFFFF, FormatCrc(7, data), LblkSize, 16), form);
        Assert.Equal(data, stored);
    }

    [Fact]
    public void A_4_KiB_lblk_is_always_stored_as_it_is()
    {
        var format = new LblkAllocFormat(0, 1000, withCrc: false);
        var data = new byte[4096];
        var stored = new byte[4096];
        var form = StoredLblk.Encode(format, Codec.Create(CompressionAlgorithm.Lz4, 0), 1, data, stored);
        Assert.Equal(new StoredForm(0xFFFF, 0, 4096, 1), form);
        Assert.Equal(1, StoredLblk.PblksNeeded(format, Codec.Create(CompressionAlgorithm.Lz4, 0), data, zeroDetect: false, stored));
    }

    [Fact]
    public void Zeros_are_unallocated_only_with_zero_detection()
    {
        var zeros = new byte[LblkSize];
        var scratch = new byte[LblkSize];
        var codec = Codec.Create(CompressionAlgorithm.Lz4, 0);
        Assert.True(StoredLblk.StoresAsUnallocated(zeros, zeroDetect: true));
        Assert.False(StoredLblk.StoresAsUnallocated(zeros, zeroDetect: false));
        Assert.Equal(0, StoredLblk.PblksNeeded(s_crc, codec, zeros, zeroDetect: true, scratch));
        Assert.Equal(StoredLblk.Encode(s_crc, codec, 0, zeros, scratch).Pblks, StoredLblk.PblksNeeded(s_crc, codec, zeros, zeroDetect: false, scratch));
    }

    private static readonly Gen<(CompressionAlgorithm Algorithm, byte[] Data, ulong Lblk, bool Crc)> s_lblks = Gen.Select(
        Gen.OneOf(CompressionAlgorithm.Lz4, CompressionAlgorithm.Zlib, CompressionAlgorithm.Zstd),
        Gen.Int[0, 3],
        Gen.Int,
        Gen.ULong,
        Gen.Bool)
        .Select((algorithm, kind, seed, lblk, crc) =>
        {
            var data = kind switch
            {
                0 => new byte[LblkSize],
                1 => Compressible(seed),
                _ => new byte[LblkSize],
            };
            if (kind >= 2)
                new Random(seed).NextBytes(data.AsSpan(0, kind == 2 ? LblkSize / 2 : LblkSize));
            return (algorithm, data, lblk, crc);
        });

    [Fact]
    public void Encode_then_decode_gives_the_lblk_back()
    {
        s_lblks.Sample(x =>
        {
            var stored = new byte[LblkSize];
            var back = new byte[LblkSize];
            var format = x.Crc ? s_crc : s_noCrc;
            var form = StoredLblk.Encode(format, Codec.Create(x.Algorithm, CodecLimits.Levels(x.Algorithm).Default), x.Lblk, x.Data, stored);
            Assert.Equal(format.PblksFor(form.Length), form.Pblks);
            var result = StoredLblk.Decode(format, x.Lblk, AllocFor(form), stored, back);
            Assert.True(result.Ok, result.ToString());
            Assert.Equal(x.Data, back);
        }, iter: 60);
    }

    [Fact]
    public void With_a_crc_every_changed_stored_byte_and_every_other_lblk_number_is_caught()
    {
        Gen.Select(s_lblks, Gen.Int[0, LblkSize - 1], Gen.Byte[1, 255], Gen.ULong).Sample((x, at, flip, otherLblk) =>
        {
            var stored = new byte[LblkSize];
            var back = new byte[LblkSize];
            var form = StoredLblk.Encode(s_crc, Codec.Create(x.Algorithm, CodecLimits.Levels(x.Algorithm).Default), x.Lblk, x.Data, stored);
            var alloc = AllocFor(form);
            if (otherLblk != x.Lblk)
                Assert.Equal(StoredLblkFault.ChecksumMismatch, StoredLblk.Decode(s_crc, otherLblk, alloc, stored, back).Fault);
            Assert.Equal(StoredLblkFault.ChecksumMismatch, StoredLblk.Decode(s_crc, x.Lblk, alloc.WithCrc(form.Crc ^ 1), stored, back).Fault);
            int i = at % form.StoredBytes;
            stored[i] ^= flip;
            var result = StoredLblk.Decode(s_crc, x.Lblk, alloc, stored, back);
            Assert.Equal(StoredLblkFault.ChecksumMismatch, result.Fault);
            Assert.Equal(FormatCrc(x.Lblk, stored.AsSpan(0, form.StoredBytes)), result.ComputedCrc);
        }, iter: 200);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4)]
    [InlineData(255)]
    public void Without_a_crc_an_unknown_algorithm_id_is_undecodable(byte id)
    {
        var stored = new byte[LblkSize];
        var form = StoredLblk.Encode(s_noCrc, Codec.Create(CompressionAlgorithm.Lz4, 0), 1, Compressible(1), stored);
        stored[0] = id;
        var result = StoredLblk.Decode(s_noCrc, 1, AllocFor(form), stored, new byte[LblkSize]);
        Assert.Equal(new StoredLblkResult(StoredLblkFault.Undecodable, form.StoredBytes, 0, id), result);
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4)]
    [InlineData(CompressionAlgorithm.Zlib)]
    [InlineData(CompressionAlgorithm.Zstd)]
    public void Without_a_crc_a_cut_stored_form_is_undecodable(CompressionAlgorithm algorithm)
    {
        var stored = new byte[LblkSize];
        var form = StoredLblk.Encode(s_noCrc, Codec.Create(algorithm, CodecLimits.Levels(algorithm).Default), 1, Compressible(9), stored);
        var cut = new LblkAlloc(form.Length - 1, 0, AllocFor(form).Pblks.ToArray());
        Assert.Equal(StoredLblkFault.Undecodable, StoredLblk.Decode(s_noCrc, 1, cut, stored, new byte[LblkSize]).Fault);
    }

    [Fact]
    public void Encoding_and_decoding_allocate_nothing()
    {
        var data = Compressible(4);
        var stored = new byte[LblkSize];
        var back = new byte[LblkSize];
        var codec = Codec.Create(CompressionAlgorithm.Lz4, 0);
        var alloc = AllocFor(StoredLblk.Encode(s_crc, codec, 3, data, stored));
        StoredLblk.Decode(s_crc, 3, alloc, stored, back); // warm up
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            StoredLblk.Encode(s_crc, codec, 3, data, stored);
            Assert.True(StoredLblk.Decode(s_crc, 3, alloc, stored, back).Ok);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }
}
