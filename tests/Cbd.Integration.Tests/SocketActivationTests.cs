using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Cbd.Integration.Tests;

/// <summary>
/// <c>cbd serve</c> started by <c>systemd-socket-activate</c> (Debian's systemd package), which listens, waits for the
/// first connection and then executes cbd in its own process with the socket passed as systemd passes it
/// (LISTEN_PID, LISTEN_FDS, fd 3): what a cbd@.socket unit does, without needing systemd as pid 1.
/// </summary>
public sealed class SocketActivationTests
{
    private const long MiB = 1 << 20;
    private const int OCloexec = 0x80000; // O_CLOEXEC (02000000) in /proc/PID/fdinfo's octal flags

    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(45);

    [Fact]
    public async Task UnixSocket_FirstConnectionStartsCbd_SecondClientWrites_SigtermClosesClean_SocketFileLeftToItsCreator()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        string pidFile = scratch.File("cbd.pid");
        await FormatAsync(image);

        await using ToolProcess activator = await StartActivatorAsync(socket, ["serve", image, "--pid-file", pidFile]);
        // Listening, and cbd not started: the process is still systemd-socket-activate and no pid file exists.
        Assert.EndsWith("/systemd-socket-activate", ExecutableOf(activator.Id));
        Assert.False(File.Exists(pidFile), $"cbd started before any connection: {activator}");

        string uri = $"nbd+unix:///?socket={socket}";
        JsonElement export = await ExportInfoAsync(uri);
        Assert.Equal(192 * MiB, export.GetProperty("export-size").GetInt64());
        Assert.Equal("disk", export.GetProperty("export-name").GetString());

        // The same process now runs cbd (LISTEN_PID named it), with the passed socket no longer inherited by children.
        Assert.EndsWith("/cbd", ExecutableOf(activator.Id));
        Assert.Equal($"{activator.Id}", File.ReadAllText(pidFile).Trim());
        Assert.True((FdFlags(activator.Id, 3) & OCloexec) != 0, "fd 3 has no FD_CLOEXEC");

        await ExternalTool.QemuIoAsync(uri, ["write -P 0x5a 0 4M", "flush", "read -P 0x5a 0 4M", "read -P 0 4M 1M"]);
        await ExternalTool.QemuIoAsync(uri, ["read -P 0x5a 0 4M"], readOnly: true);

