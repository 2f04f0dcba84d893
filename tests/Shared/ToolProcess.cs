using System.Diagnostics;
using System.Text;

namespace Cbd.TestTools;

/// <summary>
/// A child process running in the background with its output captured as it arrives (character by character,
/// so that prompts without a newline are seen). Disposing kills it if it is still running.
/// </summary>
public sealed class ToolProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly Task _readers;

    private ToolProcess(Process process, string commandLine)
    {
        _process = process;
        CommandLine = commandLine;
        _readers = Task.WhenAll(PumpAsync(process.StandardOutput, _stdout), PumpAsync(process.StandardError, _stderr));
    }

    public string CommandLine { get; }
    public int Id => _process.Id;
    public bool HasExited => _process.HasExited;
    public int ExitCode => _process.ExitCode;
    public StreamWriter StandardInput => _process.StandardInput;

    public string StandardOutput
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToString();
            }
        }
    }

    public string StandardError
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    public int StandardOutputLength
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.Length;
            }
        }
    }

    public static ToolProcess Start(string executable, IEnumerable<string> arguments, bool redirectInput = false)
    {
        var start = new ProcessStartInfo(executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = redirectInput,
            UseShellExecute = false,
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        var process = Process.Start(start) ?? throw new InvalidOperationException($"{executable} did not start");
        return new ToolProcess(process, $"{executable} {string.Join(' ', start.ArgumentList)}");
    }

    public string StandardOutputSince(int mark)
    {
        lock (_stdout)
        {
            return _stdout.ToString(mark, _stdout.Length - mark);
        }
    }

    public void Signal(int signal) => Posix.Signal(_process.Id, signal);

    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
    }

    /// <summary>Waits for the exit and the end of its output; false if it is still running after <paramref name="timeout"/>.</summary>
    public async Task<bool> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        await _readers.WaitAsync(TimeSpan.FromSeconds(10));
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            Kill();
            await WaitForExitAsync(TimeSpan.FromSeconds(10));
        }
        _process.Dispose();
    }

    public override string ToString()
        => $"{CommandLine}\n{(_process.HasExited ? $"exit code {_process.ExitCode}" : "still running")}\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";

    private static async Task PumpAsync(StreamReader reader, StringBuilder sink)
    {
        char[] buffer = new char[8192];
        int read;
        while ((read = await reader.ReadAsync(buffer)) > 0)
        {
            lock (sink)
            {
                sink.Append(buffer, 0, read);
            }
        }
    }
}
