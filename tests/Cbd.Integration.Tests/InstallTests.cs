using System.Runtime.Versioning;
using System.Security.Cryptography;

namespace Cbd.Integration.Tests;

/// <summary><c>scripts/install PREFIX</c> into a scratch prefix, and what it installs checked by the tools that read it.</summary>
[SupportedOSPlatform("linux")]
public sealed class InstallTests
{
    private static readonly string[] s_installed =
        ["bin/cbd", "lib/systemd/system/cbd@.socket", "lib/systemd/system/cbd@.service", "share/man/man1/cbd.1"];

    [Fact]
    public async Task Install_PutsCbdUnitsAndManPageInPrefix_TwiceGivesTheSameFiles()
    {
        using var scratch = new ScratchDirectory();
        string prefix = scratch.Directory("prefix");

        await InstallAsync(prefix);
        Dictionary<string, string> first = Snapshot(prefix);
        Assert.Equal(s_installed.Order(StringComparer.Ordinal), first.Keys.Order(StringComparer.Ordinal));
        Assert.True(File.GetUnixFileMode(Path.Combine(prefix, "bin/cbd")).HasFlag(UnixFileMode.UserExecute), "bin/cbd is not executable");

        await InstallAsync(prefix);
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
        using var scratch = new ScratchDirectory();
        string prefix = scratch.Directory("prefix");
        await InstallAsync(prefix);

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
        using var scratch = new ScratchDirectory();
        string prefix = scratch.Directory("prefix");
        await InstallAsync(prefix);

        string units = Path.Combine(prefix, "lib/systemd/system");
        ExternalTool.Result verify = await ExternalTool.TryRunAsync("env",
            [$"MANPATH={Path.Combine(prefix, "share/man")}", ExternalTool.Require("systemd-analyze"), "verify",
             Path.Combine(units, "cbd@disk.socket"), Path.Combine(units, "cbd@disk.service")]);
        Assert.True(verify.ExitCode == 0 && verify.StandardError.Length == 0 && verify.StandardOutput.Length == 0, $"systemd-analyze verify: {verify}");
    }

    /// <summary>
    /// Installs with the native executable the tests run (scripts/test builds it) rather than building another; without
    /// CBD_EXECUTABLE, scripts/install builds one itself.
    /// </summary>
    private static async Task InstallAsync(string prefix)
    {
        string? built = Environment.GetEnvironmentVariable("CBD_EXECUTABLE");
        string[] arguments = string.IsNullOrEmpty(built)
            ? [Repository.File("scripts/install"), prefix]
            : [Repository.File("scripts/install"), "--executable", built, prefix];
        ExternalTool.Result result = await ExternalTool.RunAsync("bash", arguments, TimeSpan.FromMinutes(10));
        Assert.Contains($"installed {prefix}/bin/cbd", result.StandardOutput);
    }

    private static Dictionary<string, string> Snapshot(string prefix)
        => Directory.EnumerateFiles(prefix, "*", SearchOption.AllDirectories).ToDictionary(
            file => Path.GetRelativePath(prefix, file),
            file => $"{File.GetUnixFileMode(file)} {Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(file)))}");
}
