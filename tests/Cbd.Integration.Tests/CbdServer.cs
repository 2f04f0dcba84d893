namespace Cbd.Integration.Tests;

/// <summary>
/// The real <c>cbd serve</c> executable as a child process on its own Unix socket. Ready once its
/// <c>--pid-file</c> names it, which <c>cbd serve</c> writes only after the socket accepts. Disposing SIGKILLs a
/// server the test did not stop itself.
/// </summary>
public sealed class CbdServer : IAsyncDisposable
{
    private static readonly TimeSpan s_startTimeout = TimeSpan.FromSeconds(30);

    // Longer than the server's 30 s grace period for requests in flight, so a slow but correct shutdown is not failed.
    private static readonly TimeSpan s_stopTimeout = TimeSpan.FromSeconds(45);

    private readonly ToolProcess _process;

    private CbdServer(ToolProcess process, string image, string socketPath, string pidFile)
    {
        _process = process;
        Image = image;
        SocketPath = socketPath;
        PidFile = pidFile;
    }

    /// <summary>
    /// The executable under test: <c>CBD_EXECUTABLE</c> when set (scripts/test sets it to the native build that
    /// scripts/serve and bench/run use), else the JIT apphost that the project reference to src/Cbd.Cli builds and
    /// copies next to the test assembly.
    /// </summary>
    public static string Executable
    {
        get
        {
            string? chosen = Environment.GetEnvironmentVariable("CBD_EXECUTABLE");
            string path = string.IsNullOrEmpty(chosen) ? Path.Combine(AppContext.BaseDirectory, "cbd") : chosen;
            Assert.True(File.Exists(path), string.IsNullOrEmpty(chosen)
                ? $"{path} is missing: build src/Cbd.Cli (the test project references it)."
                : $"CBD_EXECUTABLE names {path}, which does not exist.");
            return path;
        }
    }

    public string Image { get; }
    public string SocketPath { get; }
    public string PidFile { get; }
    public int Pid => _process.Id;
    public bool HasExited => _process.HasExited;

    /// <summary>The default export, as libnbd, qemu and fio take it.</summary>
    public string Uri => $"nbd+unix:///?socket={SocketPath}";

    public string StandardOutput => _process.StandardOutput;
    public string StandardError => _process.StandardError;

    /// <summary>Waits until stdout holds <paramref name="text"/>: the pid file comes after the banner, but the pipe may still hold it.</summary>
    public Task WaitForStandardOutputAsync(string text)
        => Poll.UntilAsync(() => StandardOutput.Contains(text, StringComparison.Ordinal), TimeSpan.FromSeconds(10), () => $"'{text}' on stdout: {_process}");

    public string Output => $"stdout:\n{_process.StandardOutput}\nstderr:\n{_process.StandardError}";

    /// <summary>Creates <paramref name="image"/> with a physical size of <paramref name="size"/> (e.g. "64M") and serves it.</summary>
    public static Task<CbdServer> CreateAsync(string image, string socketPath, string size, params string[] options)
        => StartAsync(image, socketPath, ["--create", "--size", size, .. options]);

    public static Task<CbdServer> StartAsync(string image, string socketPath, params string[] options)
        => StartUnderUmaskAsync(umask: null, image, socketPath, options);

    /// <summary>Serves <paramref name="image"/> from a process started under <paramref name="umask"/> (octal, e.g. "000"), or the test's own when null.</summary>
    public static async Task<CbdServer> StartUnderUmaskAsync(string? umask, string image, string socketPath, params string[] options)
    {
        string pidFile = socketPath + ".pid";
        // A server killed earlier leaves its pid file behind; only a file naming the new process means ready.
        File.Delete(pidFile);
        string[] serve = ["serve", image, "--socket", socketPath, "--pid-file", pidFile, .. options];
        // The shell sets the umask and then becomes cbd (exec), so the process id is cbd's.
        var process = umask is null
            ? ToolProcess.Start(Executable, serve)
            : ToolProcess.Start("/bin/sh", ["-c", $"umask {umask} && exec \"$0\" \"$@\"", Executable, .. serve]);
        var server = new CbdServer(process, image, socketPath, pidFile);
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!server.PidFileNamesProcess())
            {
                if (process.HasExited)
                {
                    await process.WaitForExitAsync(TimeSpan.FromSeconds(5));
                    Assert.Fail($"cbd serve exited before accepting connections: {process}");
                }
                if (clock.Elapsed > s_startTimeout)
                {
                    Assert.Fail($"cbd serve did not write its pid file within {s_startTimeout.TotalSeconds} s: {process}");
                }
                await Task.Delay(10);
            }
            Assert.True(File.Exists(socketPath), $"the pid file is there but the socket {socketPath} is not: {process}");
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// SIGTERM, then asserts what <c>cbd serve</c> promises: exit code 0 once requests in flight are done and the image
    /// is closed clean, with the socket and the pid file removed.
    /// </summary>
    public async Task StopAsync()
    {
        _process.Signal(Posix.SigTerm);
        await AssertStoppedAsync();
    }

    /// <summary>Waits for the exit a SIGTERM already sent asked for, and asserts it was clean (see <see cref="StopAsync"/>).</summary>
    public async Task AssertStoppedAsync()
    {
        Assert.True(await _process.WaitForExitAsync(s_stopTimeout), $"cbd serve still running {s_stopTimeout.TotalSeconds} s after SIGTERM: {_process}");
        Assert.True(_process.ExitCode == 0, $"cbd serve exited with {_process.ExitCode} after SIGTERM: {_process}");
        Assert.False(File.Exists(SocketPath), $"cbd serve left its socket {SocketPath} behind: {_process}");
        Assert.False(File.Exists(PidFile), $"cbd serve left its pid file {PidFile} behind: {_process}");
    }

    /// <summary>SIGKILL: the crash a clean shutdown is not, leaving the image marked as open.</summary>
    public async Task KillAsync()
    {
        _process.Signal(Posix.SigKill);
        Assert.True(await _process.WaitForExitAsync(TimeSpan.FromSeconds(10)), $"cbd serve survived SIGKILL: {_process}");
    }

    public ValueTask DisposeAsync() => _process.DisposeAsync();

    private bool PidFileNamesProcess()
    {
        try
        {
            return int.TryParse(File.ReadAllText(PidFile).Trim(), out int pid) && pid == _process.Id;
        }
        catch (IOException)
        {
            return false;
        }
    }
}
