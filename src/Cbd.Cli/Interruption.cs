using System.Runtime.InteropServices;

namespace Cbd.Cli;

/// <summary>
/// Turns the first SIGINT (Ctrl-C) or SIGTERM into a cancellation, so that a maintenance command can stop
/// where it is, leave its target in a state it can name, and say which. A second signal ends the process
/// at once, as it would without this.
/// </summary>
public sealed class Interruption : IDisposable
{
    private readonly CancellationTokenSource _cancel;
    private readonly PosixSignalRegistration _interrupt;
    private readonly PosixSignalRegistration _terminate;

    private Interruption(CancellationToken outer)
    {
        _cancel = CancellationTokenSource.CreateLinkedTokenSource(outer);
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Cancelled by the first SIGINT or SIGTERM, or by the outer token.</summary>
    public CancellationToken Token => _cancel.Token;

    /// <summary>Whether a signal (not only the outer token) asked to stop.</summary>
    public bool Signalled { get; private set; }

    public static Interruption Catch(CancellationToken outer) => new(outer);

    private void OnSignal(PosixSignalContext context)
    {
        if (Signalled)
        {
            // A second Ctrl-C: the user will not wait for a clean stop.
            return;
        }
        Signalled = true;
        context.Cancel = true;
        _cancel.Cancel();
    }

    public void Dispose()
    {
        _interrupt.Dispose();
        _terminate.Dispose();
        _cancel.Dispose();
    }
}
