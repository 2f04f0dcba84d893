namespace Cbd.Cli.Tests;

/// <summary>A size refused says which option, the limit in human units and what to change; sizes are taken as qemu-img takes them.</summary>
public class SizeMessageTests
{
    [Theory]
    [InlineData(new[] { "--size", "64KiB" }, "--size 64 KiB: too small; with 64 KiB lblks an image needs at least 140 KiB")]
    [InlineData(new[] { "--size", "4K" }, "--size 4 KiB: too small; with 64 KiB lblks an image needs at least 140 KiB")]
    [InlineData(new[] { "--size", "4K", "--lblk-size", "4K" }, "--size 4 KiB: too small; with 4 KiB lblks an image needs at least")]
    [InlineData(new[] { "--size", "1G", "--logical-size", "1T" }, "--logical-size 1 TiB: at most 783.9 GiB")]
    [InlineData(new[] { "--size", "1G", "--max-logical-size", "1T" }, "--max-logical-size 1 TiB: at most 783.9 GiB")]
    [InlineData(new[] { "--size", "100K", "--logical-size", "1M" }, "--size 100 KiB: too small; an image of 64 KiB lblks and a logical size of 1 MiB needs at least")]
    [InlineData(new[] { "--size", "64M", "--lblk-size", "1M" }, "--lblk-size 1 MiB: at most 512 KiB on an image of 64 MiB")]
    [InlineData(new[] { "--size", "1G", "--logical-size", "16K" }, "--logical-size 16 KiB: less than one lblk of 64 KiB")]
    public async Task Format_refusals_name_the_option_at_fault_and_the_limit(string[] options, string message)
    {
        using var scratch = new Scratch();
        string image = scratch.File("x.cbd");
        var result = await CbdTool.FailsAsync(1, message, ["format", image, .. options]);
        Assert.Contains($"cbd: {image}: ", result.StandardError);
        Assert.False(File.Exists(image));
    }

    [Fact]
    public async Task Fractional_sizes_are_taken_as_qemu_img_takes_them()
    {
        using var scratch = new Scratch();
        string image = scratch.File("frac.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "1.5G", "--logical-size", "2.5G");
        Assert.Equal(3L << 29, new FileInfo(image).Length);
        using var info = await FormatCommandTests.InfoAsync(image);
        Assert.Equal(5L << 29, info.RootElement.GetProperty("geometry").GetProperty("logical_bytes").GetInt64());
    }

    [Fact]
    public async Task Max_logical_size_sets_the_ceiling_tune_can_grow_to()
    {
        using var scratch = new Scratch();
        string image = scratch.File("roomy.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "1G", "--logical-size", "1G", "--max-logical-size", "5G");
        await CbdTool.RunAsync(0, "tune", image, "--logical-size", "5G");
        var refused = await CbdTool.FailsAsync(1, "at most 5 GiB", "tune", image, "--logical-size", "6G");
        Assert.Contains("--max-logical-size", refused.StandardError);
        await CbdTool.RunAsync(0, "check", image);

        // Without it the logical size is the ceiling, and the refusal says how to get more.
        string plain = scratch.File("plain.cbd");
        await CbdTool.RunAsync(0, "format", plain, "--size", "1G");
        var capped = await CbdTool.FailsAsync(1, $"{plain}: cannot tune: logical size 5 GiB: at most 3 GiB", "tune", plain, "--logical-size", "5G");
        Assert.Contains("--max-logical-size", capped.StandardError);
        Assert.Contains("--max-logical-size", (await CbdTool.RunAsync(0, "format", "--help")).StandardOutput);
    }

    [Fact]
    public async Task Resize_takes_relative_sizes_and_a_refusal_names_the_file_and_the_range_in_human_units()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        var grown = await CbdTool.RunAsync(0, "resize", image, "--size", "+8M");
        Assert.Contains("32 MiB -> 40 MiB", grown.StandardOutput);
        await CbdTool.RunAsync(0, "resize", image, "--size", "-4M");
        Assert.Equal(36L << 20, new FileInfo(image).Length);
        await CbdTool.FailsAsync(1, $"{image}: --size -1G: the size is 36 MiB, so nothing would be left", "resize", image, "--size", "-1G");
        await ResizeAndTuneTests.AssertExportsAsync(scratch, image, bytes);

        string big = scratch.File("big.cbd");
        await CbdTool.RunAsync(0, "format", big, "--size", "1G");
        await CbdTool.FailsAsync(1, $"{big}: cannot resize to 200 MiB: physical size 200 MiB: this image can be resized to between 256 MiB + 4 KiB and 16 TiB",
            "resize", big, "--size", "200M");
    }

    [Fact]
    public async Task A_bad_on_off_value_is_one_plain_line_and_an_unknown_option_is_named()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        var tune = await CbdTool.RunAsync(2, "tune", image, "--zero-detect", "yes");
        Assert.Contains("cbd: --zero-detect: 'yes' is neither on nor off", tune.StandardError);
        Assert.DoesNotContain("\t", tune.StandardError);

        var info = await CbdTool.RunAsync(2, "info", "--bogus", image);
        Assert.StartsWith("cbd: unknown option '--bogus'\n", info.StandardError);
        Assert.DoesNotContain(image, info.StandardError);
        var after = await CbdTool.RunAsync(2, "info", image, "--bogus");
        Assert.StartsWith("cbd: unknown option '--bogus'\n", after.StandardError);
        var extra = await CbdTool.RunAsync(16, "check", image, "more.cbd");
        Assert.StartsWith("cbd: unexpected argument 'more.cbd'\n", extra.StandardError);
    }
}
