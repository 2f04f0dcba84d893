namespace Cbd.Cli.Tests;

public class ResizeAndTuneTests
{
    [Fact]
    public async Task Resize_up_then_down_keeps_every_byte()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);

        var up = await CbdTool.RunAsync(0, "resize", image, "--size", "200M");
        Assert.Contains("32 MiB -> 200 MiB", up.StandardOutput);
        Assert.Equal(200L << 20, new FileInfo(image).Length);
        await AssertExportsAsync(scratch, image, bytes);

        // Shrinking below what the data occupies moves it into the zones that stay.
        long stored;
        using (var info = await FormatCommandTests.InfoAsync(image))
        {
            stored = info.RootElement.GetProperty("usage").GetProperty("physical_bytes_used").GetInt64();
        }
        // The 4 MiB write log stays the last pblks: 17 MiB are left for the zones.
        var down = await CbdTool.RunAsync(0, "resize", image, "--size", "21M");
        Assert.True(stored < 17L << 20, $"the data ({stored} bytes) should fit in 17 MiB");
        Assert.Equal(21L << 20, new FileInfo(image).Length);
        Assert.Contains("200 MiB -> 21 MiB", down.StandardOutput);
        await CbdTool.RunAsync(0, "check", image, "--data");
        await AssertExportsAsync(scratch, image, bytes);
    }

    [Fact]
    public async Task Resize_with_a_logical_size_grows_the_device_with_zeros()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        // A second zone brings a second lbat, and with it room for more lblks.
        var result = await CbdTool.RunAsync(0, "resize", image, "--size", "200M", "--logical-size", "40M");
        Assert.Contains("1 -> 2", result.StandardOutput);
        await AssertExportsAsync(scratch, image, [.. bytes, .. new byte[16 << 20]]);
    }

    [Theory]
    [InlineData("300M", "this image can be resized to at most 256 MiB (2^16 pblks) only")]
    [InlineData("12M", "the data does not fit")]
    [InlineData("4M", "too small for the header and one zone of 5 metadata pblks (20 KiB) besides the write log's 4 MiB")]
    public async Task Resize_refusals_are_one_line_and_change_nothing(string size, string reason)
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        byte[] before = File.ReadAllBytes(image);
        var result = await CbdTool.FailsAsync(1, reason, "resize", image, "--size", size);
        Assert.StartsWith($"cbd: {image}: cannot resize to {size[..^1]} MiB: ", result.StandardError);
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [Theory]
    [InlineData("resize", "--size", "1K", "physical size 1 KiB: smaller than the 4 KiB header")]
    [InlineData("tune", "--logical-size", "1K", "logical size 1 KiB: less than one lblk of 64 KiB")]
    public async Task Sizes_no_image_can_have_are_named_plainly(string command, string option, string size, string message)
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        var result = await CbdTool.FailsAsync(1, message, command, image, option, size);
        Assert.DoesNotContain("Parameter", result.StandardError);
    }

    [Fact]
    public async Task Tune_changes_settings_and_the_data_still_exports_identically()
    {
        using var scratch = new Scratch();
        var (raw, image, bytes) = await TestData.CopyAsync(scratch);
        var tuned = await CbdTool.RunAsync(0, "tune", image, "--compression", "zstd:5", "--zero-detect", "off");
        Assert.Contains("lz4 level 0 -> zstd level 5", tuned.StandardOutput);
        Assert.Contains("on -> off", tuned.StandardOutput);

        using (var info = await FormatCommandTests.InfoAsync(image))
        {
            var header = info.RootElement.GetProperty("header");
            Assert.Equal("zstd", header.GetProperty("algorithm").GetString());
            Assert.Equal(5, header.GetProperty("level").GetInt32());
            Assert.False(header.GetProperty("zero_detect").GetBoolean());
        }
        await AssertExportsAsync(scratch, image, bytes);

        // lblks written from now on use zstd; the lz4 ones already there still read back.
        await CbdTool.RunAsync(0, "import", raw, image);
        await CbdTool.RunAsync(0, "check", image, "--data");
        await AssertExportsAsync(scratch, image, bytes);

        var same = await CbdTool.RunAsync(0, "tune", image, "--compression", "zstd:5");
        Assert.Contains("nothing changed", same.StandardOutput);
    }

    [Fact]
    public async Task Tune_logical_size_shrinks_and_grows_within_the_lbats_and_never_cuts_off_data()
    {
        using var scratch = new Scratch();
        var (raw, bytes) = await TestData.RawAsync();
        string image = scratch.File("roomy.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", TestData.ImageSize, "--logical-size", "32M");
        await CbdTool.RunAsync(0, "import", raw, image);

        var shrunk = await CbdTool.RunAsync(0, "tune", image, "--logical-size", "28M");
        Assert.Contains("32 MiB -> 28 MiB", shrunk.StandardOutput);
        await AssertExportsAsync(scratch, image, [.. bytes, .. new byte[4 << 20]]);
        await CbdTool.RunAsync(0, "tune", image, "--logical-size", "32M");
        await AssertExportsAsync(scratch, image, [.. bytes, .. new byte[8 << 20]]);

        var result = await CbdTool.FailsAsync(1, "lblks past the new end hold data", "tune", image, "--logical-size", "16M");
        Assert.StartsWith($"cbd: {image}: cannot tune: ", result.StandardError);
        await CbdTool.FailsAsync(1, "at most 32 MiB", "tune", image, "--logical-size", "40M");
        using var info = await FormatCommandTests.InfoAsync(image);
        Assert.Equal(32L << 20, info.RootElement.GetProperty("geometry").GetProperty("logical_bytes").GetInt64());
    }

    internal static async Task AssertExportsAsync(Scratch scratch, string image, byte[] expected)
    {
        string exported = scratch.File($"export-{Guid.NewGuid():N}.img");
        await CbdTool.RunAsync(0, "export", image, exported);
        byte[] actual = File.ReadAllBytes(exported);
        Assert.Equal(expected.Length, actual.Length);
        Assert.True(expected.AsSpan().SequenceEqual(actual), "the exported bytes differ from those imported");
        File.Delete(exported);
    }
}
