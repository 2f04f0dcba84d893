using System.Net;
using System.Net.Sockets;

namespace Cbd.Cli.Tests;

/// <summary>
/// <c>cbd serve</c> refusing to start: one line naming the path or address and the cause, the right exit code, and the
/// image left closed clean. The served device itself is tested with real clients in Cbd.Integration.Tests.
/// </summary>
public class ServeCommandTests
{
    [Fact]
    public async Task A_socket_in_a_missing_directory_is_named_with_the_directory()
    {
        using var scratch = new Scratch();
        string image = await FormatAsync(scratch);
        await CbdTool.FailsAsync(1, "--socket /missing/dir/x.sock: no such directory /missing/dir", "serve", image, "--socket", "/missing/dir/x.sock");
        await AssertClosedCleanAsync(image);
    }

    [Fact]
    public async Task A_port_in_use_is_named()
    {
        using var scratch = new Scratch();
        string image = await FormatAsync(scratch);
        using var taken = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        taken.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        taken.Listen();
        int port = ((IPEndPoint)taken.LocalEndPoint!).Port;

        await CbdTool.FailsAsync(1, $"--listen 127.0.0.1:{port}: port {port} on 127.0.0.1 is already in use", "serve", image, "--listen", $"{port}");
        await AssertClosedCleanAsync(image);
    }

    /// <summary>
    /// 192.0.2.1 is a documentation address (RFC 5737) that no interface here has: bind(2) refuses it locally, and
    /// binding never sends a packet.
    /// </summary>
    [Fact]
    public async Task An_address_not_on_this_machine_is_named_as_such()
    {
        using var scratch = new Scratch();
        string image = await FormatAsync(scratch);
        await CbdTool.FailsAsync(1, "--listen 192.0.2.1:10811: 192.0.2.1 is not an address of this machine", "serve", image, "--listen", "192.0.2.1:10811");
    }

    [Theory]
    [InlineData("99999", "port 99999 is out of range")]
    [InlineData("65536", "port 65536 is out of range")]
    [InlineData("abc", "expected PORT, HOST:PORT or [IPv6]:PORT")]
    [InlineData("::1:10809", "an IPv6 address goes in brackets")]
    [InlineData(":10809", "no host before the ':'")]
    [InlineData("[nothost]:10809", "'nothost' in brackets is not an IPv6 address")]
    public async Task A_listen_address_not_understood_is_a_usage_error(string listen, string expected)
    {
        using var scratch = new Scratch();
        var result = await CbdTool.RunAsync(2, "serve", scratch.File("x.cbd"), "--listen", listen);
        Assert.Contains($"--listen: '{listen}': {expected}", result.StandardError);
    }

    [Fact]
    public async Task A_directory_is_not_called_a_missing_file()
    {
        using var scratch = new Scratch();
        await CbdTool.FailsAsync(1, $"{scratch.Path}: is a directory", "serve", scratch.Path);
    }

    [Fact]
    public async Task Create_over_an_existing_image_is_refused_and_leaves_it_alone()
    {
        using var scratch = new Scratch();
        string image = await FormatAsync(scratch);
        byte[] before = File.ReadAllBytes(image);
        await CbdTool.FailsAsync(1, "already exists; drop --create", "serve", image, "--create", "--size", "64M", "--socket", scratch.File("s.sock"));
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    /// <summary>A link planted where the pid file goes: the server must not write through it, and the target keeps its bytes.</summary>
    [Fact]
    public async Task A_pid_file_path_that_is_a_symbolic_link_is_refused()
    {
        using var scratch = new Scratch();
        string image = await FormatAsync(scratch);
        string victim = scratch.File("victim");
        File.WriteAllText(victim, "precious\n");
        string pid = scratch.File("serve.pid");
        File.CreateSymbolicLink(pid, victim);

        await CbdTool.FailsAsync(1, $"--pid-file {pid}: is a symbolic link", "serve", image, "--socket", scratch.File("s.sock"), "--pid-file", pid);
        Assert.Equal("precious\n", File.ReadAllText(victim));
        Assert.False(File.Exists(scratch.File("s.sock")), "the server started although it was going to refuse its pid file");
        await AssertClosedCleanAsync(image);
    }

    [Theory]
    [InlineData("--socket-mode", "0999", "invalid mode '0999'")]
    [InlineData("--socket-mode", "rw", "invalid mode 'rw'")]
    [InlineData("--socket-group", "no-such-group-here", "no group named 'no-such-group-here'")]
    public async Task A_socket_access_not_understood_is_a_usage_error(string option, string value, string expected)
    {
        using var scratch = new Scratch();
        var result = await CbdTool.RunAsync(2, "serve", scratch.File("x.cbd"), option, value);
        Assert.Contains(expected, result.StandardError);
    }

    [Fact]
    public async Task Serve_help_shows_short_options_and_readable_defaults()
    {
        var result = await CbdTool.RunAsync(0, "serve", "--help");
        foreach (string option in new[] { "-r, --read-only", "-e, --export-name, --name", "-p, --listen, --port", "-P, --pid-file" })
        {
            Assert.Contains(option, result.StandardOutput);
        }
        Assert.Contains("Default: 64M", result.StandardOutput);
        Assert.DoesNotContain("67108864", result.StandardOutput);
        Assert.Contains("600", result.StandardOutput);
    }

    private static async Task<string> FormatAsync(Scratch scratch)
    {
        string image = scratch.File("disk.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "16M");
        return image;
    }

    private static async Task AssertClosedCleanAsync(string image)
    {
        var info = await CbdTool.RunAsync(0, "info", image, "--json");
        using var json = System.Text.Json.JsonDocument.Parse(info.StandardOutput);
        Assert.False(json.RootElement.GetProperty("header").GetProperty("dirty").GetBoolean(), $"{image} was left dirty");
    }
}
