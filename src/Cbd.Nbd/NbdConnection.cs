using System.Buffers;
using System.Net.Security;
using System.Net.Sockets;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>
/// One client connection: the handshake, then a reader loop that parses requests and runs each on its own
/// task (a write starts on the reader's thread, until it first waits). Replies go out as requests complete, in
/// any order, each written whole by the <see cref="ReplyWriter"/>.
/// </summary>
/// <remarks>
/// Invariants: <see cref="RunAsync"/> never throws; every request admitted by <see cref="_limiter"/> is
/// released exactly once, after its reply was sent or the connection was found broken; a protocol
/// violation or a failed send ends only this connection.
/// </remarks>
internal sealed partial class NbdConnection
{
    private const int ReceiveBufferSize = 64 << 10;

    private readonly Socket _socket;
    private readonly NbdExport _export;
    private readonly NbdServerOptions _options;
    private readonly string _peer;
    private readonly ReplyWriter _writer;
    private readonly InFlightLimiter _limiter;
    private readonly PayloadPool _pool;
    private readonly int _receivePiece;
    private readonly NbdMetrics _metrics;

    /// <summary>Cancelled to stop reading: on server shutdown or once a send has failed.</summary>
    private readonly CancellationTokenSource _stopReading = new();

    /// <summary>Cancelled only when a shutdown's grace period ran out: aborts device calls still running.</summary>
    private readonly CancellationTokenSource _abort = new();

    /// <summary>
    /// What requests are read from. The handshake reads the socket unbuffered, so that nothing past an option is
    /// read ahead of a switch to TLS; the transmission phase reads through a buffer (<see cref="TransmitAsync"/>).
    /// </summary>
    private Stream _input;

    /// <summary>The buffer requests are read through in the transmission phase (<see cref="_input"/> then).</summary>
    private ReceiveBuffer? _received;

    /// <summary>The TLS session after NBD_OPT_STARTTLS, over the socket; disposed when the connection ends.</summary>
    private SslStream? _tls;

    /// <summary>What option haggling agreed; set once, as the transmission phase starts.</summary>
    private Negotiated? _negotiated;

    /// <summary>What requests are checked against, from <see cref="_negotiated"/> and the export.</summary>
    private TransmissionState _transmissionState;

    public NbdConnection(Socket socket, NbdExport export, NbdServerOptions options, PayloadPool pool, int receivePiece, NbdMetrics metrics)
    {
        _socket = socket;
        _export = export;
        _options = options;
        _peer = socket.RemoteEndPoint?.ToString() is { Length: > 0 } remote ? remote : "unix client";
        _input = new NetworkStream(socket, ownsSocket: false);
        // Replies are sent straight on the socket. A socket may be read by one thread and written by another at once.
        _writer = new ReplyWriter(new SocketReplyTransport(socket), _abort.Token, line => Log($"{_peer}: {line}"), () => CancelQuietly(_stopReading));
        _pool = pool;
        _receivePiece = receivePiece;
        _metrics = metrics;
        _limiter = new InFlightLimiter(options.MaxInFlightRequests, options.MaxInFlightBytes);
    }

    /// <summary>Serves the connection until the client leaves, breaks the protocol, or the server stops.</summary>
    public async Task RunAsync()
    {
        CancellationToken stop = _stopReading.Token;
        try
        {
            if (await NegotiateWithinTimeoutAsync(stop).ConfigureAwait(false) is { } negotiated)
            {
                await TransmitAsync(negotiated, stop).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (IsConnectionEnd(ex))
        {
            if (!stop.IsCancellationRequested)
            {
                Log($"{_peer}: connection ended: {ex.Message}");
            }
        }
        catch (Exception ex)
        {
            Log($"{_peer}: unexpected failure, closing the connection: {ex}");
        }

        try
        {
            // The spec has the server finish outstanding requests before it closes, for NBD_CMD_DISC and on
            // shutdown alike; their replies are still sent if the socket is alive.
            await _limiter.WaitForIdleAsync(_abort.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        await CloseTlsAsync().ConfigureAwait(false);
        Close();
        _tls?.Dispose();
    }

    /// <summary>
    /// Ends the TLS session with a close_notify before the socket closes, as the spec asks on NBD_CMD_DISC; skipped
    /// when the connection is broken or aborted, since nothing more can be sent then.
    /// </summary>
    private async ValueTask CloseTlsAsync()
    {
        if (_tls is null || !_tls.IsAuthenticated || _writer.IsBroken || _abort.IsCancellationRequested)
        {
            return;
        }
        try
        {
            await _tls.ShutdownAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsConnectionEnd(ex) || ex is InvalidOperationException)
        {
        }
    }

    /// <summary>
    /// Runs the handshake within <see cref="NbdServerOptions.HandshakeTimeout"/>. When it runs out the socket is
    /// closed, which also ends a send blocked on a client that does not read its option replies.
    /// </summary>
    /// <returns>What was agreed, or null when the connection ends without entering transmission.</returns>
    private async Task<Negotiated?> NegotiateWithinTimeoutAsync(CancellationToken stop)
    {
        using var handshake = CancellationTokenSource.CreateLinkedTokenSource(stop);
        handshake.CancelAfter(_options.HandshakeTimeout);
        bool timedOut() => handshake.IsCancellationRequested && !stop.IsCancellationRequested;
        Negotiated? negotiated;
        // Logged before the socket closes, so that the line is there by the time the client sees the close.
        using (handshake.Token.Register(() =>
        {
            if (timedOut())
            {
                Log($"{_peer}: handshake not finished within {_options.HandshakeTimeout.TotalSeconds:0.###} s, closing");
            }
            Close();
        }))
        {
            try
            {
                negotiated = await NegotiateAsync(handshake.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsConnectionEnd(ex) && timedOut())
            {
                negotiated = null;
            }
        }
        return timedOut() ? null : negotiated;
    }

    /// <summary>True while the reader waits for this connection's in-flight limits to make room for a request.</summary>
    internal bool IsWaitingForRoom => _limiter.IsReaderWaiting;

    /// <summary>Stops reading new requests; the ones in flight finish and <see cref="RunAsync"/> then returns.</summary>
    public void BeginShutdown() => CancelQuietly(_stopReading);

    /// <summary>Cancels device calls still running and closes the socket, failing any send in progress.</summary>
    public void Abort()
    {
        CancelQuietly(_stopReading);
        CancelQuietly(_abort);
        Close();
    }

    private void Close()
    {
        try
        {
            if (_socket.Connected)
            {
                _socket.Shutdown(SocketShutdown.Both);
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
        _socket.Dispose();
    }

    private static void CancelQuietly(CancellationTokenSource source)
    {
        try
        {
            source.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    internal static bool IsConnectionEnd(Exception ex)
        => ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException;

    private void Log(string message) => _options.Log?.Invoke(message);

    /// <summary>Reads and drops <paramref name="length"/> bytes, keeping the stream in step after refusing a request.</summary>
    private async ValueTask SkipAsync(long length, CancellationToken cancellationToken)
    {
        byte[] scratch = ArrayPool<byte>.Shared.Rent((int)Math.Min(length, ReceiveBufferSize));
        try
        {
            while (length > 0)
            {
                int chunk = (int)Math.Min(length, scratch.Length);
                await _input.ReadExactlyAsync(scratch.AsMemory(0, chunk), cancellationToken).ConfigureAwait(false);
                length -= chunk;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }
}
