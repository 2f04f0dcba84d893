using System.Text.Json;
using Xunit.Abstractions;

namespace Cbd.Integration.Tests;

/// <summary>
/// Real clients against what <c>cbd serve</c> promises about space (docs/NBD.md, "Space"): on an overcommitted
/// device data is reported as a hole that is not zero, and must still be read and copied as data, while true zero
/// areas are still skipped; NO_HOLE zeroing is served only by a device that can keep the promise.
/// </summary>
public sealed class SpacePromiseTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;

    /// <summary>base:allocation type 1: NBD_STATE_HOLE without NBD_STATE_ZERO.</summary>
    private const int HoleNotZero = 1;

    // A 16 MiB image serves 48 MiB. 24 MiB of compressible data fits in it, but not stored uncompressed.
    private const long LogicalSize = 48 * MiB;
    private static readonly (long Offset, long Length)[] s_data = [(0, 8 * MiB), (12 * MiB, 16 * MiB)];

    [Fact]
    public async Task OvercommittedDevice_ReportsDataAsHoleNotZero_AndNbdcopyAndQemuImgCopyItByteExact_SkippingTheZeroes()
    {
        using var scratch = new ScratchDirectory();
        string raw = scratch.File("source.img");
        WriteSource(raw);
        string rawHash = HostFiles.HashPrefix(raw, LogicalSize);

        await using CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "16M");
        await ExternalTool.RunAsync("nbdcopy", [raw, server.Uri]);

        Assert.Equal(
            [(0L, 8 * MiB, HoleNotZero), (8 * MiB, 4 * MiB, NbdMap.Hole), (12 * MiB, 16 * MiB, HoleNotZero), (28 * MiB, 20 * MiB, NbdMap.Hole)],
            await NbdMap.ReadAsync(server.Uri));

        // nbdcopy looks only at NBD_STATE_ZERO: the data is read, the zero areas are left out of the copy.
        string copy = scratch.File("nbdcopy.img");
        await ExternalTool.RunAsync("nbdcopy", [server.Uri, copy]);
        Assert.Equal(rawHash, HostFiles.HashPrefix(copy, LogicalSize));
        await AssertSparseAsync(copy);

        string onZeroes = scratch.File("nbdcopy-destination-is-zero.img");
        await using (var file = new FileStream(onZeroes, FileMode.CreateNew))
        {
            file.SetLength(LogicalSize);
        }
        await ExternalTool.RunAsync("nbdcopy", ["--destination-is-zero", server.Uri, onZeroes]);
        Assert.Equal(rawHash, HostFiles.HashPrefix(onZeroes, LogicalSize));
        await AssertSparseAsync(onZeroes);

        string allocated = scratch.File("nbdcopy-allocated.img");
        await ExternalTool.RunAsync("nbdcopy", ["--allocated", server.Uri, allocated]);
        Assert.Equal(rawHash, HostFiles.HashPrefix(allocated, LogicalSize));

        // qemu reads an unallocated extent without NBD_STATE_ZERO as data too.
        string converted = scratch.File("qemu-img.img");
        await ExternalTool.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.Uri, converted]);
        Assert.Equal(rawHash, HostFiles.HashPrefix(converted, LogicalSize));
        await AssertSparseAsync(converted);

        // Also through a qcow2 overlay whose backing file is the export: what the overlay does not hold is read from it.
        string overlay = scratch.File("overlay.qcow2");
        await ExternalTool.RunAsync("qemu-img", ["create", "-f", "qcow2", "-b", server.Uri, "-F", "raw", overlay]);
        string flattened = scratch.File("flattened.img");
        await ExternalTool.RunAsync("qemu-img", ["convert", "-O", "raw", overlay, flattened]);
        Assert.Equal(rawHash, HostFiles.HashPrefix(flattened, LogicalSize));

        ExternalTool.Result map = await ExternalTool.RunAsync("qemu-img", ["map", "--output=json", "-f", "raw", server.Uri]);
        output.WriteLine(map.StandardOutput);
        using JsonDocument json = JsonDocument.Parse(map.StandardOutput);
        foreach (JsonElement extent in json.RootElement.EnumerateArray())
        {
            long start = extent.GetProperty("start").GetInt64();
            long end = start + extent.GetProperty("length").GetInt64();
            bool overlapsData = s_data.Any(d => start < d.Offset + d.Length && d.Offset < end);
            // Data is never said to read as zeroes; the zero areas are.
            Assert.Equal(!overlapsData, extent.GetProperty("zero").GetBoolean());
        }
        await server.StopAsync();
    }

    [Fact]
    public async Task NoHole_OnAThinDevice_IsRefused_QemuWritesTheZeroesItself_AndNbdcopyAllocatedNeedsAFullyBackedDevice()
    {
        using var scratch = new ScratchDirectory();
        string raw = scratch.File("source.img");
        WriteSource(raw, length: 12 * MiB);

        await using (CbdServer thin = await CbdServer.CreateAsync(scratch.File("thin.cbd"), scratch.File("thin.sock"), "16M"))
        {
            Assert.False((await ExportInfoAsync(thin.Uri)).GetProperty("can_fast_zero").GetBoolean());
            // "write -z" without -u is NBD_CMD_WRITE_ZEROES with NO_HOLE: refused, so qemu writes the zeroes itself.
            await ExternalTool.QemuIoAsync(thin.Uri, ["write -P 0x55 0 1M", "write -z 0 256k", "read -P 0 0 256k", "read -P 0x55 256k 768k"]);
            // nbdcopy --allocated asks for NO_HOLE zeroing of the source's zero areas, which a thin device cannot promise.
            ExternalTool.Result refused = await ExternalTool.TryRunAsync("nbdcopy", ["--allocated", raw, thin.Uri]);
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Contains("Operation not supported", refused.StandardError);
            // Without --allocated it zeroes without NO_HOLE.
            await ExternalTool.RunAsync("nbdcopy", [raw, thin.Uri]);
            await thin.StopAsync();
        }

        // A logical size the data pblks store uncompressed, with an lblk to spare: every lblk is backed.
        string image = scratch.File("backed.cbd");
        await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "16M", "--logical-size", "12M"]);
        await using CbdServer backed = await CbdServer.StartAsync(image, scratch.File("backed.sock"));
        Assert.True((await ExportInfoAsync(backed.Uri)).GetProperty("can_fast_zero").GetBoolean());
        await ExternalTool.RunAsync("nbdcopy", ["--allocated", raw, backed.Uri]);
        string copy = scratch.File("copy.img");
        await ExternalTool.RunAsync("nbdcopy", [backed.Uri, copy]);
        Assert.Equal(HostFiles.HashPrefix(raw, 12 * MiB), HostFiles.HashPrefix(copy, 12 * MiB));
        // Every lblk is backed, so the data is reported allocated.
        Assert.Contains(await NbdMap.ReadAsync(backed.Uri), e => e.Type == NbdMap.Data);
        await backed.StopAsync();
    }

    /// <summary>Compressible data (words of a small vocabulary, about 2-3:1 for LZ4) where <see cref="s_data"/> says, zeroes elsewhere.</summary>
    private static void WriteSource(string path, long length = LogicalSize)
    {
        var random = new Random(11);
        byte[][] words = [.. Enumerable.Range(0, 64).Select(_ => RandomBytes(random, 3 + random.Next(8)))];
        using var file = new FileStream(path, FileMode.CreateNew);
        file.SetLength(length);
        byte[] chunk = new byte[MiB];
        foreach ((long offset, long size) in s_data)
        {
            file.Position = offset;
            for (long at = offset; at < Math.Min(offset + size, length); at += MiB)
            {
                for (int i = 0; i < chunk.Length;)
                {
                    byte[] word = words[random.Next(words.Length)];
                    int n = Math.Min(word.Length, chunk.Length - i);
                    word.AsSpan(0, n).CopyTo(chunk.AsSpan(i));
                    i += n;
                }
                file.Write(chunk);
            }
        }
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        byte[] bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>The copy allocates about the data, not the zero areas.</summary>
    private async Task AssertSparseAsync(string path)
    {
        long allocated = await HostFiles.AllocatedBytesAsync(path);
        long data = s_data.Sum(d => d.Length);
        output.WriteLine($"{Path.GetFileName(path)}: {allocated / (double)MiB:0.0} MiB allocated for {data / MiB} MiB of data");
        Assert.True(allocated < data + 4 * MiB, $"{path} allocates {allocated} bytes for {data} bytes of data");
    }

    private static async Task<JsonElement> ExportInfoAsync(string uri)
    {
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--json", uri]);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput);
        return Assert.Single(json.RootElement.GetProperty("exports").EnumerateArray()).Clone();
    }
}
