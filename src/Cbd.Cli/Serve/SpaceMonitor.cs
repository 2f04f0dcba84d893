using System.Diagnostics;
using Cbd.Core.Engine;

namespace Cbd.Cli.Serve;

/// <summary>
/// The device as served, telling the server's log about space: each write refused for lack of space (ENOSPC), at most
/// one line per <see cref="FullLogInterval"/> with a count of those not logged, and a warning as the data pblks in use
/// cross 80, 90 and 95 %, the way thin pools warn, checked every <see cref="PollInterval"/>. A client sees only the
/// error code, so without this an administrator learns of a full image from an application's failure.
/// </summary>
public sealed class SpaceMonitor : IBlockDevice
{
    public static readonly TimeSpan FullLogInterval = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);

    /// <summary>Percentages of data pblks in use that are warned of as they are reached.</summary>
    public static readonly int[] Thresholds = [80, 90, 95];

    /// <summary>A level is warned of again only after use fell this far below it, so usage hovering at a threshold is not a stream of lines.</summary>
    private const int Hysteresis = 5;

    private readonly IBlockDevice _device;
    private readonly string _image;
    private readonly Action<string> _log;
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _watch;
    private long _lastFullLog = long.MinValue;
    private long _fullNotLogged;
    private int _level;

    public SpaceMonitor(IBlockDevice device, string image, Action<string> log)
    {
        _device = device;
        _image = image;
        _log = log;
        CheckUsage();
        _watch = WatchAsync();
    }

    public long Size => _device.Size;
    public int BlockSize => _device.BlockSize;
    public bool IsReadOnly => _device.IsReadOnly;
    public bool CanProvision => _device.CanProvision;
    public bool ReadsWithoutWaiting => _device.ReadsWithoutWaiting;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
        => _device.ReadAsync(offset, buffer, cancellationToken);

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        try
        {
            await _device.WriteAsync(offset, data, fua, cancellationToken).ConfigureAwait(false);
        }
        catch (OutOfSpaceException ex)
        {
            ReportFull($"a write of {data.Length} bytes at offset {offset}", ex);
            throw;
        }
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            await _device.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OutOfSpaceException ex)
        {
            ReportFull("a flush", ex);
            throw;
        }
    }

    public async ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        try
        {
            await _device.TrimAsync(offset, length, cancellationToken).ConfigureAwait(false);
        }
        catch (OutOfSpaceException ex)
        {
            ReportFull($"a trim of {length} bytes at offset {offset}", ex);
            throw;
        }
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayDeallocate = true, bool fua = false, CancellationToken cancellationToken = default)
    {
        try
        {
            await _device.WriteZeroesAsync(offset, length, mayDeallocate, fua, cancellationToken).ConfigureAwait(false);
        }
        catch (OutOfSpaceException ex)
        {
            ReportFull($"zeroing {length} bytes at offset {offset}", ex);
            throw;
        }
    }

    public ValueTask<IReadOnlyList<BlockExtent>> GetBlockStatusAsync(long offset, long length, CancellationToken cancellationToken = default)
        => _device.GetBlockStatusAsync(offset, length, cancellationToken);

    public ValueTask PrefetchAsync(long offset, long length, CancellationToken cancellationToken = default)
        => _device.PrefetchAsync(offset, length, cancellationToken);

    public DeviceStats GetStats() => _device.GetStats();

    /// <summary>Stops watching; the device underneath is the caller's to close.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _watch.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        lock (_lock)
        {
            if (_fullNotLogged > 0)
            {
                _log($"{_image}: {_fullNotLogged} more requests refused for lack of space since the last report");
                _fullNotLogged = 0;
            }
        }
        _stop.Dispose();
    }

    private void ReportFull(string what, OutOfSpaceException ex)
    {
        long now = Stopwatch.GetTimestamp();
        lock (_lock)
        {
            if (_lastFullLog != long.MinValue && Stopwatch.GetElapsedTime(_lastFullLog, now) < FullLogInterval)
            {
                _fullNotLogged++;
                return;
            }
            string more = _fullNotLogged > 0 ? $" ({_fullNotLogged} more refused since the last report)" : "";
            _lastFullLog = now;
            _fullNotLogged = 0;
            _log($"{_image} is full: {what} was refused with ENOSPC ({ex.Message}){more}. " +
                "Free space by discarding in the client (fstrim), or stop the server and grow the image with cbd resize");
        }
    }

    private async Task WatchAsync()
    {
        using var timer = new PeriodicTimer(PollInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                CheckUsage();
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>Warns once per threshold crossed upwards; notes when use has gone back below one warned of.</summary>
    private void CheckUsage()
    {
        DeviceStats stats = _device.GetStats();
        if (stats.PblksTotal <= 0)
        {
            return;
        }
        double percent = 100.0 * stats.PblksUsed / stats.PblksTotal;
        lock (_lock)
        {
            int reached = Thresholds.LastOrDefault(t => percent >= t);
            if (reached > _level)
            {
                _level = reached;
                _log($"warning: {_image} is {percent:0.#} % full: {stats.PblksUsed} of {stats.PblksTotal} data pblks in use" +
                    $" ({SizeParser.FormatApproximate(stats.PhysicalBytesUsed)} of {SizeParser.FormatApproximate(stats.PblksTotal * Cbd.Core.Format.Layout.PblkSize)})." +
                    " Writes fail with ENOSPC when it is full: discard in the client (fstrim), or grow it with cbd resize");
            }
            else if (_level > 0 && percent < _level - Hysteresis)
            {
                _level = Thresholds.LastOrDefault(t => percent >= t);
                _log($"{_image} is {percent:0.#} % full again: {stats.PblksUsed} of {stats.PblksTotal} data pblks in use");
            }
        }
    }
}
