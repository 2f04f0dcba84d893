using Cbd.TestTools;

namespace Cbd.Cli.Tests;

/// <summary>Output follows the conventions of the tools an administrator already uses.</summary>
public class OutputConventionTests
{
    [Fact]
    public async Task Quiet_silences_the_summaries_of_commands_that_change_things()
    {
        using var scratch = new Scratch();
        var (raw, _) = await TestData.RawAsync();
        string image = scratch.File("q.cbd");
        string[][] runs =
        [
            ["format", image, "--size", "32M", "--logical-size", "24M", "-q"],
            ["import", raw, image, "-q"],
            ["tune", image, "--compression", "zstd", "-q"],
            ["resize", image, "--size", "40M", "-q"],
            ["export", image, scratch.File("q.raw"), "-q"],
            ["import", raw, scratch.File("created.cbd"), "-q"],
        ];
        foreach (string[] run in runs)
        {
            var result = await CbdTool.RunAsync(0, run);
            Assert.True(result.StandardOutput.Length == 0, result.ToString());
            Assert.True(result.StandardError.Length == 0, result.ToString());
        }
    }

    [Fact]
    public async Task Redirected_output_has_no_box_characters_and_one_line_per_row()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        var info = await CbdTool.RunAsync(0, "info", image);
        Assert.All(info.StandardOutput, c => Assert.True(c < 128, $"non-ASCII '{c}' in: {info.StandardOutput}"));
        Assert.Matches(@"(?m)^zone +first pblk +data pblks +pblks used +fill$", info.StandardOutput);
        Assert.Matches(@"(?m)^ +0 +1 +\d+ +\d+ +[\d.]+ %$", info.StandardOutput);
    }

    [Fact]
    public async Task A_terminal_without_a_utf8_locale_gets_plain_ascii_tables()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        // script(1) gives cbd a terminal; LANG=C says it shows ASCII only.
        string command = $"env -u LC_ALL -u LC_CTYPE LANG=C TERM=xterm COLUMNS=120 '{CbdTool.Executable}' info '{image}' -q";
        var result = await ExternalTool.RunAsync("script", ["-qec", command, "/dev/null"]);
        Assert.Contains("zone", result.StandardOutput);
        Assert.Contains("+--", result.StandardOutput);
        Assert.All(result.StandardOutput, c => Assert.True(c < 128, $"non-ASCII '{c}' in: {result.StandardOutput}"));
    }
}
