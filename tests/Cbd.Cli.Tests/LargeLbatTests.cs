using System.Text.Json;

namespace Cbd.Cli.Tests;

/// <summary>
/// An image whose zones have lbats of gigabytes (a logical size far above the physical one): every image
/// format accepts must check and repair, clean or dirty. These once exited 8 with an OverflowException,
/// as check and repair allocated one array for a whole zone's lbat.
/// </summary>
public class LargeLbatTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromMinutes(5);

    private static async Task<JsonElement> CheckJsonAsync(int expectedExitCode, params string[] arguments)
    {
        var result = await CbdTool.TryRunAsync(["check", .. arguments, "--json"], timeout: s_timeout);
        Assert.True(result.ExitCode == expectedExitCode, $"expected exit code {expectedExitCode}: {result}");
        CbdTool.AssertNoStackTrace(result);
        return JsonDocument.Parse(result.StandardOutput).RootElement;
    }

    [Fact]
    public async Task Image_of_8_GiB_holding_7000_GiB_checks_and_repairs_clean_and_dirty()
    {
        using var scratch = new Scratch();
        string image = scratch.File("thin.img");
        // No write log: all 8 GiB but two lblks of data go to lbats.
        await CbdTool.RunAsync(0, "format", image, "--size", "8G", "--logical-size", "7000G", "--log-size", "0");
        var g = ImageFile.ReadGeometry(image);
        Assert.True(g.LbatPblks * 4096 > int.MaxValue, $"lbat of {g.LbatPblks} pblks");

        var clean = await CheckJsonAsync(0, image);
        Assert.Equal("clean", clean.GetProperty("result").GetString());

        ImageFile.MarkDirty(image);
        var dirty = await CheckJsonAsync(0, image);
        Assert.Equal(0, dirty.GetProperty("errors").GetInt64());

        var repair = await CheckJsonAsync(1, image, "--repair");
        Assert.True(repair.GetProperty("repair").GetProperty("wrote").GetBoolean());
        var after = await CheckJsonAsync(0, image);
        Assert.Equal("clean", after.GetProperty("result").GetString());
        Assert.Equal(0, after.GetProperty("problems").GetArrayLength());
    }
}
