using Cbd.TestTools;

namespace Cbd.Cli.Tests;

/// <summary>A file whose size cannot change (an nbdfuse export) is formatted at the size it has.</summary>
public class FuseFormatTests
{
    [Fact]
    public async Task Format_of_an_nbdfuse_file_of_the_right_size_works_without_resizing_it()
    {
        Assert.True(File.Exists("/dev/fuse"), "this test needs /dev/fuse (FUSE) and root");
        using var scratch = new Scratch();
        string mount = scratch.File("fuse");
        Directory.CreateDirectory(mount);
        // nbdfuse runs nbdkit's memory plugin itself: a 64 MiB disk of zeros behind the file mount/nbd.
        await using var fuse = ExternalTool.Start("nbdfuse", [mount, "--command", "nbdkit", "-s", "memory", "64M"]);
        string file = Path.Combine(mount, "nbd");
        try
        {
            await ExportSafetyTests.PollAsync(() => File.Exists(file) || fuse.HasExited);
            Assert.False(fuse.HasExited, fuse.ToString());

            var format = await CbdTool.RunAsync(0, "format", file);
            Assert.Contains("64 MiB", format.StandardOutput);
            await CbdTool.RunAsync(0, "check", file);
            Assert.Equal(64L << 20, new FileInfo(file).Length);
            // A size it cannot take is refused plainly, naming what to do.
            await CbdTool.FailsAsync(1, "its size cannot be changed", "format", file, "--size", "32M", "--force");
        }
        finally
        {
            await ExternalTool.TryRunAsync("fusermount3", ["-u", mount]);
            await fuse.WaitForExitAsync(TimeSpan.FromSeconds(30));
        }
    }
}
