namespace Cbd.Cli.Tests;

/// <summary>Help, version, usage errors and the one-line reports of files that are missing or are no cbd image.</summary>
public class CommandLineTests
{
    public static TheoryData<string> Commands => ["format", "info", "check", "resize", "trim", "tune", "import", "export", "serve"];

    [Fact]
    public async Task No_arguments_prints_help_listing_every_command()
    {
        var result = await CbdTool.RunAsync(0);
        Assert.Contains("Usage:", result.StandardOutput);
        foreach (string command in Commands)
        {
            Assert.Contains(command, result.StandardOutput);
        }
    }

    [Fact]
    public async Task Version_prints_a_version()
    {
        var result = await CbdTool.RunAsync(0, "--version");
        Assert.Matches(@"^\d+\.\d+", result.StandardOutput);
    }

    [Theory]
    [MemberData(nameof(Commands))]
    public async Task Every_command_has_help(string command)
    {
        var result = await CbdTool.RunAsync(0, command, "--help");
        Assert.Contains($"cbd {command}", result.StandardOutput);
        Assert.Contains("Exit codes", result.StandardOutput);
    }

    [Theory]
    [InlineData("format", "x.cbd", "--bogus")]
    [InlineData("format", "x.cbd", "--size", "12Q")]
    [InlineData("format", "x.cbd", "--size", "0")]
    [InlineData("format", "x.cbd", "--size", "64M", "--lblk-size", "12K")]
    [InlineData("format", "x.cbd", "--size", "64M", "--compression", "zstd:30")]
    [InlineData("resize", "x.cbd")]
    [InlineData("tune", "x.cbd")]
    [InlineData("tune", "x.cbd", "--zero-detect", "maybe")]
    [InlineData("import", "raw.img")]
    [InlineData("nonsense")]
    public async Task A_command_line_not_understood_exits_2_with_a_pointer_to_help(params string[] arguments)
    {
        var result = await CbdTool.RunAsync(2, arguments);
        Assert.StartsWith("cbd: ", result.StandardError);
        Assert.Contains("--help", result.StandardError);
        Assert.Empty(result.StandardOutput);
    }

    [Fact]
    public async Task Check_reports_a_command_line_not_understood_as_fsck_does()
    {
        await CbdTool.RunAsync(16, "check", "x.cbd", "--no-such-option");
    }

    [Theory]
    [InlineData("info", "{image}")]
    [InlineData("resize", "{image}", "--size", "64M")]
    [InlineData("trim", "{image}")]
    [InlineData("tune", "{image}", "--zero-detect", "off")]
    [InlineData("export", "{image}", "{scratch}/out.img")]
    public async Task A_missing_image_is_one_line_exit_1(params string[] template)
    {
        using var scratch = new Scratch();
        string missing = scratch.File("missing.cbd");
        string raw = (await TestData.RawAsync()).Raw;
        string[] arguments = [.. template.Select(a => a.Replace("{image}", missing).Replace("{raw}", raw).Replace("{scratch}", scratch.Path))];
        await CbdTool.FailsAsync(1, $"{missing}: no such file", arguments);
    }

    [Fact]
    public async Task Check_of_a_missing_image_is_an_operational_error()
    {
        using var scratch = new Scratch();
        await CbdTool.FailsAsync(8, "no such file", "check", scratch.File("missing.cbd"));
    }

    [Fact]
    public async Task A_file_that_is_no_cbd_image_is_named_as_such()
    {
        using var scratch = new Scratch();
        string path = scratch.File("random.bin");
        byte[] bytes = new byte[1 << 20];
        new Random(7).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);

        await CbdTool.FailsAsync(1, "not a cbd image", "info", path);
        await CbdTool.FailsAsync(1, "not a cbd image", "export", path, scratch.File("out.img"));
        await CbdTool.FailsAsync(1, "not a cbd image", "resize", path, "--size", "2M");
        var check = await CbdTool.RunAsync(8, "check", path, "--json");
        using var json = System.Text.Json.JsonDocument.Parse(check.StandardOutput);
        Assert.Equal("not_a_cbd_image", json.RootElement.GetProperty("result").GetString());
        Assert.Equal("not_cbd_image", json.RootElement.GetProperty("problems")[0].GetProperty("kind").GetString());
        Assert.Equal(bytes, File.ReadAllBytes(path));
    }
}
