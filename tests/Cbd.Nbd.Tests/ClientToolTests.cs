using System.Text.Json;
using Cbd.Core.Engine;

namespace Cbd.Nbd.Tests;

/// <summary>
/// Real NBD clients (libnbd's nbdinfo and nbdcopy, qemu-io, fio) against an in-process server on a Unix
/// socket, once per device in <see cref="DeviceFactories"/>. The tools must be installed: a missing one fails
/// its test and names the package.
/// </summary>
public sealed class ClientToolTests
{
    private const long DeviceSize = 64L << 20;

    public static TheoryData<string> Devices => DeviceFactories.Names;

    private static async Task<ServerHarness> StartAsync(string factory, bool readOnly = false, Func<IBlockDevice, Task>? prepare = null)
    {
        IBlockDevice device = await DeviceFactories.CreateAsync(factory, DeviceSize);
        if (prepare is not null)
        {
            await prepare(device);
        }
        return await ServerHarness.StartAsync(device, readOnly: readOnly, description: "cbd test export");
    }

    private static async Task<byte[]> ReadDeviceAsync(IBlockDevice device, long offset, int length)
    {
        byte[] data = new byte[length];
        await device.ReadAsync(offset, data);
        return data;
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public async Task Nbdinfo_Json_ReportsSizeBlockSizesAndFlags(string factory)
    {
        await using ServerHarness harness = await StartAsync(factory);
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--json", harness.Uri]);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput);
        JsonElement root = json.RootElement;
        Assert.Equal("newstyle-fixed", root.GetProperty("protocol").GetString());
        Assert.True(root.GetProperty("structured").GetBoolean());
        JsonElement export = Assert.Single(root.GetProperty("exports").EnumerateArray());
        Assert.Equal(DeviceSize, export.GetProperty("export-size").GetInt64());
        Assert.Equal(1, export.GetProperty("block_size_minimum").GetInt64());
        Assert.Equal(harness.Device.BlockSize, export.GetProperty("block_size_preferred").GetInt64());
        Assert.Equal(32L << 20, export.GetProperty("block_size_maximum").GetInt64());
        Assert.Equal("cbd test export", export.GetProperty("description").GetString());
        Assert.Contains("base:allocation", export.GetProperty("contexts").EnumerateArray().Select(e => e.GetString()));
        foreach (string flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df" })
        {
            Assert.True(export.GetProperty(flag).GetBoolean(), flag);
        }
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        Assert.False(export.GetProperty("is_rotational").GetBoolean());
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public async Task Nbdinfo_Json_OfAReadOnlyExport_OffersNoWrites(string factory)
    {
        await using ServerHarness harness = await StartAsync(factory, readOnly: true);
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--json", harness.Uri]);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput);
        JsonElement export = json.RootElement.GetProperty("exports")[0];
        Assert.True(export.GetProperty("is_read_only").GetBoolean());
        foreach (string flag in new[] { "can_fua", "can_trim", "can_zero", "can_fast_zero" })
        {
            Assert.False(export.GetProperty(flag).GetBoolean(), flag);
        }
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public async Task Nbdinfo_Map_ShowsDataBetweenHoles(string factory)
    {
        await using ServerHarness harness = await StartAsync(factory, prepare: device =>
            device.WriteAsync(1 << 20, RandomBytes(128 << 10, 1)).AsTask());
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--map", harness.Uri]);
        var map = result.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Select(f => (Offset: long.Parse(f[0]), Length: long.Parse(f[1]), Type: int.Parse(f[2])))
            .ToList();
        Assert.Equal(
            [(0L, 1L << 20, 3), (1L << 20, 128L << 10, 0), ((1L << 20) + (128 << 10), DeviceSize - (1 << 20) - (128 << 10), 3)],
            map);
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public async Task QemuIo_PatternsSurviveUnalignedWritesDiscardAndWriteZeroes(string factory)
    {
        await using ServerHarness harness = await StartAsync(factory);
        string[] commands =
        [
            "write -P 0xab 0 256k",
            "read -P 0xab 0 256k",
            "write -P 0xcd 1000 3000",
            "read -P 0xab 0 1000",
            "read -P 0xcd 1000 3000",
            "read -P 0xab 4000 258144",
            "write -P 0x11 70000 131073",
            "read -P 0x11 70000 131073",
            "discard 65536 65536",
            "read -P 0 65536 65536",
            "write -z 196608 40000",
            "read -P 0 196608 40000",
            "write -z -u 1048576 1048576",
            "read -P 0 1048576 1048576",
            "aio_write -P 0x77 5242880 64k",
            "aio_write -P 0x78 5308416 64k",
            "aio_flush",
            "read -P 0x77 5242880 64k",
            "read -P 0x78 5308416 64k",
            "flush",
        ];
        var arguments = new List<string> { "-f", "raw" };
        foreach (string command in commands)
        {
            arguments.Add("-c");
            arguments.Add(command);
        }
        arguments.Add(harness.Uri);
        ExternalTool.Result result = await ExternalTool.RunAsync("qemu-io", arguments);
        Assert.DoesNotContain("fail", result.StandardOutput, StringComparison.OrdinalIgnoreCase);

        byte[] head = await ReadDeviceAsync(harness.Device, 0, 256 << 10);
        var expected = new byte[256 << 10];
        expected.AsSpan().Fill(0xab);
        expected.AsSpan(1000, 3000).Fill(0xcd);
        expected.AsSpan(70000, 131073).Fill(0x11);
        expected.AsSpan(65536, 65536).Clear();
        expected.AsSpan(196608, 40000).Clear();
        Assert.Equal(expected, head);
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public async Task Nbdcopy_InAndOut_PreservesEveryByte(string factory)
    {
        await using ServerHarness harness = await StartAsync(factory);
        string source = Path.Combine(harness.Directory, "source.img");
        string copy = Path.Combine(harness.Directory, "copy.img");
        byte[] image = new byte[24 << 20];
        var random = new Random(7);
        for (int offset = 0; offset < image.Length; offset += 1 << 20)
        {
            // Alternate random data, runs of zeroes and a repeated byte, so both data and zero paths are used.
            switch ((offset >> 20) % 3)
            {
                case 0:
                    random.NextBytes(image.AsSpan(offset, 1 << 20));
                    break;
                case 1:
                    random.NextBytes(image.AsSpan(offset + 12345, 777));
                    break;
                default:
                    image.AsSpan(offset, 1 << 20).Fill(0x5c);
                    break;
            }
        }
        await File.WriteAllBytesAsync(source, image);

        await ExternalTool.RunAsync("nbdcopy", ["--flush", source, harness.Uri]);
        Assert.Equal(image, await ReadDeviceAsync(harness.Device, 0, image.Length));

        await ExternalTool.RunAsync("nbdcopy", [harness.Uri, copy]);
        byte[] copied = await File.ReadAllBytesAsync(copy);
        Assert.Equal(DeviceSize, copied.Length);
        Assert.True(image.AsSpan().SequenceEqual(copied.AsSpan(0, image.Length)), "copied data differs from the source");
        Assert.True(copied.AsSpan(image.Length).IndexOfAnyExcept((byte)0) < 0, "bytes past the source are not zero");
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public async Task Fio_RandomWritesVerifyWithCrc32c(string factory)
    {
        await using ServerHarness harness = await StartAsync(factory);
        ExternalTool.Result result = await ExternalTool.RunAsync("fio",
        [
            "--name=cbd-verify", "--ioengine=nbd", $"--uri={harness.Uri}",
            "--rw=randwrite", "--bsrange=512-64k", "--size=16m", "--iodepth=16",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
            "--output-format=normal",
        ], TimeSpan.FromSeconds(90));
        Assert.DoesNotContain("verify: bad", result.StandardOutput + result.StandardError);
        Assert.Contains("err= 0", result.StandardOutput);
    }
}
