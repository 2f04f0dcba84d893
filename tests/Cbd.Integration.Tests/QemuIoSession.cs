namespace Cbd.Integration.Tests;

/// <summary>
/// An interactive qemu-io holding one NBD connection open: commands go in on its standard input and a command is
/// done (its request answered) when the next prompt appears. It runs with <c>-t writeback</c>: qemu-io's default,
/// writethrough, sets FUA on every write, and <c>qemu-io -c</c> also flushes when it closes the image; a session
/// sends a flush only when told to, so a test controls exactly which connection makes data durable.
/// </summary>
public sealed class QemuIoSession : IAsyncDisposable
{
    private const string Prompt = "qemu-io> ";
    private static readonly TimeSpan s_commandTimeout = TimeSpan.FromSeconds(60);

    private readonly ToolProcess _process;

    private QemuIoSession(ToolProcess process)
    {
        _process = process;
    }

    public ToolProcess Process => _process;

    public static async Task<QemuIoSession> OpenAsync(string uri)
    {
        var session = new QemuIoSession(ExternalTool.Start("qemu-io", ["-f", "raw", "-t", "writeback", uri], redirectInput: true));
        try
        {
            await session.WaitForPromptAsync(0, "qemu-io to connect");
            return session;
        }
        catch
        {
            await session.DisposeAsync();
            throw;
        }
    }

    /// <summary>Runs one command to completion and fails the test if qemu-io reports an error.</summary>
    public async Task<string> RunAsync(string command)
    {
        string output = await SendAsync(command);
        ExternalTool.AssertQemuIoSucceeded(output + _process.StandardError, $"'{command}': {_process}");
        return output;
    }

    /// <summary>Sends one command and returns its output once the next prompt is shown, without judging it.</summary>
    public async Task<string> SendAsync(string command)
    {
        int mark = _process.StandardOutputLength;
        await _process.StandardInput.WriteLineAsync(command);
        await _process.StandardInput.FlushAsync();
        return await WaitForPromptAsync(mark, $"'{command}'");
    }

    /// <summary>Ends the session with <c>quit</c> (qemu-io then flushes and disconnects) and checks it exits 0.</summary>
    public async Task QuitAsync()
    {
        await _process.StandardInput.WriteLineAsync("quit");
        await _process.StandardInput.FlushAsync();
        Assert.True(await _process.WaitForExitAsync(s_commandTimeout), $"qemu-io did not quit: {_process}");
        Assert.True(_process.ExitCode == 0, $"qemu-io failed: {_process}");
    }

    public ValueTask DisposeAsync() => _process.DisposeAsync();

    private async Task<string> WaitForPromptAsync(int mark, string what)
    {
        await Poll.UntilAsync(() => _process.HasExited || _process.StandardOutputSince(mark).Contains(Prompt, StringComparison.Ordinal),
            s_commandTimeout, () => $"{what}: {_process}");
        Assert.False(_process.HasExited && !_process.StandardOutputSince(mark).Contains(Prompt, StringComparison.Ordinal),
            $"qemu-io exited during {what}: {_process}");
        string output = _process.StandardOutputSince(mark);
        return output[..output.IndexOf(Prompt, StringComparison.Ordinal)];
    }
}
