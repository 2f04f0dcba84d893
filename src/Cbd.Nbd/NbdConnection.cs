using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>
/// One client connection: the handshake, then a reader loop that parses requests and runs each on its own
/// task (a write starts on the reader's thread, until it first waits). Replies go out as requests complete, in
/// any order, each written whole under <see cref="_sendLock"/>.
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
    private readonly Stream _input;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly InFlightLimiter _limiter;
    private readonly PayloadPool _pool;
    private readonly int _receivePiece;
    private readonly NbdMetrics _metrics;

    /// <summary>Cancelled to stop reading: on server shutdown or once a send has failed.</summary>
    private readonly CancellationTokenSource _stopReading = new();

    /// <summary>Cancelled only when a shutdown's grace period ran out: aborts device calls still running.</summary>
    private readonly CancellationTokenSource _abort = new();

    // Used only while holding _sendLock: room for the headers of several reply chunks.
    private readonly byte[] _sendScratch = new byte[4096];
    private readonly List<ArraySegment<byte>> _sendSegments = new(2);

    private volatile bool _broken;

    public NbdConnection(Socket socket, NbdExport export, NbdServerOptions options, PayloadPool pool, int receivePiece, NbdMetrics metrics)
    {
        _socket = socket;
        _export = export;
        _options = options;
        _peer = socket.RemoteEndPoint?.ToString() is { Length: > 0 } remote ? remote : "unix client";
        // Reads go through a buffer so that small requests cost one receive call for many; replies are
        // sent straight on the socket. A socket may be read by one thread and written by another at once.
        _input = new BufferedStream(new NetworkStream(socket, ownsSocket: false), ReceiveBufferSize);
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
            if (await NegotiateWithinTimeoutAsync(stop).ConfigureAwait(false))
            {
                await TransmitAsync(stop).ConfigureAwait(false);
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
        Close();
    }

    /// <summary>
    /// Runs the handshake within <see cref="NbdServerOptions.HandshakeTimeout"/>. When it runs out the socket is
    /// closed, which also ends a send blocked on a client that does not read its option replies.
    /// </summary>
    private async Task<bool> NegotiateWithinTimeoutAsync(CancellationToken stop)
    {
        using var handshake = CancellationTokenSource.CreateLinkedTokenSource(stop);
        handshake.CancelAfter(_options.HandshakeTimeout);
        bool timedOut() => handshake.IsCancellationRequested && !stop.IsCancellationRequested;
        bool transmit;
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
                transmit = await NegotiateAsync(handshake.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (IsConnectionEnd(ex) && timedOut())
            {
                transmit = false;
            }
        }
        return transmit && !timedOut();
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

    private void MarkBroken()
    {
        _broken = true;
        CancelQuietly(_stopReading);
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

    private static bool IsConnectionEnd(Exception ex)
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

    /// <summary>
    /// Sends <paramref name="first"/> then <paramref name="second"/>, in one gather write when the second is an
    /// array (a small payload); the caller holds <see cref="_sendLock"/>.
    /// </summary>
    private async ValueTask SendLockedAsync(ArraySegment<byte> first, ReadOnlyMemory<byte> second = default)
    {
        if (second.IsEmpty)
        {
            await SendAllAsync(first).ConfigureAwait(false);
            return;
        }
        if (!MemoryMarshal.TryGetArray(second, out ArraySegment<byte> secondArray))
        {
            // A mapped piece of at least 128 KiB: one more send call is nothing beside it.
            await SendAllAsync(first).ConfigureAwait(false);
            await SendAllAsync(second).ConfigureAwait(false);
            return;
        }
        _sendSegments.Clear();
        _sendSegments.Add(first);
        _sendSegments.Add(secondArray);
        int sent = await _socket.SendAsync(_sendSegments, SocketFlags.None).ConfigureAwait(false);
        if (sent < first.Count)
        {
            await SendAllAsync(first[sent..]).ConfigureAwait(false);
            sent = first.Count;
        }
        await SendAllAsync(secondArray[(sent - first.Count)..]).ConfigureAwait(false);
    }

    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            int sent = await _socket.SendAsync(data, SocketFlags.None, _abort.Token).ConfigureAwait(false);
            data = data[sent..];
        }
    }

    /// <summary>Takes the send lock; false, without it, when the connection is broken or being aborted.</summary>
    private async ValueTask<bool> TryTakeSendLockAsync()
    {
        if (_broken)
        {
            return false;
        }
        try
        {
            await _sendLock.WaitAsync(_abort.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            MarkBroken();
            return false;
        }
    }

    /// <summary>
    /// Takes the send lock and runs <paramref name="send"/>. Never throws: a failed send means the client is
    /// gone or stuck, so the connection is marked broken and stops reading.
    /// </summary>
    private async ValueTask SendGuardedAsync<TState>(TState state, Func<NbdConnection, TState, ValueTask> send)
    {
        if (!await TryTakeSendLockAsync().ConfigureAwait(false))
        {
            return;
        }
        try
        {
            if (!_broken)
            {
                await send(this, state).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (IsConnectionEnd(ex))
        {
            Log($"{_peer}: sending a reply failed, closing the connection: {ex.Message}");
            MarkBroken();
        }
        finally
        {
            _sendLock.Release();
        }
    }
}
