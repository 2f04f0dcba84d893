using System.Diagnostics;
using Xunit.Abstractions;

namespace Cbd.Integration.Tests;

/// <summary>
/// SIGTERM at any moment of cbd serve's start-up ends with the image closed clean: after each line the server prints,
/// and at delays spread over its whole start-up (process start, open, listen, banner).
/// </summary>
public sealed class StartupSignalTests(ITestOutputHelper output)
{
    /// <summary>Exit code of a process ended by SIGTERM's default action (128 + 15), before cbd took the signal over.</summary>
    private const int KilledBySigterm = 143;

    [Fact]
    public async Task Sigterm_after_each_line_printed_at_startup_leaves_the_image_clean()
    {
        using var scratch = new ScratchDirectory();
        string image = await PrepareAsync(scratch);
        string socket = scratch.File("nbd.sock");

        int lines;
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            // The banner's last line is the mount hint.
            await server.WaitForStandardOutputAsync("mount $loop");
            lines = CountLines(server);
            await server.StopAsync();
        }
        Assert.True(lines > 3, "too few lines to signal after");

        for (int after = 0; after <= lines; after++)
        {
            await using ToolProcess serve = Start(image, socket);
            await Poll.UntilAsync(() => serve.HasExited || CountLines(serve) >= after, TimeSpan.FromSeconds(30), () => $"line {after} of cbd serve: {serve}");
            serve.Signal(Posix.SigTerm);
            await AssertEndsCleanAsync(serve, image, socket, $"SIGTERM after line {after}");
        }
    }

    [Fact]
    public async Task Sigterm_at_delays_spread_over_startup_leaves_the_image_clean()
    {
        using var scratch = new ScratchDirectory();
        string image = await PrepareAsync(scratch);
        string socket = scratch.File("nbd.sock");

        // How long a start takes here, from the process start to its banner.
        var clock = Stopwatch.StartNew();
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await server.WaitForStandardOutputAsync("mount $loop");
            TimeSpan startup = clock.Elapsed;
            await server.StopAsync();
            output.WriteLine($"start-up took {startup.TotalMilliseconds:0} ms");

            const int Steps = 32;
            var random = new Random(20261130);
            int beforeHandler = 0;
            for (int step = 0; step < Steps; step++)
            {
                // Evenly spread with a random jitter, so that every part of the start-up is hit on some run.
                var delay = TimeSpan.FromMilliseconds(startup.TotalMilliseconds * (step + random.NextDouble()) / Steps);
                await using ToolProcess serve = Start(image, socket);
                await Task.Delay(delay);
                if (serve.HasExited)
                {
                    Assert.Fail($"cbd serve exited before the signal: {serve}");
                }
                serve.Signal(Posix.SigTerm);
                if (await AssertEndsCleanAsync(serve, image, socket, $"SIGTERM after {delay.TotalMilliseconds:0} ms"))
                {
                    beforeHandler++;
                }
            }
            output.WriteLine($"{beforeHandler} of {Steps} signals came before cbd serve handled signals (nothing was open yet)");
        }
    }

    /// <summary>A service manager or a script may send SIGTERM again while the server shuts down: it still ends clean.</summary>
    [Fact]
    public async Task A_second_sigterm_during_shutdown_still_ends_clean()
    {
        using var scratch = new ScratchDirectory();
        string image = await PrepareAsync(scratch);
        string socket = scratch.File("nbd.sock");
        await using CbdServer server = await CbdServer.StartAsync(image, socket);
        // Dirty lblks in the cache, so that the shutdown has a flush to do when the second signal comes.
        await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x7e 8M 8M"]);

        Posix.Signal(server.Pid, Posix.SigTerm);
        await Poll.UntilAsync(() => server.StandardError.Contains("shutting down"), TimeSpan.FromSeconds(30), () => server.Output);
        try
        {
            Posix.Signal(server.Pid, Posix.SigTerm);
        }
        catch (IOException) when (server.HasExited)
        {
            // Done before the second signal could be sent: nothing to test then, but nothing wrong either.
        }
        await server.AssertStoppedAsync();
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), $"the image was left dirty: {server.Output}");
    }

    /// <summary>An image with data in it, so that opening it reads something.</summary>
    private static async Task<string> PrepareAsync(ScratchDirectory scratch)
    {
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        await using CbdServer server = await CbdServer.CreateAsync(image, socket, "64M");
        await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x3c 0 8M", "flush"]);
        await server.StopAsync();
        return image;
    }

    private static ToolProcess Start(string image, string socket)
        => ToolProcess.Start(CbdServer.Executable, ["serve", image, "--socket", socket, "--pid-file", socket + ".pid"]);

    /// <summary>
    /// The process ends: with 0 once it handles signals, or killed by the signal before that, when nothing was open
    /// yet (true then). Either way the image is clean and nothing is left behind.
    /// </summary>
    private static async Task<bool> AssertEndsCleanAsync(ToolProcess serve, string image, string socket, string when)
    {
        Assert.True(await serve.WaitForExitAsync(TimeSpan.FromSeconds(45)), $"{when}: still running: {serve}");
        Assert.True(serve.ExitCode is 0 or KilledBySigterm, $"{when}: exit code {serve.ExitCode}: {serve}");
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), $"{when}: the image was left dirty: {serve}");
        Assert.False(File.Exists(socket), $"{when}: the socket was left behind: {serve}");
        Assert.False(File.Exists(socket + ".pid"), $"{when}: the pid file was left behind: {serve}");
        return serve.ExitCode == KilledBySigterm;
    }

    private static int CountLines(CbdServer server) => CountLines(server.StandardOutput) + CountLines(server.StandardError);

    private static int CountLines(ToolProcess serve) => CountLines(serve.StandardOutput) + CountLines(serve.StandardError);

    private static int CountLines(string text) => text.Count(c => c == '\n');
}
