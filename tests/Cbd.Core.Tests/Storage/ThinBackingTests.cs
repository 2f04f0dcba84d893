using System.Diagnostics;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;
using Xunit.Abstractions;

namespace Cbd.Core.Tests.Storage;

/// <summary>
/// A real image file under the temporary directory (ext4 here): the pblks the device frees are punched out of it, so
/// the file holds about what its data compresses to however often it was rewritten. The sizes are a quarter and a
/// third of a 1 GiB image with 900 MB written in three rounds and ten rewrites of 200 MB, to run in seconds here.
/// </summary>
public sealed class ThinBackingTests(ITestOutputHelper output) : IDisposable
{
    private const int MiB = 1 << 20;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"cbd-thin-{Guid.NewGuid():N}.img");

    public void Dispose() => File.Delete(_path);

    [Fact]
    public async Task A_punched_range_of_a_file_reads_as_zeros_and_is_no_longer_allocated()
    {
        await using var store = FileBackingStore.Create(_path, 16 * MiB);
        await store.WriteAsync(4 * MiB, DeviceTestKit.Random(4 * MiB, 1));
        await store.FlushAsync();
        long before = store.AllocatedBytes!.Value;
        Assert.True(before >= 4 * MiB, $"{before} bytes allocated after writing 4 MiB");

        Assert.True(await store.DeallocateAsync(5 * MiB, 2 * MiB));
        long after = store.AllocatedBytes!.Value;
        Assert.Equal(before - 2 * MiB, after);
        var back = new byte[2 * MiB];
        await store.ReadAsync(5 * MiB, back);
        Assert.False(back.AsSpan().ContainsAnyExcept((byte)0));
        Assert.Equal(16L * MiB, store.Length);
    }

    /// <summary>
    /// 256 MiB formatted, 3 x 75 MiB of random data written over the same range, everything discarded and flushed:
    /// with unmap the file keeps the metadata and little more; with ignore it keeps what was last stored.
    /// </summary>
    [Theory]
    [InlineData(DiscardMode.Unmap)]
    [InlineData(DiscardMode.Ignore)]
    public async Task Discarding_everything_leaves_the_file_holding_about_the_metadata(DiscardMode discard)
    {
        const long Physical = 256L * MiB, Round = 75L * MiB;
        var clock = Stopwatch.StartNew();
        await FormatAsync(Physical);
        long written = 0;
        await using (var device = await OpenAsync(discard))
        {
            for (int round = 0; round < 3; round++)
            {
                for (long at = 0; at < Round; at += 4 * MiB)
                {
                    await device.WriteAsync(at, DeviceTestKit.Random(4 * MiB, round * 1000 + (int)(at / MiB)));
                    written += 4 * MiB;
                }
                await device.FlushAsync();
            }
            output.WriteLine($"{discard}: {Describe(await AllocatedAsync())} allocated after {Describe(written)} written in 3 rounds");
            await device.TrimAsync(0, device.Size);
            await device.FlushAsync();
        }
        long allocated = await AllocatedAsync();
        output.WriteLine($"{discard}: {Describe(allocated)} allocated after everything was discarded, of a {Describe(Physical)} image ({clock.Elapsed.TotalSeconds:0.0} s)");
        if (discard == DiscardMode.Unmap)
            Assert.True(allocated < Physical / 50, $"{allocated} bytes allocated, not under 2 % of {Physical}");
        else
            Assert.True(allocated > Round, $"{allocated} bytes allocated with discard ignore: the last round's data should still be there");
    }

    /// <summary>
    /// 64 MiB of compressible text rewritten ten times: the file holds about one copy's compressed size (the pblks in
    /// use, from the header's stats) plus the metadata, where without punching it grows by a copy each round until full.
    /// </summary>
    [Fact]
    public async Task Ten_rewrites_leave_the_file_holding_about_one_compressed_copy()
    {
        const long Physical = 256L * MiB;
        const int Size = 64 * MiB;
        var clock = Stopwatch.StartNew();
        await FormatAsync(Physical);
        var data = TextPattern(Size, seed: 7);
        await using (var device = await OpenAsync(DiscardMode.Unmap))
        {
            for (int round = 0; round < 10; round++)
            {
                for (int at = 0; at < Size; at += 4 * MiB)
                    await device.WriteAsync(at, data.AsMemory(at, 4 * MiB));
                await device.FlushAsync();
            }
        }
        long allocated = await AllocatedAsync();
        long stored;
        await using (var store = FileBackingStore.Open(_path, writable: false))
            stored = (long)(await Geometry.ReadAsync(store)).Header.PblkUsed * Layout.PblkSize;
        output.WriteLine($"{Describe(10L * Size)} written as 10 rewrites of {Describe(Size)}: {Describe(stored)} stored (ratio " +
            $"{(double)Size / stored:0.00}), {Describe(allocated)} allocated in the file ({(double)allocated / stored:0.00} x stored; {clock.Elapsed.TotalSeconds:0.0} s)");
        Assert.True(stored < Size / 2, $"the pattern did not compress: {stored} bytes stored");
        Assert.InRange(allocated, stored, stored * 5 / 4 + 2 * MiB);
    }

    /// <summary>Lines of text from a small vocabulary with random numbers in them: LZ4 stores it in about half or less.</summary>
    private static byte[] TextPattern(int length, int seed)
    {
        var random = new Random(seed);
        string[] words = ["block", "device", "compressed", "lblk", "pblk", "zone", "checkpoint", "write-back", "flush", "trim"];
        var data = new byte[length];
        int at = 0;
        while (at < length)
        {
            string line = $"{random.Next(10_000):D4} the {words[random.Next(words.Length)]} of the {words[random.Next(words.Length)]} is written back\n";
            int n = Math.Min(line.Length, length - at);
            for (int i = 0; i < n; i++)
                data[at + i] = (byte)line[i];
            at += n;
        }
        return data;
    }

    private async Task FormatAsync(long physical)
    {
        await using var store = FileBackingStore.Create(_path, physical);
        await ImageFormatter.FormatAsync(store, new FormatOptions());
    }

    private ValueTask<CompressedDevice> OpenAsync(DiscardMode discard) =>
        CompressedDevice.OpenAsync(FileBackingStore.Open(_path, writable: true), new DeviceOptions { FlushDelay = TimeSpan.FromHours(1), Discard = discard });

    /// <summary>The file's allocated bytes, looked at without its lock, as <c>cbd info</c> does while a device has it open.</summary>
    private async Task<long> AllocatedAsync()
    {
        await using var store = FileBackingStore.OpenShared(_path);
        return store.AllocatedBytes ?? throw new InvalidOperationException("no st_blocks for a regular file");
    }

    private static string Describe(long bytes) => $"{bytes / (double)MiB:0.0} MiB";
}
