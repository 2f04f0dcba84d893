using System.Buffers.Binary;
using Cbd.Core.Compression;
using Cbd.Core.Format;
using CsCheck;

namespace Cbd.Core.Tests.Format;

/// <summary>The write log's records and the version 1.1 header fields (FORMAT.md, "The write log").</summary>
public class LogRecordTests
{
    private const int LblkSize = 65536;
    private const ulong LogId = 0x1122334455667788;
    private static readonly Codec s_lz4 = Codec.Create(CompressionAlgorithm.Lz4, 0);

    private static (byte[] Record, LogRecordHeader Header) Sealed(byte[] data, int offset, ulong seq = 7, uint epoch = 3, Codec? codec = null)
    {
        var record = new byte[LogRecord.MaxBytes(LblkSize)];
        var header = LogRecord.EncodeData(record, codec, LogId, 42, offset, data) with { Seq = seq, Epoch = epoch };
        LogRecord.Seal(record, header);
        return (record, header);
    }

    private static LogRecordFault Read(byte[] record, out LogRecordHeader header, ulong seq = 7, uint minEpoch = 0, ulong logId = LogId) =>
        LogRecord.TryReadHeader(record.AsSpan(0, Layout.SectorSize), logId, seq, minEpoch, LblkSize, nrLblks: 100, room: 1 << 20, out header);

    [Fact]
    public void Golden_bytes_pin_every_field_of_a_record_header()
    {
        byte[] data = [1, 2, 3];
        var (record, _) = Sealed(data, offset: 0x0102);
        byte[] expected = Convert.FromHexString(
            "4342444C" +          // 0x00 magic "CBDL"
            "01" + "00" +         // 0x04 kind data, 0x05 algorithm raw
            "0000" +              // 0x06 reserved
            "8877665544332211" +  // 0x08 log_id
            "0700000000000000" +  // 0x10 seq
            "03000000" +          // 0x18 epoch
            "01000000" +          // 0x1C sectors
            "2A00000000000000" +  // 0x20 lblk
            "02010000" +          // 0x28 offset
            "03000000" +          // 0x2C length
            "03000000" +          // 0x30 payload_length
            "0000000000000000");  // 0x34 reserved
        Assert.Equal(0x3C, expected.Length);
        Assert.Equal(expected, record[..0x3C]);
        var crc = new System.IO.Hashing.Crc32(System.IO.Hashing.Crc32ParameterSet.Crc32C);
        crc.Append(record.AsSpan(0, 0x3C));
        crc.Append(data);
        Assert.Equal(crc.GetCurrentHashAsUInt32(), BinaryPrimitives.ReadUInt32LittleEndian(record.AsSpan(0x3C)));
        Assert.Equal(data, record[0x40..0x43]);
        Assert.All(record[0x43..Layout.SectorSize], b => Assert.Equal(0, b));
    }

    [Fact]
    public void Records_round_trip_raw_and_compressed()
    {
        Gen.Select(Gen.Int[0, LblkSize - 1], Gen.Int[1, LblkSize], Gen.Bool, Gen.Int).Sample((offset, length, compressible, seed) =>
        {
            length = Math.Min(length, LblkSize - offset);
            var data = compressible ? Compressible(length, seed) : Noise(length, seed);
            var (record, sealedHeader) = Sealed(data, offset, codec: s_lz4);
            Assert.Equal(LogRecordFault.None, Read(record, out var header));
            Assert.Equal(sealedHeader, header);
            Assert.True(LogRecord.Verify(record, header));
            var back = new byte[length];
            Assert.True(LogRecord.TryDecodePayload(record, header, back));
            Assert.Equal(data, back);
            // A payload is compressed only when that saves a sector.
            if (header.PayloadAlgorithm != LogRecord.Raw)
                Assert.True(header.Sectors < LogRecord.SectorsFor(length));
        }, iter: 300);
    }

    [Fact]
    public void A_compressible_4k_write_takes_fewer_sectors_than_it_would_raw()
    {
        var (_, header) = Sealed(Compressible(4096, 1), 0, codec: s_lz4);
        Assert.Equal((byte)CompressionAlgorithm.Lz4, header.PayloadAlgorithm);
        Assert.True(header.Sectors < LogRecord.SectorsFor(4096), $"{header.Sectors} sectors");
        var (_, raw) = Sealed(Noise(4096, 1), 0, codec: s_lz4);
        Assert.Equal(LogRecord.Raw, raw.PayloadAlgorithm);
        Assert.Equal(9u, raw.Sectors); // 64 + 4096 bytes
    }

    [Fact]
    public void A_record_torn_at_any_sector_fails_its_crc()
    {
        var data = Noise(8192, 5);
        var (record, header) = Sealed(data, 0);
        for (int sector = 1; sector < header.Sectors; sector++)
        {
            var torn = record.ToArray();
            torn.AsSpan(sector * Layout.SectorSize, Layout.SectorSize).Clear(); // what the sector held before
            Assert.Equal(LogRecordFault.None, Read(torn, out var h));
            Assert.False(LogRecord.Verify(torn, h), $"sector {sector} torn away went unnoticed");
        }
    }

    [Fact]
    public void A_reader_takes_only_the_record_it_expects_next()
    {
        var (record, _) = Sealed([9, 9], 0, seq: 7, epoch: 3);
        Assert.Equal(LogRecordFault.UnexpectedSeq, Read(record, out _, seq: 8));
        Assert.Equal(LogRecordFault.OtherLog, Read(record, out _, logId: LogId + 1));
        Assert.Equal(LogRecordFault.OlderEpoch, Read(record, out _, minEpoch: 4));
        Assert.Equal(LogRecordFault.BadMagic, Read(new byte[Layout.SectorSize], out _));
        var outside = record.ToArray();
        BinaryPrimitives.WriteUInt64LittleEndian(outside.AsSpan(0x20), 100); // lblk past the device
        Assert.Equal(LogRecordFault.BadFields, Read(outside, out _));
        var reserved = record.ToArray();
        reserved[0x35] = 1;
        Assert.Equal(LogRecordFault.BadFields, Read(reserved, out _));
    }

