namespace Cbd.Integration.Tests;

/// <summary>
/// Who may use a served device: the Unix socket is the only access control there is, so its mode must not depend on
/// the umask cbd serve happens to run under. Another user is played by <c>nobody</c> through runuser, with real nbdinfo.
/// </summary>
public sealed class ServeAccessTests
{
    [Fact]
    public async Task Under_umask_000_the_socket_is_owner_only_and_another_user_cannot_connect()
    {
        using var scratch = new ScratchDirectory();
        string socket = scratch.File("nbd.sock");
        await using CbdServer server = await CbdServer.StartUnderUmaskAsync("000", await FormatAsync(scratch), socket);

        Assert.Equal("600 0", await StatAsync(socket));
        Assert.Equal("644", (await StatAsync(server.PidFile)).Split(' ')[0]);
        var stranger = await ExternalTool.TryRunAsync("runuser", ["-u", "nobody", "--", "nbdinfo", "--size", server.Uri]);
        Assert.True(stranger.ExitCode != 0, $"nobody connected to an owner-only socket: {stranger}");
        await ExternalTool.RunAsync("nbdinfo", ["--size", server.Uri]);
        await server.StopAsync();
    }

    [Fact]
    public async Task Socket_group_and_mode_let_that_group_in()
    {
        using var scratch = new ScratchDirectory();
        string socket = scratch.File("nbd.sock");
        // nobody's own group: its members (nobody) may connect, others may not.
        await using CbdServer server = await CbdServer.StartUnderUmaskAsync("077", await FormatAsync(scratch), socket, "--socket-group", "nogroup");

        string gid = (await ExternalTool.RunAsync("getent", ["group", "nogroup"])).StandardOutput.Split(':')[2];
        Assert.Equal($"660 {gid}", await StatAsync(socket));
        var member = await ExternalTool.TryRunAsync("runuser", ["-u", "nobody", "--", "nbdinfo", "--size", server.Uri]);
        Assert.True(member.ExitCode == 0, $"a member of the socket's group could not connect: {member}");
        await server.StopAsync();
    }

    [Fact]
    public async Task Socket_mode_given_is_the_mode_set()
    {
        using var scratch = new ScratchDirectory();
        string socket = scratch.File("nbd.sock");
        await using CbdServer server = await CbdServer.StartAsync(await FormatAsync(scratch), socket, "--socket-mode", "0666");
        Assert.Equal("666 0", await StatAsync(socket));
        var anyone = await ExternalTool.TryRunAsync("runuser", ["-u", "nobody", "--", "nbdinfo", "--size", server.Uri]);
        Assert.True(anyone.ExitCode == 0, $"--socket-mode 666 should let anyone in: {anyone}");
        await server.StopAsync();
    }

    /// <summary>
    /// What the server prints under "Attach with:" is pasted by people: mkfs is suggested for an empty device only,
    /// never for one that holds a filesystem.
    /// </summary>
    [Fact]
    public async Task Attach_hints_suggest_mkfs_only_for_an_empty_device()
    {
        using var scratch = new ScratchDirectory();
        string image = await FormatAsync(scratch);
        string socket = scratch.File("nbd.sock");
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await server.WaitForStandardOutputAsync("mount $loop");
            Assert.Contains("mkfs.ext4", server.StandardOutput);
            Assert.Contains("empty", server.StandardOutput);
            await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x5a 0 1M", "flush"]);
            await server.StopAsync();
        }
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await server.WaitForStandardOutputAsync("mount $loop");
            Assert.DoesNotContain("mkfs", server.StandardOutput);
            Assert.Contains("16 lblks in use", server.StandardOutput);
            Assert.Contains("&& mount $loop", server.StandardOutput);
            await server.StopAsync();
        }
        await using (CbdServer server = await CbdServer.StartAsync(image, socket, "--read-only"))
        {
            await server.WaitForStandardOutputAsync("mount -o ro");
            Assert.DoesNotContain("mkfs", server.StandardOutput);
            Assert.Contains("mount -o ro", server.StandardOutput);
            await server.StopAsync();
        }
    }

    /// <summary>The default socket is named after the image's file name: a second image of that name is told to pick another path.</summary>
    [Fact]
    public async Task A_second_image_of_the_same_name_is_told_to_use_socket()
    {
        using var scratch = new ScratchDirectory();
        string runtime = scratch.Directory("runtime");
        string first = scratch.Directory("a") + "/disk.cbd";
        string second = scratch.Directory("b") + "/disk.cbd";
        foreach (string image in new[] { first, second })
        {
            await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "16M"]);
        }
        string pidFile = scratch.File("first.pid");
        await using ToolProcess serving = ToolProcess.Start("/usr/bin/env",
            [$"XDG_RUNTIME_DIR={runtime}", CbdServer.Executable, "serve", first, "--pid-file", pidFile]);
        await Poll.UntilAsync(() => File.Exists(pidFile) || serving.HasExited, TimeSpan.FromSeconds(30), () => $"the first server: {serving}");
        Assert.True(File.Exists(Path.Combine(runtime, "cbd-disk.sock")), $"no default socket in XDG_RUNTIME_DIR: {serving}");

        var refused = await ExternalTool.TryRunAsync("env", [$"XDG_RUNTIME_DIR={runtime}", CbdServer.Executable, "serve", second]);
        Assert.True(refused.ExitCode == 1, $"expected exit 1: {refused}");
        Assert.Contains($"{runtime}/cbd-disk.sock is in use by a running server", refused.StandardError);
        Assert.Contains("--socket PATH", refused.StandardError);
        Assert.False(await ImageInspection.NeedsRecoveryAsync(second), "the refused image was left dirty");

        serving.Signal(Posix.SigTerm);
        Assert.True(await serving.WaitForExitAsync(TimeSpan.FromSeconds(45)) && serving.ExitCode == 0, $"the first server: {serving}");
    }

    private static async Task<string> FormatAsync(ScratchDirectory scratch)
    {
        string image = scratch.File("disk.cbd");
        await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "16M"]);
        return image;
    }

    /// <summary>"MODE GID", e.g. "600 0".</summary>
    private static async Task<string> StatAsync(string path)
        => (await ExternalTool.RunAsync("stat", ["-c", "%a %g", path])).StandardOutput.Trim();
}
