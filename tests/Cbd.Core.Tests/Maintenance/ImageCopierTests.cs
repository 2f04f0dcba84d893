using System.Diagnostics;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Cbd.Core.Storage;
using static Cbd.Core.Tests.Maintenance.MaintenanceKit;

namespace Cbd.Core.Tests.Maintenance;

public class ImageCopierTests
{
    private const int Lblk = 65536;

    /// <summary>
    /// 8 MiB and 1000 bytes: lblks in turn all zeros, compressible, random, and zeros but for their last
    /// byte; then a short, random tail.
    /// </summary>
    private static byte[] Source()
    {
        var data = new byte[8 * MiB + 1000];
        for (int i = 0; i < 128; i++)
        {
            var lblk = data.AsSpan(i * Lblk, Lblk);
            switch (i % 4)
            {
                case 1: Compressible(Lblk, i).CopyTo(lblk); break;
                case 2: MaintenanceKit.Random(Lblk, i).CopyTo(lblk); break;
                case 3: lblk[^1] = 1; break;
            }
        }
        MaintenanceKit.Random(1000, 500).CopyTo(data, 8 * MiB);
        return data;
    }

    private static int NonZeroLblks(byte[] source) =>
        Enumerable.Range(0, (source.Length + Lblk - 1) / Lblk)
            .Count(i => source.AsSpan(i * Lblk, Math.Min(Lblk, source.Length - i * Lblk)).ContainsAnyExcept((byte)0));

    [Fact]
    public async Task Import_then_export_round_trips_and_zeros_stay_holes_on_both_sides()
    {
        var source = Source();
        var store = await FormatAsync(64 * MiB);
        string path = Path.Combine(Path.GetTempPath(), $"cbd-export-{Guid.NewGuid():N}.raw");
        try
        {
            await using (var device = await OpenAsync(store))
            {
                var seen = new List<(long Done, long Total)>();
                await ImageCopier.ImportAsync(new MemoryStream(source), device, new SyncProgress<(long, long)>(p => { lock (seen) seen.Add(p); }));
                Assert.Equal((source.Length, (long)source.Length), seen.MaxBy(p => p.Done));
                Assert.Equal(NonZeroLblks(source), device.GetStats().LblksUsed);
                Assert.Equal(0, device.GetStats().DirtyLblks);
                Assert.True((await device.GetBlockStatusAsync(0, Lblk))[0].IsHole);
                Assert.True((await device.GetBlockStatusAsync(8 * MiB + Lblk, Lblk))[0].IsHole);

                using var file = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
                RandomAccess.Write(file, new byte[3 * MiB].AsSpan(), 0); // an old file's contents must not survive
                seen.Clear();
                await ImageCopier.ExportAsync(device, file, new SyncProgress<(long, long)>(p => { lock (seen) seen.Add(p); }));
                Assert.Equal((device.Size, device.Size), seen.MaxBy(p => p.Done));
                Assert.Equal(device.Size, RandomAccess.GetLength(file));
            }

            await using var exported = File.OpenRead(path);
            var head = new byte[source.Length];
            await exported.ReadExactlyAsync(head);
            Assert.True(head.AsSpan().SequenceEqual(source));
            var rest = new byte[4 * MiB];
            int n;
            while ((n = await exported.ReadAsync(rest)) > 0)
                Assert.False(rest.AsSpan(0, n).ContainsAnyExcept((byte)0));

            // Only the non-zero lblks take space: 3 of every 4 lblks of the 8 MiB, plus the tail.
            long allocated = AllocatedBytes(path);
            Assert.InRange(allocated, 1, (long)NonZeroLblks(source) * Lblk + 256 * 1024);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Import_over_old_data_makes_zero_lblks_holes_again()
    {
        var source = Source();
        var store = await FormatAsync(64 * MiB);
        await using var device = await OpenAsync(store);
        var junk = MaintenanceKit.Random(16 * Lblk, 7);
        await device.WriteAsync(0, junk);
        await device.WriteAsync(8 * MiB, junk);
        await device.FlushAsync();

        var raw = new MemoryBackingStore(source.Length);
        raw.Write(0, source);
        await ImageCopier.ImportAsync(raw, device);

        var back = new byte[source.Length];
        await device.ReadAsync(0, back);
        Assert.True(back.AsSpan().SequenceEqual(source));
        Assert.True((await device.GetBlockStatusAsync(4 * Lblk, Lblk))[0].IsHole);
        // Past the source the device keeps what it had: an import writes the source's range only.
        var after = new byte[Lblk];
        await device.ReadAsync(8 * MiB + Lblk, after);
        Assert.True(after.AsSpan().SequenceEqual(junk.AsSpan(Lblk, Lblk)));
    }

    [Fact]
    public async Task Export_to_a_pipe_writes_every_byte_and_to_a_stream_skips_zeros()
    {
        var source = Source();
        var store = await FormatAsync(32 * MiB);
        await using var device = await OpenAsync(store);
        await ImageCopier.ImportAsync(new MemoryStream(source), device);

        var pipe = new MemoryStream();
        await ImageCopier.ExportAsync(device, new ForwardOnlyStream(pipe));
        Assert.Equal(device.Size, pipe.Length);
        Assert.True(pipe.GetBuffer().AsSpan(0, source.Length).SequenceEqual(source));
        Assert.False(pipe.GetBuffer().AsSpan(source.Length, (int)device.Size - source.Length).ContainsAnyExcept((byte)0));

        var seekable = new MemoryStream();
        seekable.Write(new byte[] { 9, 9, 9 });
        seekable.Write(MaintenanceKit.Random((int)device.Size, 3)); // cut off by the export
        seekable.Position = 3;
        await ImageCopier.ExportAsync(device, seekable);
        Assert.Equal(3 + device.Size, seekable.Length);
        Assert.True(seekable.GetBuffer().AsSpan(3, (int)device.Size).SequenceEqual(pipe.GetBuffer().AsSpan(0, (int)device.Size)));
    }

    [Fact]
    public async Task Source_larger_than_the_device_is_refused()
    {
        var store = await FormatAsync(8 * MiB, new FormatOptions { LogicalSize = 1 * MiB });
        await using var device = await OpenAsync(store);
        await Assert.ThrowsAsync<ArgumentException>(() => ImageCopier.ImportAsync(new MemoryStream(new byte[2 * MiB]), device));
        await Assert.ThrowsAsync<IOException>(() => ImageCopier.ImportAsync(new ForwardOnlyStream(new MemoryStream(new byte[2 * MiB])), device));
    }

    /// <summary>Bytes the filesystem holds for a file (st_blocks x 512), as du counts them.</summary>
    private static long AllocatedBytes(string path)
    {
        using var stat = Process.Start(new ProcessStartInfo("stat", ["-c", "%b", path]) { RedirectStandardOutput = true })!;
        string output = stat.StandardOutput.ReadToEnd();
        stat.WaitForExit();
        Assert.Equal(0, stat.ExitCode);
        return long.Parse(output.Trim()) * 512;
    }

    /// <summary>A stream that cannot seek, like a pipe.</summary>
    private sealed class ForwardOnlyStream(Stream inner) : Stream
    {
        public override bool CanRead => inner.CanRead;
        public override bool CanSeek => false;
        public override bool CanWrite => inner.CanWrite;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    }
}
