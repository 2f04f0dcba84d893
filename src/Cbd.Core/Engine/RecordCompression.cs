using Cbd.Core.Compression;
using Cbd.Core.Format;

namespace Cbd.Core.Engine;

/// <summary>
/// How hard the write log's records are compressed, on the request path of every small write. On a 4 KiB block that
/// barely compresses (fio's default buffers: 9 sectors to 8), LZ4 at acceleration 1 took 4.0 us and acceleration 8 saved
/// the same sectors in 1.2 us, and random 4 KiB writes went 10-20 % faster with it; on file data, acceleration 1 keeps a
/// 4 KiB record to 3.8 sectors against 4.4 at 8, and the log's room sets how many merges each write costs. So records are
/// compressed at acceleration 1 while they compress well, and at <see cref="Codec.FastAcceleration"/> while the recent
/// ones kept more than seven eighths of their bytes: a running average over about the last 16 records of the device,
/// with hysteresis (back to 1 below three quarters). Updated without a lock: a lost update only delays a switch.
/// </summary>
internal sealed class RecordCompression
{
    private const int Scale = 1024;
    private const int FastFrom = Scale * 7 / 8;
    private const int ThoroughBelow = Scale * 3 / 4;

    /// <summary>Records smaller than this say too little of the data to count.</summary>
    private const int MinSample = 1024;

    private readonly Codec _thorough = Codec.Create(CompressionAlgorithm.Lz4, 0);
    private readonly Codec? _fast = Codec.CreateFast();
    private int _kept;
    private volatile bool _useFast;

    /// <summary>The codec for the next record.</summary>
    public Codec Codec => _useFast && _fast is not null ? _fast : _thorough;

    /// <summary>Takes in what a data record's payload kept of its bytes (all of them when stored as it is).</summary>
    public void Observe(in LogRecordHeader header)
    {
        if (header.Length < MinSample)
            return;
        int sample = (int)((long)header.PayloadLength * Scale / header.Length);
        int kept = _kept + (sample - _kept) / 16;
        _kept = kept;
        if (kept >= FastFrom)
            _useFast = true;
        else if (kept < ThoroughBelow)
            _useFast = false;
    }
}
