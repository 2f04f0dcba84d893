using System.Runtime.Versioning;
using System.Security.Cryptography;

namespace Cbd.Integration.Tests;

/// <summary>One install into a scratch prefix, shared by the tests of <see cref="InstallTests"/>.</summary>
public sealed class InstalledPrefix : IAsyncLifetime, IDisposable
{
    private readonly ScratchDirectory _scratch = new();

    public InstalledPrefix() => Path = _scratch.Directory("prefix");

    public string Path { get; }

    public Task InitializeAsync() => InstallAsync(Path);

    public Task DisposeAsync() => Task.CompletedTask;

    public void Dispose() => _scratch.Dispose();

    /// <summary>
    /// Runs scripts/install with the native executable the tests run (scripts/test builds it) rather than building
    /// another; without CBD_EXECUTABLE, scripts/install builds one itself.
    /// </summary>
    public static async Task InstallAsync(string prefix)
    {
        string? built = Environment.GetEnvironmentVariable("CBD_EXECUTABLE");
        string[] arguments = string.IsNullOrEmpty(built)
            ? [Repository.File("scripts/install"), prefix]
            : [Repository.File("scripts/install"), "--executable", built, prefix];
        ExternalTool.Result result = await ExternalTool.RunAsync("bash", arguments, TimeSpan.FromMinutes(10));
        Assert.Contains($"installed {prefix}/bin/cbd", result.StandardOutput);
    }
}

/// <summary><c>scripts/install PREFIX</c> into a scratch prefix, and what it installs checked by the tools that read it.</summary>
[SupportedOSPlatform("linux")]
public sealed class InstallTests(InstalledPrefix installed) : IClassFixture<InstalledPrefix>
{
    private static readonly string[] s_installed =
        ["bin/cbd", "lib/systemd/system/cbd@.socket", "lib/systemd/system/cbd@.service", "share/man/man1/cbd.1"];

    [Fact]
    public async Task Install_PutsCbdUnitsAndManPageInPrefix_TwiceGivesTheSameFiles()
    {
        string prefix = installed.Path;
        Dictionary<string, string> first = Snapshot(prefix);
        Assert.Equal(s_installed.Order(StringComparer.Ordinal), first.Keys.Order(StringComparer.Ordinal));
        Assert.True(File.GetUnixFileMode(Path.Combine(prefix, "bin/cbd")).HasFlag(UnixFileMode.UserExecute), "bin/cbd is not executable");

        await InstalledPrefix.InstallAsync(prefix);
        Assert.Equal(first, Snapshot(prefix));

        // The installed executable runs on its own: the native build, not a JIT apphost that needs files beside it.
        await using ToolProcess version = ToolProcess.Start(Path.Combine(prefix, "bin/cbd"), ["--version"]);
        Assert.True(await version.WaitForExitAsync(TimeSpan.FromSeconds(30)) && version.ExitCode == 0, $"installed cbd does not run: {version}");

        string service = File.ReadAllText(Path.Combine(prefix, "lib/systemd/system/cbd@.service"));
        Assert.Contains($"ExecStart={prefix}/bin/cbd serve ${{CBD_IMAGE}} $CBD_OPTIONS\n", service);
    }

    [Fact]
    public async Task InstalledManPage_RendersWithManDb_WithoutWarnings()
    {
        string prefix = installed.Path;

        ExternalTool.Result man = await ExternalTool.RunAsync("env",
            ["MANPAGER=cat", "MANWIDTH=100", "LC_ALL=C.UTF-8", ExternalTool.Require("man"), "--warnings", "-M", Path.Combine(prefix, "share/man"), "cbd"]);
        Assert.True(man.StandardError.Length == 0, $"man warned: {man}");
        Assert.StartsWith("CBD(1)", man.StandardOutput);
        foreach (string heading in new[] { "NAME", "SYNOPSIS", "COMMANDS", "SOCKET ACTIVATION", "EXIT STATUS", "SEE ALSO" })
        {
            Assert.Contains($"\n{heading}\n", man.StandardOutput);
        }
        Assert.Contains("cbd serve IMAGE", man.StandardOutput);
    }

    /// <summary>
    /// <c>systemd-analyze verify</c> loads the installed units as systemd would (instance "disk"): syntax, the
    /// directives, the executable ExecStart names and the man page in Documentation=. It needs no running systemd.
    /// </summary>
    [Fact]
    public async Task InstalledUnits_PassSystemdAnalyzeVerify()
    {
        string prefix = installed.Path;

        string units = Path.Combine(prefix, "lib/systemd/system");
        ExternalTool.Result verify = await ExternalTool.TryRunAsync("env",
            [$"MANPATH={Path.Combine(prefix, "share/man")}", ExternalTool.Require("systemd-analyze"), "verify",
             Path.Combine(units, "cbd@disk.socket"), Path.Combine(units, "cbd@disk.service")]);
        Assert.True(verify.ExitCode == 0 && verify.StandardError.Length == 0 && verify.StandardOutput.Length == 0, $"systemd-analyze verify: {verify}");
    }

