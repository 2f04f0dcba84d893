namespace Cbd.TestTools;

/// <summary>
/// Runs the real, unmodified clients the tests drive. A missing tool fails the test and names the Debian package that
/// provides it: these tests never skip.
/// </summary>
public static class ExternalTool
{
    private static readonly Dictionary<string, string> s_packages = new()
    {
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["nbdfuse"] = "libnbd-bin",
        ["qemu-img"] = "qemu-utils",
        ["qemu-io"] = "qemu-utils",
        ["fio"] = "fio",
        ["mkfs.ext4"] = "e2fsprogs",
        ["e2fsck"] = "e2fsprogs",
        ["losetup"] = "mount",
        ["mount"] = "mount",
        ["umount"] = "mount",
        ["fusermount3"] = "fuse3",
        ["stat"] = "coreutils",
        ["systemd-socket-activate"] = "systemd",
        ["systemd-analyze"] = "systemd",
        ["man"] = "man-db",
        ["openssl"] = "openssl",
        ["curl"] = "curl",
        ["promtool"] = "prometheus",
    };

    public sealed record Result(string CommandLine, int ExitCode, string StandardOutput, string StandardError)
    {
        public override string ToString() => $"{CommandLine}\nexit code {ExitCode}\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";
    }

    /// <summary>The tool's full path (PATH, then the sbin directories a non-login root shell may lack); fails the test when it is not installed.</summary>
    public static string Require(string tool)
    {
        IEnumerable<string> directories = (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Concat(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]);
        foreach (string directory in directories)
        {
            string candidate = Path.Combine(directory, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        string package = s_packages.GetValueOrDefault(tool, "?");
        Assert.Fail($"'{tool}' is not installed: install the Debian package {package} (apt-get install -y {package}).");
        return "";
    }

    /// <summary>Runs a tool to completion and fails the test on a non-zero exit.</summary>
    public static async Task<Result> RunAsync(string tool, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        Result result = await TryRunAsync(tool, arguments, timeout);
        Assert.True(result.ExitCode == 0, $"failed: {result}");
        return result;
    }

    /// <summary>Runs a tool to completion; a tool still running after <paramref name="timeout"/> (default 60 s) is killed and fails the test.</summary>
    public static async Task<Result> TryRunAsync(string tool, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        await using ToolProcess process = Start(tool, arguments);
        TimeSpan limit = timeout ?? TimeSpan.FromSeconds(60);
        if (!await process.WaitForExitAsync(limit))
        {
            process.Kill();
            await process.WaitForExitAsync(TimeSpan.FromSeconds(10));
            Assert.Fail($"timed out after {limit.TotalSeconds} s: {process}");
        }
        return new Result(process.CommandLine, process.ExitCode, process.StandardOutput, process.StandardError);
    }

    /// <summary>Starts a tool in the background; the caller disposes it (which kills it if still running).</summary>
    public static ToolProcess Start(string tool, IEnumerable<string> arguments, bool redirectInput = false)
        => ToolProcess.Start(Require(tool), arguments, redirectInput);

    /// <summary>
    /// Runs qemu-io with one <c>-c</c> per command against a raw NBD URI. qemu-io reports a failed command (including
    /// a <c>read -P</c> that finds other bytes) on its output, not always in its exit code, so both are checked.
    /// </summary>
    public static async Task<Result> QemuIoAsync(string uri, IEnumerable<string> commands, bool readOnly = false, TimeSpan? timeout = null)
    {
        var arguments = new List<string> { "-f", "raw" };
        if (readOnly)
        {
            arguments.Add("-r");
        }
        foreach (string command in commands)
        {
            arguments.Add("-c");
            arguments.Add(command);
        }
        arguments.Add(uri);
        Result result = await RunAsync("qemu-io", arguments, timeout);
        AssertQemuIoSucceeded(result.StandardOutput + result.StandardError, result.ToString());
        return result;
    }

    public static void AssertQemuIoSucceeded(string output, string context)
    {
        Assert.False(output.Contains("Pattern verification failed", StringComparison.Ordinal), $"qemu-io read other bytes than expected: {context}");
        Assert.False(output.Contains("failed", StringComparison.OrdinalIgnoreCase) || output.Contains("error", StringComparison.OrdinalIgnoreCase),
            $"a qemu-io command failed: {context}");
    }
}
