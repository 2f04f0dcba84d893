using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;

namespace Cbd.Core.Tests.Engine;

/// <summary>Records are compressed hard while they compress well, and at the fast setting while they barely do.</summary>
public class RecordCompressionTests
{
    private static LogRecordHeader Record(int length, int payloadLength) =>
        new(LogRecordKind.Data, payloadLength < length ? (byte)1 : LogRecord.Raw, 0, 0, 0, (uint)LogRecord.SectorsFor(payloadLength), 0, 0, (uint)length, (uint)payloadLength);

    [Fact]
    public void The_setting_follows_what_recent_records_kept_of_their_bytes()
    {
        Assert.True(Codec.CreateFast() is not null, "liblz4.so.1 (Debian's liblz4-1) is needed for the fast setting");
        var compression = new RecordCompression();
        void ObserveMany(int length, int payloadLength)
        {
            for (int i = 0; i < 64; i++)
                compression.Observe(Record(length, payloadLength));
        }
        var thorough = compression.Codec;
        // Barely compressible 4 KiB blocks, as fio's default buffers: 3895 of 4096 bytes kept.
        ObserveMany(4096, 3895);
        var fast = compression.Codec;
        Assert.NotSame(thorough, fast);
        // Between the two thresholds the setting stays.
        ObserveMany(4096, 3400);
        Assert.Same(fast, compression.Codec);
        // Small records say nothing.
        ObserveMany(512, 100);
        Assert.Same(fast, compression.Codec);
        // File data, kept to 70 % at the fast setting: back to the thorough one.
        ObserveMany(4096, 2850);
        Assert.Same(thorough, compression.Codec);
        // Incompressible records, stored as they are, count as keeping everything.
        ObserveMany(4096, 4096);
        Assert.Same(fast, compression.Codec);
    }
}
