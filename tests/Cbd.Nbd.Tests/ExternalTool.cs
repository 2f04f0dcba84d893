using System.Diagnostics;
using System.Text;

namespace Cbd.Nbd.Tests;

/// <summary>Runs the NBD clients the integration tests drive. A missing tool fails the test, naming the Debian package to install.</summary>
public static class ExternalTool
{
    private static readonly Dictionary<string, string> s_packages = new()
    {
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["qemu-io"] = "qemu-utils",
        ["qemu-img"] = "qemu-utils",
        ["fio"] = "fio",
    };

    public sealed record Result(int ExitCode, string StandardOutput, string StandardError)
    {
        public override string ToString() => $"exit code {ExitCode}\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";
    }

    /// <summary>The tool's full path; fails the test when it is not installed.</summary>
    public static string Require(string tool)
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(directory, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        Assert.Fail($"'{tool}' is not installed: install the Debian package {s_packages[tool]} (apt-get install -y {s_packages[tool]}).");
        return "";
    }

    /// <summary>Runs a tool to completion (killed after <paramref name="timeout"/>) and fails the test on a non-zero exit.</summary>
    public static async Task<Result> RunAsync(string tool, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        Result result = await TryRunAsync(tool, arguments, timeout);
        Assert.True(result.ExitCode == 0, $"{tool} {string.Join(' ', arguments)} failed: {result}");
        return result;
    }

    public static async Task<Result> TryRunAsync(string tool, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        var start = new ProcessStartInfo(Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = Process.Start(start)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        Task readOut = Task.Run(async () => stdout.Append(await process.StandardOutput.ReadToEndAsync()));
        Task readErr = Task.Run(async () => stderr.Append(await process.StandardError.ReadToEndAsync()));
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            await Task.WhenAll(readOut, readErr);
            Assert.Fail($"{tool} {string.Join(' ', start.ArgumentList)} timed out: stdout {stdout} stderr {stderr}");
        }
        await Task.WhenAll(readOut, readErr);
        return new Result(process.ExitCode, stdout.ToString(), stderr.ToString());
    }
}
