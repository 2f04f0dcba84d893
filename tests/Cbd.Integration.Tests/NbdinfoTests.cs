using System.Security.Cryptography;
using System.Text.Json;

namespace Cbd.Integration.Tests;

/// <summary>What <c>nbdinfo</c> (libnbd) learns from a real <c>cbd serve</c>: size, block sizes, flags and the allocation map.</summary>
public sealed class NbdinfoTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task Json_ShowsThreeTimesTheImageSize_BlockSizes_AndEveryWriteFeature()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        await using CbdServer server = await CbdServer.CreateAsync(image, scratch.File("nbd.sock"), "64M");

        JsonElement export = await ExportInfoAsync(server.Uri);
        Assert.Equal(3 * new FileInfo(image).Length, export.GetProperty("export-size").GetInt64());
        Assert.Equal(192 * MiB, export.GetProperty("export-size").GetInt64());
        Assert.Equal(1, export.GetProperty("block_size_minimum").GetInt64());
        Assert.Equal(65536, export.GetProperty("block_size_preferred").GetInt64());
        Assert.Equal(33554432, export.GetProperty("block_size_maximum").GetInt64());
        foreach (string flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn" })
        {
            Assert.True(export.GetProperty(flag).GetBoolean(), flag);
        }
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        await server.StopAsync();
    }

    [Fact]
    public async Task Json_WithReadOnly_ShowsAReadOnlyExport_AndTheImageIsNotTouched()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        await using (CbdServer create = await CbdServer.CreateAsync(image, socket, "64M"))
        {
            await ExternalTool.QemuIoAsync(create.Uri, ["write -P 0x42 0 1M"]);
            await create.StopAsync();
        }
        byte[] before = SHA256.HashData(File.ReadAllBytes(image));

        await using CbdServer server = await CbdServer.StartAsync(image, socket, "--read-only");
        JsonElement export = await ExportInfoAsync(server.Uri);
        Assert.True(export.GetProperty("is_read_only").GetBoolean());
        Assert.Equal(192 * MiB, export.GetProperty("export-size").GetInt64());
        await ExternalTool.QemuIoAsync(server.Uri, ["read -P 0x42 0 1M", "read -P 0 1M 1M"], readOnly: true);
        await server.StopAsync();

        Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(image)));
    }

    [Fact]
    public async Task Map_FreshDeviceIsOneHole_ThenRangesWrittenByQemuIoAreData_AlsoAfterARestart()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        long size;
        (long Offset, long Length)[] written = [(4 * MiB, 1 * MiB), (100 * MiB, 3 * MiB), (192 * MiB - 512 * 1024, 512 * 1024)];
        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "64M"))
        {
            var fresh = await NbdMap.ReadAsync(server.Uri);
            size = Assert.Single(fresh).Length;
            Assert.Equal([(0L, 192 * MiB, NbdMap.Hole)], fresh);

            await ExternalTool.QemuIoAsync(server.Uri, written.Select(r => $"write -P 0x5a {r.Offset} {r.Length}"));
            Assert.Equal(ExpectedMap(written, size), await NbdMap.ReadAsync(server.Uri));
            await server.StopAsync();
        }

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            Assert.Equal(ExpectedMap(written, size), await NbdMap.ReadAsync(server.Uri));
            await server.StopAsync();
        }
    }

    private static List<(long Offset, long Length, int Type)> ExpectedMap((long Offset, long Length)[] data, long size)
    {
        var map = new List<(long Offset, long Length, int Type)>();
        long at = 0;
        foreach ((long offset, long length) in data.OrderBy(r => r.Offset))
        {
            if (offset > at)
            {
                map.Add((at, offset - at, NbdMap.Hole));
            }
            map.Add((offset, length, NbdMap.Data));
            at = offset + length;
        }
        if (at < size)
        {
            map.Add((at, size - at, NbdMap.Hole));
        }
        return map;
    }

    private static async Task<JsonElement> ExportInfoAsync(string uri)
    {
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--json", uri]);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput);
        return Assert.Single(json.RootElement.GetProperty("exports").EnumerateArray()).Clone();
    }
}
