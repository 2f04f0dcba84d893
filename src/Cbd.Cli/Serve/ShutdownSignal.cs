using System.Runtime.InteropServices;

namespace Cbd.Cli.Serve;

/// <summary>
/// Completes on the first SIGINT or SIGTERM. Registered before the image is opened and kept until it is closed, so a
/// signal at any moment of start-up or shutdown ends in a clean close rather than killing the process with the image
/// open. Later SIGTERMs are absorbed (a service manager may repeat its request); a second SIGINT, a user pressing
/// Ctrl-C again, takes its default action and ends the process at once, leaving the image to be recovered when next
/// opened.
/// </summary>
public sealed class ShutdownSignal : IDisposable
{
    private readonly TaskCompletionSource<PosixSignal> _signalled = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly PosixSignalRegistration _interrupt;
    private readonly PosixSignalRegistration _terminate;

    public ShutdownSignal()
    {
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle);
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle);
    }

    /// <summary>Completes with the first signal received.</summary>
    public Task<PosixSignal> WaitAsync() => _signalled.Task;

    public bool IsSignalled => _signalled.Task.IsCompleted;

    private void Handle(PosixSignalContext context)
    {
        bool first = _signalled.TrySetResult(context.Signal);
        context.Cancel = first || context.Signal == PosixSignal.SIGTERM;
    }

    public void Dispose()
    {
        _interrupt.Dispose();
        // Once shutting down, a repeated SIGTERM must find a handler until the process has exited: unregistered
        // here, one arriving between the image's close and the exit would end the process with status 143.
        if (!IsSignalled)
        {
            _terminate.Dispose();
        }
    }
}
