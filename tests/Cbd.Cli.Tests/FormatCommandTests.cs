using System.Security.Cryptography;
using System.Text.Json;

namespace Cbd.Cli.Tests;

public class FormatCommandTests
{
    [Fact]
    public async Task Creates_a_sparse_file_of_the_size_and_prints_the_geometry()
    {
        using var scratch = new Scratch();
        string image = scratch.File("new.cbd");
        var result = await CbdTool.RunAsync(0, "format", image, "--size", "1G");

        Assert.Equal(1L << 30, new FileInfo(image).Length);
        Assert.True(await ImageFile.AllocatedBytesAsync(image) < 8L << 20, "a new image should be sparse: header and metadata only");
        // docs/FORMAT.md's worked example: 1 GiB with defaults, a 128 MiB log set aside first.
        string output = result.StandardOutput;
        Assert.Contains("7 zones of 7022 lblks", output);
        Assert.Contains("126 lbat pblks", output);
        Assert.Contains("lblk_alloc_16_32", output);
        Assert.Contains("70-byte entries", output);
        Assert.Contains("890 pblks, 0.34 %", output);
        Assert.Contains("3 GiB", output);

        var g = ImageFile.ReadGeometry(image);
        Assert.Equal(7u, g.NrZones);
        Assert.Equal(32768UL, g.LogPblks);
        Assert.Equal(3L << 30, g.LogicalBytes);
    }

    [Theory]
    [InlineData("64M", null, null, 64L << 20, 3 * (64L << 20), 65536, "lblk_alloc_16_16")]
    [InlineData("100M", "1G", null, 100L << 20, 1L << 30, 65536, "lblk_alloc_16_16")]
    [InlineData("300M", null, "16K", 300L << 20, 900L << 20, 16384, "lblk_alloc_16_32")]
    [InlineData("64M", "100000000", "128K", 64L << 20, 100000000 / 131072 * 131072L, 131072, "lblk_alloc_32_16")]
    public async Task Sizes_reach_the_header(string size, string? logical, string? lblk, long physicalBytes, long logicalBytes, int lblkSize, string encoding)
    {
        using var scratch = new Scratch();
        string image = scratch.File("sized.cbd");
        var arguments = new List<string> { "format", image, "--size", size };
        if (logical is not null)
        {
            arguments.AddRange(["--logical-size", logical]);
        }
        if (lblk is not null)
        {
            arguments.AddRange(["--lblk-size", lblk]);
        }
        await CbdTool.RunAsync(0, [.. arguments]);

        using var info = await InfoAsync(image);
        var geometry = info.RootElement.GetProperty("geometry");
        Assert.Equal(physicalBytes, geometry.GetProperty("physical_bytes").GetInt64());
        Assert.Equal(logicalBytes, geometry.GetProperty("logical_bytes").GetInt64());
        Assert.Equal(lblkSize, geometry.GetProperty("lblk_size").GetInt32());
        Assert.Equal(encoding, geometry.GetProperty("lblk_alloc").GetString());
    }

    [Fact]
    public async Task Options_reach_the_header()
    {
        using var scratch = new Scratch();
        string image = scratch.File("options.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M", "--compression", "deflate:9", "--no-zero-detect", "--no-checksums");
        using var info = await InfoAsync(image);
        var header = info.RootElement.GetProperty("header");
        Assert.Equal("zlib", header.GetProperty("algorithm").GetString());
        Assert.Equal(9, header.GetProperty("level").GetInt32());
        Assert.False(header.GetProperty("zero_detect").GetBoolean());
        Assert.False(header.GetProperty("lblk_crc").GetBoolean());
        Assert.Equal(0, header.GetProperty("flags").GetInt32());
        Assert.Equal(34, info.RootElement.GetProperty("geometry").GetProperty("lblk_alloc_entry_size").GetInt32());

        string zstd = scratch.File("zstd.cbd");
        await CbdTool.RunAsync(0, "format", zstd, "--size", "64M", "--compression", "zstd");
        using var zstdInfo = await InfoAsync(zstd);
        Assert.Equal("zstd", zstdInfo.RootElement.GetProperty("header").GetProperty("algorithm").GetString());
        Assert.Equal(3, zstdInfo.RootElement.GetProperty("header").GetProperty("level").GetInt32());
    }

    [Fact]
    public async Task Refuses_to_overwrite_a_cbd_image_without_force()
    {
        using var scratch = new Scratch();
        string image = scratch.File("existing.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        byte[] before = SHA256.HashData(File.ReadAllBytes(image));

        await CbdTool.FailsAsync(1, "holds a cbd image (physical 64 MiB, logical 192 MiB)", "format", image);
        await CbdTool.FailsAsync(1, "--force", "format", image, "--size", "32M");
        Assert.Equal(before, SHA256.HashData(File.ReadAllBytes(image)));

        await CbdTool.RunAsync(0, "format", image, "--size", "32M", "--force");
        Assert.Equal(32L << 20, new FileInfo(image).Length);
    }

    [Theory]
    [InlineData(0x438, new byte[] { 0x53, 0xEF }, "ext2/ext3/ext4")]
    [InlineData(0x200, new byte[] { 0x45, 0x46, 0x49, 0x20, 0x50, 0x41, 0x52, 0x54 }, "GPT partition table")]
    [InlineData(0x10040, new byte[] { 0x5F, 0x42, 0x48, 0x52, 0x66, 0x53, 0x5F, 0x4D }, "btrfs")]
    [InlineData(65535, new byte[] { 1 }, "non-zero byte at offset 65535")]
    public async Task Refuses_to_overwrite_data_without_force(int offset, byte[] bytes, string named)
    {
        using var scratch = new Scratch();
        string path = scratch.File("disk.img");
        using (var file = File.Create(path))
        {
            file.SetLength(16L << 20);
            file.Position = offset;
            file.Write(bytes);
        }
        await CbdTool.FailsAsync(1, named, "format", path);
        Assert.Equal(bytes, ImageFile.Read(path, offset, bytes.Length));
        await CbdTool.RunAsync(0, "format", path, "--force");
        Assert.Equal(16L << 20, ImageFile.ReadGeometry(path).LogicalBytes / 3);
    }

    [Fact]
    public async Task Formats_an_existing_all_zero_file_at_its_size()
    {
        using var scratch = new Scratch();
        string path = scratch.File("zeros.img");
        using (var file = File.Create(path))
        {
            file.SetLength(48L << 20);
        }
        await CbdTool.RunAsync(0, "format", path);
        Assert.Equal(48L << 20, (long)ImageFile.ReadGeometry(path).NrPblks * 4096);
        await CbdTool.RunAsync(0, "check", path, "--data");
    }

    [Fact]
    public async Task Sizes_that_cannot_be_formatted_are_refused_and_leave_no_file()
    {
        using var scratch = new Scratch();
        string image = scratch.File("tiny.cbd");
        await CbdTool.FailsAsync(1, "--size 16 KiB: too small; with 64 KiB lblks an image needs at least 140 KiB", "format", image, "--size", "16K");
        Assert.False(File.Exists(image));
        // 1 MiB lblks need entries larger than a sector on any device.
        await CbdTool.FailsAsync(1, "--lblk-size 1 MiB: at most 512 KiB on an image of 64 MiB", "format", image, "--size", "64M", "--lblk-size", "1M");
        Assert.False(File.Exists(image));
        await CbdTool.FailsAsync(1, "give --size", "format", image);
    }

    internal static async Task<JsonDocument> InfoAsync(string image)
    {
        var result = await CbdTool.RunAsync(0, "info", image, "--json");
        return JsonDocument.Parse(result.StandardOutput);
    }
}
