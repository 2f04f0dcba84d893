using System.Diagnostics;
using System.Text;

namespace Cbd.Cli.Tests;

/// <summary>Runs the real <c>cbd</c> executable, the apphost this project's reference copies next to the tests.</summary>
public static class CbdTool
{
    private static readonly string s_executable = Path.Combine(AppContext.BaseDirectory, "cbd");

    /// <summary>The path of the cbd executable the tests run.</summary>
    public static string Executable => s_executable;

    public sealed record Result(string CommandLine, int ExitCode, byte[] StandardOutputBytes, string StandardError)
    {
        public string StandardOutput => Encoding.UTF8.GetString(StandardOutputBytes);

        public override string ToString() => $"cbd {CommandLine}\nexit code {ExitCode}\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";
    }

    /// <summary>Runs cbd and asserts its exit code; any failure message shows the whole run.</summary>
    public static async Task<Result> RunAsync(int expectedExitCode, params string[] arguments)
    {
        var result = await TryRunAsync(arguments);
        Assert.True(result.ExitCode == expectedExitCode, $"expected exit code {expectedExitCode}: {result}");
        AssertNoStackTrace(result);
        return result;
    }

    public static async Task<Result> TryRunAsync(string[] arguments, string? standardInputFile = null, TimeSpan? timeout = null)
    {
        var start = new ProcessStartInfo(s_executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = standardInputFile is not null,
            UseShellExecute = false,
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        // The apphost finds the runtime the tests run on, wherever it is installed.
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
        {
            start.Environment["DOTNET_ROOT"] = Path.GetDirectoryName(Environment.ProcessPath);
        }
        using var process = Process.Start(start)!;
        var stdout = new MemoryStream();
        Task readOut = process.StandardOutput.BaseStream.CopyToAsync(stdout);
        Task<string> readErr = process.StandardError.ReadToEndAsync();
        Task writeIn = Task.CompletedTask;
        if (standardInputFile is not null)
        {
            writeIn = Task.Run(async () =>
            {
                await using (var input = File.OpenRead(standardInputFile))
                {
                    await input.CopyToAsync(process.StandardInput.BaseStream);
                }
                process.StandardInput.Close();
            });
        }
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Assert.Fail($"cbd {string.Join(' ', arguments)} timed out");
        }
        await Task.WhenAll(readOut, readErr, writeIn);
        return new Result(string.Join(' ', arguments), process.ExitCode, stdout.ToArray(), await readErr);
    }

    /// <summary>Failures are one line each on stderr, never a .NET stack trace.</summary>
    public static void AssertNoStackTrace(Result result)
    {
        Assert.DoesNotContain("Unhandled exception", result.StandardError);
        Assert.DoesNotContain("   at ", result.StandardError);
    }

    /// <summary>Asserts a failure reported as it should be: the exit code and one line "cbd: ..." naming the problem.</summary>
    public static async Task<Result> FailsAsync(int exitCode, string expectedInMessage, params string[] arguments)
    {
        var result = await RunAsync(exitCode, arguments);
        string[] lines = result.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr: {result}");
        Assert.StartsWith("cbd: ", lines[0]);
        Assert.Contains(expectedInMessage, lines[0]);
        return result;
    }
}
