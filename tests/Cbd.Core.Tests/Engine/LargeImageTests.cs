using System.Diagnostics;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Xunit.Abstractions;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Sparse files far larger than the data in them, on the real file system: open stays fast although
/// the pbats are checked against every lbat, and a zone's lbat of gigabytes is never held whole.
/// </summary>
public sealed class LargeImageTests(ITestOutputHelper output) : IDisposable
{
    private const long GiB = 1L << 30;
    private readonly string _directory = Directory.CreateTempSubdirectory("cbd-large-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public async Task Clean_1_TiB_sparse_image_opens_in_well_under_200_ms_and_checks_its_pbats_behind()
    {
        string path = Path.Combine(_directory, "big.img");
        var watch = Stopwatch.StartNew();
        await using (var store = FileBackingStore.Create(path, 1024 * GiB))
            await ImageFormatter.FormatAsync(store, new FormatOptions());
        output.WriteLine($"format {watch.Elapsed.TotalMilliseconds:F0} ms");
        watch.Restart();
        await using (var device = await CompressedDevice.OpenAsync(FileBackingStore.Open(path, writable: true)))
            await device.WriteAsync(0, DeviceTestKit.Compressible(1 << 20, 1));
        output.WriteLine($"first session {watch.Elapsed.TotalMilliseconds:F0} ms");

        var open = Stopwatch.StartNew();
        var lines = new List<string>();
        var device2 = await CompressedDevice.OpenAsync(FileBackingStore.Open(path, writable: true), new DeviceOptions { Log = lines.Add });
        open.Stop();
        await using (device2)
        {
            var scan = Stopwatch.StartNew();
            await device2.WriteAsync(1 << 20, DeviceTestKit.Compressible(1 << 20, 2));
            await device2.FlushAsync(); // write-back waits for the scan of every lbat
            scan.Stop();
            output.WriteLine($"open {open.Elapsed.TotalMilliseconds:F1} ms; first flush (after the lbat scan) {scan.Elapsed.TotalMilliseconds:F0} ms");
            Assert.Equal(32, device2.GetStats().LblksUsed);
        }
        Assert.Empty(lines);
        Assert.True(open.Elapsed < TimeSpan.FromMilliseconds(200), $"open took {open.Elapsed.TotalMilliseconds:F1} ms");
    }

    /// <summary>
    /// 8 GiB holding 7000 GiB: two zones whose lbats are 3.9 GiB each. Opening it dirty (recovery reads
    /// every entry) once threw OverflowException, as it allocated one array per lbat. Check and repair of
    /// the same image run through the real executable in Cbd.Cli.Tests.
    /// </summary>
    [Fact]
    public async Task Zones_with_lbats_of_gigabytes_open_dirty()
    {
        string path = Path.Combine(_directory, "thin.img");
        await using (var store = FileBackingStore.Create(path, 8 * GiB))
            await ImageFormatter.FormatAsync(store, new FormatOptions { LogicalSize = 7000 * GiB });
        var data = DeviceTestKit.Compressible(1 << 20, 3);
        long far = 6999 * GiB;
        await using (var device = await CompressedDevice.OpenAsync(FileBackingStore.Open(path, writable: true)))
        {
            Assert.Equal(2u, device.Geometry.NrZones);
            Assert.True(device.Geometry.LbatPblks * 4096 > int.MaxValue);
            await device.WriteAsync(far, data);
        }
        // Marked dirty, as a crash leaves it: the next open rebuilds the pbats from every entry.
        await using (var store = FileBackingStore.Open(path, writable: true))
        {
            var geometry = await Geometry.ReadAsync(store);
            await (geometry.Header with { Flags = geometry.Header.Flags | HeaderFlags.Dirty }).WriteAsync(store);
        }

        var watch = Stopwatch.StartNew();
        await using (var reopened = await CompressedDevice.OpenAsync(FileBackingStore.Open(path, writable: true)))
        {
            output.WriteLine($"dirty open (recovery over 7.8 GiB of lbats) {watch.Elapsed.TotalSeconds:F1} s");
            Assert.True(reopened.Recovered);
            var back = new byte[data.Length];
            await reopened.ReadAsync(far, back);
            Assert.Equal(data, back);
        }
    }
}