    /// <summary>
    /// The installed service's ExecStart, expanded as systemd does for instance "disk" with an /etc/cbd/disk.conf that
    /// names a scratch image and options (<c>${VAR}</c> stays one word, <c>$VAR</c> splits at spaces), run by
    /// systemd-socket-activate as the socket unit would run it: the first connection is served by the installed
    /// cbd, and SIGTERM, the unit's KillSignal, closes the image clean.
    /// </summary>
    [Fact]
    public async Task InstalledServiceCommand_ServesUnderActivation_AndStopsCleanOnItsKillSignal()
    {
        string units = Path.Combine(installed.Path, "lib/systemd/system");
        string[] socketUnit = File.ReadAllLines(Path.Combine(units, "cbd@.socket"));
        Assert.Contains("ListenStream=/run/cbd/%i.sock", socketUnit);
        Assert.Contains("Accept=no", socketUnit);
        string[] service = File.ReadAllLines(Path.Combine(units, "cbd@.service"));
        Assert.Contains("KillSignal=SIGTERM", service);
        Assert.Contains("EnvironmentFile=-/etc/cbd/%i.conf", service);

        var environment = new Dictionary<string, string>();
        foreach (string line in service.Where(l => l.StartsWith("Environment=", StringComparison.Ordinal)))
        {
            string assignment = line["Environment=".Length..].Replace("%i", "disk", StringComparison.Ordinal);
            int equals = assignment.IndexOf('=', StringComparison.Ordinal);
            environment[assignment[..equals]] = assignment[(equals + 1)..];
        }
        Assert.Equal("/var/lib/cbd/disk.cbd", environment["CBD_IMAGE"]);

        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        // What /etc/cbd/disk.conf would say.
        environment["CBD_IMAGE"] = image;
        environment["CBD_OPTIONS"] = "--cache 16M  --flush-delay 1";
        string execStart = Assert.Single(service, l => l.StartsWith("ExecStart=", StringComparison.Ordinal))["ExecStart=".Length..];
        string[] command = [.. Expand(execStart.Replace("%i", "disk", StringComparison.Ordinal), environment)];
        Assert.Equal([Path.Combine(installed.Path, "bin/cbd"), "serve", image, "--cache", "16M", "--flush-delay", "1"], command);

        await using (ToolProcess format = ToolProcess.Start(command[0], ["format", image, "--size", "64M", "--quiet"]))
        {
            Assert.True(await format.WaitForExitAsync(TimeSpan.FromSeconds(60)) && format.ExitCode == 0, $"cbd format failed: {format}");
        }
        string socket = scratch.File("disk.sock");
        await using ToolProcess activator = await SocketActivationTests.StartActivatorAsync(socket, command);
        string uri = $"nbd+unix:///disk?socket={socket}";
        Assert.Equal(3 * 64 << 20, (await SocketActivationTests.ExportInfoAsync(uri)).GetProperty("export-size").GetInt64());
        await ExternalTool.QemuIoAsync(uri, ["write -P 0x77 0 1M", "read -P 0x77 0 1M"]);
        await SocketActivationTests.StopAsync(activator);
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), "the image was not closed clean after SIGTERM");
    }

    /// <summary>systemd's expansion of an ExecStart line without quotes: <c>${VAR}</c> is one word, <c>$VAR</c> is split at spaces.</summary>
    private static IEnumerable<string> Expand(string commandLine, Dictionary<string, string> environment)
    {
        foreach (string word in commandLine.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (word.StartsWith("${", StringComparison.Ordinal) && word.EndsWith('}'))
            {
                yield return environment[word[2..^1]];
            }
            else if (word.StartsWith('$'))
            {
                foreach (string part in environment[word[1..]].Split(' ', StringSplitOptions.RemoveEmptyEntries))
                {
                    yield return part;
                }
            }
            else
            {
                yield return word;
            }
        }
    }

    private static Dictionary<string, string> Snapshot(string prefix)
        => Directory.EnumerateFiles(prefix, "*", SearchOption.AllDirectories).ToDictionary(
            file => Path.GetRelativePath(prefix, file),
            file => $"{File.GetUnixFileMode(file)} {Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)))}");
}