        await StopAsync(activator);
        Assert.Contains($"nbd+unix:///disk?socket={socket}", activator.StandardOutput);
        Assert.False(File.Exists(pidFile), $"cbd left its pid file behind: {activator}");
        // systemd made the socket file and removes it; a server that deleted it would break the next activation.
        Assert.True(File.Exists(socket), $"cbd deleted a socket file it did not create: {activator}");
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), "the image was not closed clean after SIGTERM");

        await using CbdServer again = await CbdServer.StartAsync(image, scratch.File("again.sock"));
        await ExternalTool.QemuIoAsync(again.Uri, ["read -P 0x5a 0 4M", "read -P 0 4M 4M"], readOnly: true);
        await again.StopAsync();
    }

    [Fact]
    public async Task TcpSocket_NbdinfoStartsCbd_QemuIoWritesAndReads_SigtermClosesClean()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        await FormatAsync(image);
        int port = FreeTcpPort();

        await using ToolProcess activator = await StartActivatorAsync($"127.0.0.1:{port}", ["serve", image, "--name", "tcpdisk"]);
        string uri = $"nbd://127.0.0.1:{port}/tcpdisk";
        JsonElement export = await ExportInfoAsync(uri);
        Assert.Equal(192 * MiB, export.GetProperty("export-size").GetInt64());

        await ExternalTool.QemuIoAsync(uri, ["write -P 0x3c 1M 2M", "flush", "read -P 0x3c 1M 2M", "read -P 0 0 1M"]);

        await StopAsync(activator);
        Assert.Contains(uri, activator.StandardOutput);
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), "the image was not closed clean after SIGTERM");
        await using CbdServer again = await CbdServer.StartAsync(image, scratch.File("again.sock"));
        await ExternalTool.QemuIoAsync(again.Uri, ["read -P 0x3c 1M 2M"], readOnly: true);
        await again.StopAsync();
    }

    [Theory]
    [InlineData("--socket")]
    [InlineData("--listen")]
    public async Task SocketOrListen_WithActivation_IsOneLineError_AndNothingIsServed(string option)
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        string own = scratch.File("own.sock");
        await FormatAsync(image);

        await using ToolProcess activator = await StartActivatorAsync(socket,
            ["serve", image, option, option == "--socket" ? own : "0"]);
        // The connection starts cbd, which refuses to run; the client sees the socket closed.
        await ExternalTool.TryRunAsync("nbdinfo", [$"nbd+unix:///?socket={socket}"]);
        Assert.True(await activator.WaitForExitAsync(s_timeout), $"cbd did not exit: {activator}");

        Assert.Equal(1, activator.ExitCode);
        string error = Assert.Single(CbdLines(activator.StandardError));
        Assert.Equal("cbd: --socket and --listen cannot be used with socket activation: 1 listening socket(s) were passed (LISTEN_FDS=1); the socket unit says where to listen", error);
        Assert.False(File.Exists(own), "cbd made its own socket");
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), "the image was opened");
    }

    /// <summary>
    /// Variables and descriptors that a service manager would never pass, set by a shell that then executes cbd in
    /// its own process (so LISTEN_PID=$$ is cbd's pid): each is refused with one line that names what is wrong.
    /// </summary>
    [Theory]
    [InlineData("LISTEN_FDS=many", "", "cbd: socket activation: LISTEN_FDS=many is not a count of file descriptors from 0 to 1024")]
    [InlineData("LISTEN_FDS=-1", "", "cbd: socket activation: LISTEN_FDS=-1 is not a count of file descriptors from 0 to 1024")]
    [InlineData("LISTEN_FDS=1 LISTEN_FDNAMES=a:b", "", "cbd: socket activation: LISTEN_FDNAMES=a:b names 2 file descriptors, LISTEN_FDS=1")]
    [InlineData("LISTEN_FDS=1 LISTEN_FDNAMES=disk.socket", "3<\"$1\"", "cbd: socket activation: fd 3 (disk.socket) is not a socket")]
    public async Task MalformedActivation_IsOneLineError(string variables, string redirection, string expected)
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        await FormatAsync(image);

        ExternalTool.Result result = await ExternalTool.TryRunAsync("sh",
            ["-c", $"LISTEN_PID=$$ {variables} exec \"$0\" serve \"$1\" {redirection}", CbdServer.Executable, image], s_timeout);
        Assert.Equal(1, result.ExitCode);
        Assert.Equal(expected, Assert.Single(CbdLines(result.StandardError)));
    }

    [Fact]
    public async Task SocketsPassedToAnotherProcess_AreIgnored()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        string pidFile = scratch.File("cbd.pid");
        await FormatAsync(image);

        // LISTEN_PID=1: meant for another process (as after a fork), so cbd serves its own --socket as usual.
        await using ToolProcess server = ToolProcess.Start(ExternalTool.Require("sh"),
            ["-c", "LISTEN_PID=1 LISTEN_FDS=1 exec \"$0\" serve \"$1\" --socket \"$2\" --pid-file \"$3\"", CbdServer.Executable, image, socket, pidFile]);
        await Poll.UntilAsync(() => File.Exists(pidFile) || server.HasExited, s_timeout, () => $"cbd to start: {server}");
        await ExportInfoAsync($"nbd+unix:///?socket={socket}");
        await StopAsync(server);
        Assert.False(File.Exists(socket), $"cbd left its own socket behind: {server}");
    }

    private static async Task FormatAsync(string image)
    {
        await using ToolProcess format = ToolProcess.Start(CbdServer.Executable, ["format", image, "--size", "64M", "--quiet"]);
        Assert.True(await format.WaitForExitAsync(s_timeout) && format.ExitCode == 0, $"cbd format failed: {format}");
    }

    /// <summary>
    /// Starts <c>systemd-socket-activate -l ADDRESS cbd ARGS</c> and returns once it listens (it says so on stderr).
    /// </summary>
    internal static async Task<ToolProcess> StartActivatorAsync(string address, string[] cbdArguments)
    {
        ToolProcess activator = ExternalTool.Start("systemd-socket-activate", ["-l", address, CbdServer.Executable, .. cbdArguments]);
        try
        {
            await Poll.UntilAsync(() => activator.StandardError.Contains("Listening on", StringComparison.Ordinal) || activator.HasExited,
                s_timeout, () => $"systemd-socket-activate to listen: {activator}");
            Assert.False(activator.HasExited, $"systemd-socket-activate exited: {activator}");
            return activator;
        }
        catch
        {
            await activator.DisposeAsync();
            throw;
        }
    }

    internal static async Task StopAsync(ToolProcess server)
    {
        server.Signal(Posix.SigTerm);
        Assert.True(await server.WaitForExitAsync(s_timeout), $"cbd still running {s_timeout.TotalSeconds} s after SIGTERM: {server}");
        Assert.True(server.ExitCode == 0, $"cbd exited with {server.ExitCode} after SIGTERM: {server}");
    }

    internal static async Task<JsonElement> ExportInfoAsync(string uri)
    {
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--json", uri]);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput);
        return Assert.Single(json.RootElement.GetProperty("exports").EnumerateArray()).Clone();
    }

    /// <summary>The lines cbd wrote itself, without systemd-socket-activate's own.</summary>
    private static string[] CbdLines(string standardError)
        => [.. standardError.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("cbd: ", StringComparison.Ordinal))];

    private static string ExecutableOf(int pid) => new FileInfo($"/proc/{pid}/exe").LinkTarget ?? "";

    private static int FdFlags(int pid, int fd)
    {
        string line = File.ReadLines($"/proc/{pid}/fdinfo/{fd}").Single(l => l.StartsWith("flags:", StringComparison.Ordinal));
        return Convert.ToInt32(line["flags:".Length..].Trim(), 8);
    }

    /// <summary>A port nothing listens on now; systemd-socket-activate binds it a moment later.</summary>
    private static int FreeTcpPort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
