using System.Buffers.Binary;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

public class HeaderTests
{
    /// <summary>Every field distinct and with distinct bytes, so a swapped or misplaced byte shows.</summary>
    private static readonly Header s_distinctive = new()
    {
        NrPhysicalSectors = 0x1122334455667788,
        NrLogicalSectors = 0x8877665544332211,
        LblkShift = 0x0102,
        Flags = HeaderFlags.Dirty | HeaderFlags.LblkCrc,
        Algorithm = CompressionAlgorithm.Zstd,
        Level = 19,
        NrZones = 0xA1B2C3D4,
        LblkPerZone = 0x0C0D0E0F,
        PblkUsed = 0x0123456789ABCDEF,
        LblkUsed = 0xFEDCBA9876543210,
    };

    private static byte[] Serialize(Header header)
    {
        var page = new byte[Layout.HeaderSize];
        header.Write(page);
        return page;
    }

    private static byte[] ValidImage() => Serialize(s_distinctive);

    [Fact]
    public void Golden_bytes_pin_every_field_offset_and_width()
    {
        var page = new byte[Layout.HeaderSize + 16];
        page.AsSpan().Fill(0xEE);
        s_distinctive.Write(page);

        byte[] expected = Convert.FromHexString(
            "4342441A" +         // 0x00 magic 'C' 'B' 'D' 0x1A
            "0100" + "0000" +    // 0x04 version_major 1, 0x06 version_minor 0
            "8877665544332211" + // 0x08 nr_physical_sectors
            "1122334455667788" + // 0x10 nr_logical_sectors
            "0201" +             // 0x18 lblk_shift
            "0500" +             // 0x1A flags Dirty | LblkCrc
            "03" + "13" +        // 0x1C algorithm zstd, 0x1D level 19
            "0000" +             // 0x1E reserved
            "D4C3B2A1" +         // 0x20 nr_zones
            "0F0E0D0C" +         // 0x24 lblk_per_zone
            "EFCDAB8967452301" + // 0x28 pblk_used
            "1032547698BADCFE"); // 0x30 lblk_used
        Assert.Equal(0x38, expected.Length);
        Assert.Equal(expected, page[..0x38]);
        Assert.All(page[0x38..0x1FC], b => Assert.Equal(0, b));
        Assert.Equal(Checksums.Crc32C(page.AsSpan(0, 0x1FC)), BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x1FC)));
        Assert.All(page[0x200..Layout.HeaderSize], b => Assert.Equal(0, b));
        Assert.All(page[Layout.HeaderSize..], b => Assert.Equal(0xEE, b)); // nothing past the 4096-byte header
    }

    [Fact]
    public void Golden_checksum_of_a_fixed_header_is_pinned()
    {
        var page = ValidImage();
        Assert.Equal(0xCC5D14A6u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x1FC)));
    }

    [Fact]
    public void Field_table_agrees_with_the_offsets_the_code_uses()
    {
        Assert.Equal(Header.Offsets.VersionMajor, HeaderField.VersionMajor.Offset);
        Assert.Equal(Header.Offsets.VersionMinor, HeaderField.VersionMinor.Offset);
        Assert.Equal(Header.Offsets.NrPhysicalSectors, HeaderField.NrPhysicalSectors.Offset);
        Assert.Equal(Header.Offsets.NrLogicalSectors, HeaderField.NrLogicalSectors.Offset);
        Assert.Equal(Header.Offsets.LblkShift, HeaderField.LblkShift.Offset);
        Assert.Equal(Header.Offsets.Flags, HeaderField.Flags.Offset);
        Assert.Equal(Header.Offsets.Algorithm, HeaderField.Algorithm.Offset);
        Assert.Equal(Header.Offsets.Level, HeaderField.Level.Offset);
        Assert.Equal(Header.Offsets.NrZones, HeaderField.NrZones.Offset);
        Assert.Equal(Header.Offsets.LblkPerZone, HeaderField.LblkPerZone.Offset);
        Assert.Equal(Header.Offsets.PblkUsed, HeaderField.PblkUsed.Offset);
        Assert.Equal(Header.Offsets.LblkUsed, HeaderField.LblkUsed.Offset);
        Assert.Equal(0x38, Header.Offsets.ReservedEnd10);
        Assert.Equal((0x38, 0x40, 0x48, 0x50, 0x58, 0x5C), (Header.Offsets.LogPblks, Header.Offsets.LogId, Header.Offsets.LogTail,
            Header.Offsets.LogSeq, Header.Offsets.LogEpoch, Header.Offsets.LogTailEpoch));
        Assert.Equal(0x60, Header.Offsets.ReservedEnd);
        Assert.Equal(HeaderImage.ChecksumOffset, Header.Offsets.Checksum);
    }

    [Fact]
    public void Persisted_constants_are_pinned()
    {
        Assert.Equal(new byte[] { 0x43, 0x42, 0x44, 0x1A }, Header.Magic.ToArray());
        Assert.Equal(1, Header.CurrentVersionMajor);
        Assert.Equal(2, Header.CurrentVersionMinor);
        Assert.Equal(0, Header.NoLogVersionMinor);
        Assert.Equal(1, Header.LogVersionMinor);
        Assert.Equal(2, Header.PatchedVersionMinor);
        Assert.Equal(4, PatchedLblk.AlgorithmId);
        Assert.Equal(16, PatchedLblk.HeadSize);
        Assert.Equal(16, PatchedLblk.PatchHeadSize);
        Assert.Equal(0x4C444243u, LogRecord.Magic);
        Assert.Equal(64, LogRecord.HeaderSize);
        Assert.Equal((1, 2, 3), ((int)LogRecordKind.Data, (int)LogRecordKind.Zero, (int)LogRecordKind.Pad));
        Assert.Equal(1, (ushort)HeaderFlags.Dirty);
        Assert.Equal(2, (ushort)HeaderFlags.ZeroDetect);
        Assert.Equal(4, (ushort)HeaderFlags.LblkCrc);
        Assert.Equal(7, (ushort)HeaderFlags.Known);
        Assert.Equal(1, (byte)CompressionAlgorithm.Lz4);
        Assert.Equal(2, (byte)CompressionAlgorithm.Zlib);
        Assert.Equal(3, (byte)CompressionAlgorithm.Zstd);
        Assert.Equal(512, Layout.SectorSize);
        Assert.Equal(4096, Layout.PblkSize);
        Assert.Equal(4096, Layout.HeaderSize);
        Assert.Equal(32768, Layout.PblksPerZoneData);
    }

    [Fact]
    public void Round_trip_keeps_the_distinctive_header()
    {
        Assert.True(Header.TryRead(ValidImage(), out var back));
        Assert.Equal(s_distinctive, back);
    }

    [Fact]
    public void Only_the_first_sector_is_needed_to_read()
    {
        var page = ValidImage();
        Assert.True(Header.TryRead(page.AsSpan(0, 512), out var back));
        Assert.Equal(s_distinctive, back);
        Assert.False(Header.TryRead(page.AsSpan(0, 511), out _));
        Assert.False(Header.TryRead([], out _));
    }

    private static readonly Gen<(CompressionAlgorithm, byte)> s_algorithmAndLevel =
        Gen.OneOf(CompressionAlgorithm.Lz4, CompressionAlgorithm.Zlib, CompressionAlgorithm.Zstd)
            .SelectMany(a =>
            {
                var (min, max, _) = CodecLimits.Levels(a);
                return Gen.Int[min, max].Select(level => (a, (byte)level));
            });

    private static readonly Gen<Header> s_header =
        Gen.Select(Gen.ULong, Gen.ULong, Gen.UShort, Gen.Int[0, 7], s_algorithmAndLevel, Gen.UInt, Gen.UInt, Gen.Select(Gen.ULong, Gen.ULong),
            (physical, logical, shift, flags, al, zones, perZone, used) => new Header
            {
                NrPhysicalSectors = physical,
                NrLogicalSectors = logical,
                LblkShift = shift,
                Flags = (HeaderFlags)flags,
                Algorithm = al.Item1,
                Level = al.Item2,
                NrZones = zones,
                LblkPerZone = perZone,
                PblkUsed = used.Item1,
                LblkUsed = used.Item2,
            });

    [Fact]
    public void Round_trip_keeps_every_field_for_any_values()
    {
        s_header.Sample(header =>
        {
            var page = Serialize(header);
            Assert.True(Header.TryRead(page, out var back));
            Assert.Equal(header, back);
            Assert.Equal(page, Serialize(back));
            foreach (var field in HeaderField.All)
                Assert.Equal(Expected(header, field), HeaderImage.Get(page, field));
        }, iter: 2000);
    }

    private static ulong Expected(Header h, HeaderField field) => field.Name switch
    {
        "version_major" => h.VersionMajor,
        "version_minor" => h.VersionMinor,
        "nr_physical_sectors" => h.NrPhysicalSectors,
        "nr_logical_sectors" => h.NrLogicalSectors,
        "lblk_shift" => h.LblkShift,
        "flags" => (ushort)h.Flags,
        "algorithm" => (byte)h.Algorithm,
        "level" => h.Level,
        "nr_zones" => h.NrZones,
        "lblk_per_zone" => h.LblkPerZone,
        "pblk_used" => h.PblkUsed,
        "lblk_used" => h.LblkUsed,
        _ => throw new ArgumentException(field.Name),
    };

    [Fact]
    public void Write_clears_stale_bytes_of_the_whole_header()
    {
        var page = new byte[Layout.HeaderSize];
        page.AsSpan().Fill(0x5A);
        s_distinctive.Write(page);
        Assert.Equal(ValidImage(), page);
    }

    [Theory]
    [InlineData(0x00, 0x58)]
    [InlineData(0x03, 0x00)]
    public void Wrong_magic_is_not_a_cbd_image(int offset, byte value)
    {
        var page = ValidImage();
        HeaderImage.SetByte(page, offset, value);
        Assert.False(Header.TryRead(page, out _));
        Assert.False(Header.TryRead(new byte[Layout.HeaderSize], out _));
    }

    [Fact]
    public void Any_flipped_bit_of_the_first_sector_is_caught()
    {
        var good = ValidImage();
        var page = (byte[])good.Clone();
        for (int bit = 0; bit < 512 * 8; bit++)
        {
            int offset = bit / 8;
            page[offset] ^= (byte)(1 << (bit % 8));
            if (offset < 4)
            {
                Assert.False(Header.TryRead(page, out _)); // a different magic: not ours at all
            }
            else
            {
                var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
                Assert.Contains("checksum", e.Message);
                Assert.Contains($"0x{BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x1FC)):x8}", e.Message);
            }
            page[offset] ^= (byte)(1 << (bit % 8));
        }
        Assert.Equal(good, page);
    }

    [Theory]
    [InlineData(2, 0, "2.0")]
    [InlineData(1, 1, "1.1")]
    [InlineData(0, 9, "0.9")]
    [InlineData(0xFFFF, 0xFFFF, "65535.65535")]
    public void Unsupported_version_is_rejected_naming_it(int major, int minor, string shown)
    {
        var page = ValidImage();
        HeaderImage.Set(page, HeaderField.VersionMajor, (ulong)major);
        HeaderImage.Set(page, HeaderField.VersionMinor, (ulong)minor);
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("version", e.Message);
        Assert.Contains(shown, e.Message);
        Assert.Contains("1.0", e.Message);
    }

    [Theory]
    [InlineData(0x0008, "0x0008")]
    [InlineData(0x8000, "0x8000")]
    [InlineData(0xFFFF, "0xfff8")]
    public void Unknown_flag_bits_are_rejected_naming_them(int flags, string unknown)
    {
        var page = ValidImage();
        HeaderImage.Set(page, HeaderField.Flags, (ulong)flags);
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("flags", e.Message);
        Assert.Contains(unknown, e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Theory]
    [InlineData(0x0000)]
    [InlineData(0x0001)]
    [InlineData(0x0002)]
    [InlineData(0x0004)]
    [InlineData(0x0007)]
    public void Known_flag_bits_are_accepted(int flags)
    {
        var page = ValidImage();
        HeaderImage.Set(page, HeaderField.Flags, (ulong)flags);
        Assert.True(Header.TryRead(page, out var back));
        Assert.Equal((HeaderFlags)flags, back.Flags);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4)]
    [InlineData(255)]
    public void Unknown_algorithm_is_rejected_naming_it(int algorithm)
    {
        var page = ValidImage();
        HeaderImage.Set(page, HeaderField.Algorithm, (ulong)algorithm);
        HeaderImage.Set(page, HeaderField.Level, 1);
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("algorithm", e.Message);
        Assert.Contains($": {algorithm},", e.Message);
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4, 13, "0..12")]
    [InlineData(CompressionAlgorithm.Lz4, 255, "0..12")]
    [InlineData(CompressionAlgorithm.Zlib, 0, "1..9")]
    [InlineData(CompressionAlgorithm.Zlib, 10, "1..9")]
    [InlineData(CompressionAlgorithm.Zstd, 0, "1..22")]
    [InlineData(CompressionAlgorithm.Zstd, 23, "1..22")]
    public void Level_out_of_the_algorithms_range_is_rejected_naming_it(CompressionAlgorithm algorithm, int level, string range)
    {
        var page = ValidImage();
        HeaderImage.Set(page, HeaderField.Algorithm, (byte)algorithm);
        HeaderImage.Set(page, HeaderField.Level, (ulong)level);
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("level", e.Message);
        Assert.Contains($": {level} ", e.Message);
        Assert.Contains(range, e.Message);
    }

    [Theory]
    [InlineData(CompressionAlgorithm.Lz4, 0)]
    [InlineData(CompressionAlgorithm.Lz4, 12)]
    [InlineData(CompressionAlgorithm.Zlib, 1)]
    [InlineData(CompressionAlgorithm.Zlib, 9)]
    [InlineData(CompressionAlgorithm.Zstd, 1)]
    [InlineData(CompressionAlgorithm.Zstd, 22)]
    public void Levels_at_the_ends_of_the_range_are_accepted(CompressionAlgorithm algorithm, int level)
    {
        var page = Serialize(s_distinctive with { Algorithm = algorithm, Level = (byte)level });
        Assert.True(Header.TryRead(page, out var back));
        Assert.Equal(algorithm, back.Algorithm);
        Assert.Equal(level, back.Level);
    }

    [Theory]
    [InlineData(0x1E)]
    [InlineData(0x1F)]
    [InlineData(0x38)]
    [InlineData(0x100)]
    [InlineData(0x1FB)]
    public void Non_zero_reserved_byte_is_rejected_naming_its_offset_and_value(int offset)
    {
        var page = ValidImage();
        HeaderImage.SetByte(page, offset, 0x5A);
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("reserved", e.Message);
        Assert.Contains($"0x{offset:X}", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("0x5a", e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void Checksum_is_checked_before_any_other_field()
    {
        // A bad version and a bad checksum together: the checksum is what gets reported.
        var page = ValidImage();
        HeaderImage.Set(page, HeaderField.VersionMajor, 9);
        page[0x1FC] ^= 1;
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("checksum", e.Message);
    }
}
