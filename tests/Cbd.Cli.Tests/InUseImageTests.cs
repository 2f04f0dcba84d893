using System.Text.Json;
using Cbd.TestTools;

namespace Cbd.Cli.Tests;

/// <summary>info and check look at an image cbd serve holds, read-only and without its lock, while clients write to it.</summary>
public class InUseImageTests
{
    [Fact]
    public async Task Info_and_check_read_a_served_image_while_it_is_written_and_never_claim_damage()
    {
        using var scratch = new Scratch();
        string image = scratch.File("served.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        string socket = scratch.File("served.sock");
        string pidFile = scratch.File("served.pid");
        await using var serve = ToolProcess.Start(CbdTool.Executable, ["serve", image, "--socket", socket, "--pid-file", pidFile, "--flush-delay", "0"]);
        await ExportSafetyTests.PollAsync(() => File.Exists(pidFile) || serve.HasExited);
        Assert.False(serve.HasExited, serve.ToString());
        string uri = $"nbd+unix:///?socket={socket}";
        await ExternalTool.QemuIoAsync(uri, ["write -P 0x11 0 8M", "flush"]);

        // A client keeps rewriting lblks, so the lbats change under the readers.
        using var stop = new CancellationTokenSource();
        var writer = Task.Run(async () =>
        {
            for (int round = 0; !stop.IsCancellationRequested; round++)
            {
                await ExternalTool.QemuIoAsync(uri, [$"write -P {round % 250 + 1} {round % 8}M 4M", "flush"]);
            }
        });
        try
        {
            for (int look = 0; look < 4; look++)
            {
                var info = await CbdTool.RunAsync(0, "info", image, "--json");
                using var json = JsonDocument.Parse(info.StandardOutput);
                Assert.True(json.RootElement.GetProperty("in_use").GetBoolean());
                Assert.InRange(json.RootElement.GetProperty("usage").GetProperty("lblks_used").GetInt64(), 1, 12 * 16);

                var check = await CbdTool.TryRunAsync(["check", image, "--json"]);
                Assert.True(check.ExitCode == 0, check.ToString());
                using var report = JsonDocument.Parse(check.StandardOutput);
                Assert.True(report.RootElement.GetProperty("in_use").GetBoolean());
                Assert.Equal(0, report.RootElement.GetProperty("errors").GetInt64());
            }
            var text = await CbdTool.RunAsync(0, "info", image);
            Assert.Contains("in use by another process", text.StandardOutput);
            Assert.Contains("as the server last wrote them back", text.StandardOutput);
            var checkText = await CbdTool.RunAsync(0, "check", image);
            Assert.Contains("Findings on an image in use may be transient", checkText.StandardOutput);
            await CbdTool.FailsAsync(8, "--repair needs the image closed", "check", image, "--repair");
        }
        finally
        {
            stop.Cancel();
            await writer;
        }

        serve.Signal(Signals.Terminate);
        Assert.True(await serve.WaitForExitAsync(TimeSpan.FromSeconds(60)), serve.ToString());
        Assert.True(serve.ExitCode == 0, serve.ToString());
        // Nothing the readers did shows: the image closes clean and checks clean.
        var closed = await CbdTool.RunAsync(0, "check", image, "--data", "--json");
        using var final = JsonDocument.Parse(closed.StandardOutput);
        Assert.False(final.RootElement.GetProperty("in_use").GetBoolean());
        Assert.Equal("clean", final.RootElement.GetProperty("result").GetString());
    }
}