    [Fact]
    public void Zero_and_pad_records_are_one_sector_without_payload()
    {
        var sector = new byte[Layout.SectorSize];
        LogRecord.Seal(sector, LogRecord.Zero(LogId, 3, 4096, 8192) with { Seq = 7 });
        Assert.Equal(LogRecordFault.None, Read(sector, out var zero));
        Assert.Equal((LogRecordKind.Zero, 1u, 4096u, 8192u), (zero.Kind, zero.Sectors, zero.Offset, zero.Length));
        Assert.True(LogRecord.Verify(sector, zero));
        Assert.False(zero.IsWhole(LblkSize));

        LogRecord.Seal(sector, LogRecord.Pad(LogId, 10 * Layout.SectorSize) with { Seq = 7 });
        Assert.Equal(LogRecordFault.None, Read(sector, out var pad));
        Assert.Equal((LogRecordKind.Pad, 10u), (pad.Kind, pad.Sectors));
        Assert.True(LogRecord.Verify(sector, pad));
    }

    [Fact]
    public void A_version_1_1_header_round_trips_its_log_fields()
    {
        var header = new Header
        {
            VersionMinor = Header.LogVersionMinor,
            NrPhysicalSectors = 8 * 1024,
            NrLogicalSectors = 128,
            Algorithm = CompressionAlgorithm.Lz4,
            NrZones = 1,
            LblkPerZone = 1,
            LogPblks = 0x0102030405060708,
            LogId = LogId,
            LogTail = 0x1234 * 512,
            LogSeq = 0xABCDEF,
            LogEpoch = 77,
            LogTailEpoch = 76,
        };
        var page = new byte[Layout.HeaderSize];
        header.Write(page);
        Assert.Equal(0x0102030405060708UL, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x38)));
        Assert.Equal(LogId, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x40)));
        Assert.Equal(0x1234UL * 512, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x48)));
        Assert.Equal(0xABCDEFUL, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x50)));
        Assert.Equal(77u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x58)));
        Assert.Equal(76u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x5C)));
        Assert.All(page[0x60..0x1FC], b => Assert.Equal(0, b));
        Assert.True(Header.TryRead(page, out var back));
        Assert.Equal(header, back);
    }

    [Fact]
    public void A_version_1_0_header_with_log_fields_and_a_1_1_header_without_a_log_are_refused()
    {
        var page = new byte[Layout.HeaderSize];
        new Header { NrPhysicalSectors = 8, NrLogicalSectors = 8, Algorithm = CompressionAlgorithm.Lz4, NrZones = 1, LblkPerZone = 1, LogPblks = 40 }
            .Write(page);
        var e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("reserved byte 0x38", e.Message);
        Assert.Contains("version 1.0", e.Message);

        new Header { VersionMinor = 1, NrPhysicalSectors = 8, NrLogicalSectors = 8, Algorithm = CompressionAlgorithm.Lz4, NrZones = 1, LblkPerZone = 1 }
            .Write(page);
        e = Assert.Throws<InvalidDataException>(() => Header.TryRead(page, out _));
        Assert.Contains("log_pblks: 0", e.Message);
    }

    [Fact]
    public void The_log_takes_the_last_pblks_and_no_zone_reaches_them()
    {
        long physical = 64L << 20;
        var header = ImageFormatter.Plan(physical, new FormatOptions { LogSize = 8L << 20 });
        Assert.Equal(Header.PatchedVersionMinor, header.VersionMinor);
        Assert.NotEqual(0UL, header.LogId);
        var g = Geometry.FromHeader(header, physical);
        Assert.Equal(2048UL, g.LogPblks);
        Assert.Equal(g.NrPblks - 2048, g.ZonesEnd);
        Assert.Equal((long)g.ZonesEnd * Layout.PblkSize, g.LogStartByte);
        uint last = g.NrZones - 1;
        Assert.True(g.DataStart(last) + (ulong)g.DataPblks(last) <= g.ZonesEnd);
        Assert.False(g.TryLocateDataPblk(g.ZonesEnd, out _, out _));
        Assert.False(g.TryLocateDataPblk(g.NrPblks - 1, out _, out _));
        Assert.Equal(0UL, ImageFormatter.Plan(physical, new FormatOptions()).LogPblks); // the library formats 1.0 unless asked
    }

    [Fact]
    public void A_log_below_its_least_size_or_a_bad_tail_is_refused()
    {
        long physical = 64L << 20;
        var e = Assert.Throws<ArgumentException>(() => ImageFormatter.Plan(physical, new FormatOptions { LogSize = 64 << 10 }));
        Assert.Contains("at least", e.Message);
        var header = ImageFormatter.Plan(physical, new FormatOptions { LogSize = 1 << 20 });
        var bad = Assert.Throws<InvalidDataException>(() => Geometry.FromHeader(header with { LogTail = 100 }, physical));
        Assert.Contains("log_tail: 100", bad.Message);
        bad = Assert.Throws<InvalidDataException>(() => Geometry.FromHeader(header with { LogPblks = 3 }, physical));
        Assert.Contains("log_pblks: 3", bad.Message);
    }

    private static byte[] Compressible(int length, int seed)
    {
        var random = new Random(seed);
        var data = new byte[length];
        for (int i = 0; i < length; i++)
            data[i] = (byte)(i / 64 % 7 + (random.Next(16) == 0 ? random.Next(256) : 0));
        return data;
    }

    private static byte[] Noise(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
