using Cbd.TestTools;

namespace Cbd.Cli.Tests;

/// <summary>Export never destroys what it did not make, and never leaves a file that looks complete but is not.</summary>
public class ExportSafetyTests
{
    [Fact]
    public async Task Export_refuses_an_existing_cbd_image_or_text_file_and_names_it_unless_forced()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        string victim = scratch.File("victim.cbd");
        await CbdTool.RunAsync(0, "format", victim, "--size", "16M");
        byte[] victimBefore = File.ReadAllBytes(victim);
        string text = scratch.File("notes.txt");
        File.WriteAllText(text, "keep me\n");

        await CbdTool.FailsAsync(1, $"{victim} holds a cbd image (physical 16 MiB, logical 48 MiB); exporting would replace it", "export", image, victim);
        await CbdTool.FailsAsync(1, $"{text} holds data (a non-zero byte at offset 0", "export", image, text);
        Assert.Equal(victimBefore, File.ReadAllBytes(victim));
        Assert.Equal("keep me\n", File.ReadAllText(text));
        await CbdTool.RunAsync(0, "info", victim);

        // An empty file holds nothing to lose; --force replaces one that does.
        string empty = scratch.File("empty.raw");
        File.WriteAllBytes(empty, []);
        await CbdTool.RunAsync(0, "export", image, empty);
        await CbdTool.RunAsync(0, "export", image, text, "--force");
        Assert.Equal(bytes, File.ReadAllBytes(text));
        Assert.Equal(bytes, File.ReadAllBytes(empty));
    }

    [Fact]
    public async Task Export_onto_a_hard_link_of_the_image_is_refused_as_the_image_itself()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        string link = scratch.File("link.cbd");
        await ExternalTool.RunAsync("ln", [image, link]);
        byte[] before = File.ReadAllBytes(image);
        await CbdTool.FailsAsync(1, $"{link}: is the image itself", "export", image, link, "--force");
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [Fact]
    public async Task Export_into_a_missing_directory_says_so_and_claims_nothing_was_removed()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        string target = Path.Combine(scratch.Path, "missing", "x.raw");
        var result = await CbdTool.FailsAsync(1, $"{target}: cannot create: no such directory {Path.Combine(scratch.Path, "missing")}", "export", image, target);
        Assert.DoesNotContain("removed", result.StandardError);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Ctrl_c_during_export_leaves_the_target_as_it_was(bool existing)
    {
        using var scratch = new Scratch();
        string image = await IncompressibleImageAsync(scratch, 96);
        string target = scratch.File("out.raw");
        byte[] old = [.. "an older export\n"u8];
        // An export that finishes before it is caught halfway (a loaded machine can be slow to poll) proves nothing: try again.
        for (int attempt = 1; ; attempt++)
        {
            File.Delete(target);
            if (existing)
            {
                File.WriteAllBytes(target, old);
            }
            await using var export = ToolProcess.Start(CbdTool.Executable, ["export", image, target, "--force"]);
            // Stopped while its temporary file is there, the export is interrupted halfway whatever the machine's speed.
            await PollAsync(() => export.HasExited || Directory.EnumerateFiles(scratch.Path, ".out.raw.cbd-export-*").Any());
            if (!TrySignal(export, Signals.Stop))
            {
                Assert.True(attempt < 5, $"the export finished before it could be interrupted, {attempt} times: {export}");
                continue;
            }
            export.Signal(Signals.Interrupt);
            export.Signal(Signals.Continue);
            Assert.True(await export.WaitForExitAsync(TimeSpan.FromSeconds(30)), export.ToString());
            if (export.ExitCode == 0 && attempt < 5)
            {
                continue;
            }

            Assert.True(export.ExitCode == 1, export.ToString());
            Assert.Contains($"exporting {image} to {target} interrupted; {target} {(existing ? "is left as it was" : "was not created")}", export.StandardError);
            if (existing)
            {
                Assert.Equal(old, File.ReadAllBytes(target));
            }
            else
            {
                Assert.False(File.Exists(target), "an interrupted export left a target behind");
            }
            string[] expected = existing ? [image, target] : [image];
            Assert.Equal(expected.Order(), Directory.GetFiles(scratch.Path).Order());
            return;
        }
    }

    private static bool TrySignal(ToolProcess process, int signal)
    {
        try
        {
            process.Signal(signal);
            return true;
        }
        catch (IOException) when (process.HasExited)
        {
            return false;
        }
    }

    /// <summary>An image holding <paramref name="mib"/> MiB of random bytes, which take time to copy out.</summary>
    internal static async Task<string> IncompressibleImageAsync(Scratch scratch, int mib)
    {
        string raw = scratch.File("random.raw");
        byte[] bytes = new byte[mib << 20];
        new Random(5).NextBytes(bytes);
        File.WriteAllBytes(raw, bytes);
        string image = scratch.File("a.cbd");
        await CbdTool.RunAsync(0, "import", raw, image);
        File.Delete(raw);
        return image;
    }

    internal static async Task PollAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for a condition");
            await Task.Delay(1);
        }
    }
}

/// <summary>Signal numbers on Linux.</summary>
internal static class Signals
{
    public const int Interrupt = 2;
    public const int Terminate = 15;
    public const int Stop = 19;
    public const int Continue = 18;
}
