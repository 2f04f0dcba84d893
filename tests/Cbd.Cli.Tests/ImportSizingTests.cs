using System.Text.Json;
using Cbd.TestTools;

namespace Cbd.Cli.Tests;

/// <summary>Import makes the image it needs, sized to the raw image, and an interrupted import says what it left.</summary>
public class ImportSizingTests
{
    [Fact]
    public async Task Import_into_a_new_image_sizes_it_to_raw_and_export_gives_back_the_same_bytes_and_size()
    {
        using var scratch = new Scratch();
        var (raw, bytes) = await TestData.RawAsync();
        string image = scratch.File("new.cbd");
        var import = await CbdTool.RunAsync(0, "import", raw, image);
        Assert.Contains($"created {image}: logical size 24 MiB", import.StandardOutput);

        using (var info = await FormatCommandTests.InfoAsync(image))
        {
            var geometry = info.RootElement.GetProperty("geometry");
            Assert.Equal(TestData.RawLength, geometry.GetProperty("logical_bytes").GetInt64());
            Assert.Equal(TestData.LblkSize, geometry.GetProperty("lblk_size").GetInt32());
            // Room for every lblk stored uncompressed: nothing the raw image holds can fill it up.
            Assert.True(geometry.GetProperty("data_pblks").GetInt64() * 4096 >= TestData.RawLength);
        }
        string exported = scratch.File("back.raw");
        await CbdTool.RunAsync(0, "export", image, exported);
        Assert.Equal(bytes.Length, new FileInfo(exported).Length);
        Assert.Equal(bytes, File.ReadAllBytes(exported));
    }

    [Fact]
    public async Task A_raw_size_that_is_no_whole_number_of_64K_gets_smaller_lblks_and_one_of_no_whole_4K_is_refused()
    {
        using var scratch = new Scratch();
        string raw = scratch.File("20k.raw");
        byte[] bytes = new byte[20 << 10];
        new Random(3).NextBytes(bytes);
        File.WriteAllBytes(raw, bytes);
        string image = scratch.File("20k.cbd");
        var import = await CbdTool.RunAsync(0, "import", raw, image);
        Assert.Contains("4 KiB lblks", import.StandardOutput);
        string exported = scratch.File("20k.back");
        await CbdTool.RunAsync(0, "export", image, exported);
        Assert.Equal(bytes, File.ReadAllBytes(exported));

        string odd = scratch.File("odd.raw");
        File.WriteAllBytes(odd, new byte[5000]);
        await CbdTool.FailsAsync(1, $"{odd}: 5000 bytes, not a whole number of 4 KiB", "import", odd, scratch.File("odd.cbd"));
        Assert.False(File.Exists(scratch.File("odd.cbd")));
    }

    [Fact]
    public async Task Import_from_stdin_into_a_missing_image_asks_for_a_format_first()
    {
        using var scratch = new Scratch();
        string empty = scratch.File("empty");
        File.WriteAllBytes(empty, []);
        var result = await CbdTool.TryRunAsync(["import", "-", scratch.File("none.cbd")], standardInputFile: empty);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("importing from stdin needs an existing image", result.StandardError);
    }

    [Fact]
    public async Task Ctrl_c_during_import_says_what_the_image_holds_and_leaves_it_closed_clean()
    {
        using var scratch = new Scratch();
        string image = scratch.File("target.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M", "--logical-size", "32M");

        await using var import = ToolProcess.Start(CbdTool.Executable, ["import", "-", image], redirectInput: true);
        byte[] chunk = new byte[4 << 20];
        new Random(9).NextBytes(chunk);
        // The pipe holds 64 KiB: once this write returns, cbd has read nearly all of it, and waits for more.
        await import.StandardInput.BaseStream.WriteAsync(chunk);
        await import.StandardInput.BaseStream.FlushAsync();
        import.Signal(Signals.Interrupt);
        Assert.True(await import.WaitForExitAsync(TimeSpan.FromSeconds(30)), import.ToString());

        Assert.True(import.ExitCode == 1, import.ToString());
        Assert.Contains($"import into {image} interrupted", import.StandardError);
        Assert.Contains("consistent and closed clean", import.StandardError);
        Assert.DoesNotContain("   at ", import.StandardError);
        using var info = await FormatCommandTests.InfoAsync(image);
        Assert.False(info.RootElement.GetProperty("header").GetProperty("dirty").GetBoolean());
        await CbdTool.RunAsync(0, "check", image, "--data");
    }
}
