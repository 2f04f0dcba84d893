using System.Net;
using System.Net.Sockets;
using System.Numerics;
using Cbd.Core.Engine;

namespace Cbd.Nbd;

/// <summary>
/// Serves one <see cref="IBlockDevice"/> as one NBD export over Unix domain and TCP sockets. Every connection
/// shares the device; each runs many requests at once and replies as they complete. See docs/NBD.md for the
/// protocol subset and limits.
/// </summary>
/// <remarks>
/// The server never flushes or disposes the device: after <see cref="StopAsync"/> returns, the caller does.
/// </remarks>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly NbdExport _export;
    private readonly NbdServerOptions _options;
    private readonly PayloadPool _payloadPool;
    private readonly Lock _lock = new();
    private readonly List<Listener> _listeners = [];
    private readonly Dictionary<NbdConnection, Task> _connections = [];
    private bool _stopping;
    private long _refusedSinceLog;
    private long _lastRefusalLog = Environment.TickCount64 - 1000;

    private sealed record Listener(Socket Socket, EndPoint EndPoint, string? SocketPath, Task AcceptLoop);

    /// <param name="device">The device to serve; the server does not own it.</param>
    /// <param name="exportName">The export's name. Clients asking for the empty (default) name get this export too.</param>
    /// <param name="readOnly">Refuse writes even when the device is writable.</param>
    /// <param name="description">Shown to clients that ask (NBD_INFO_DESCRIPTION, NBD_OPT_LIST).</param>
    /// <param name="options">Limits; null for the defaults.</param>
    /// <exception cref="ArgumentException">A name or description that is not a valid NBD string (NUL, over 4096 bytes);
    /// a limit in <paramref name="options"/> that is not positive, or a server budget under 64 KiB; TLS without credentials.</exception>
    public NbdServer(IBlockDevice device, string exportName = "", bool readOnly = false, string? description = null, NbdServerOptions? options = null)
    {
        _export = new NbdExport(device, exportName, readOnly, description);
        _options = options ?? new NbdServerOptions();
        if (_options.MaxInFlightRequests < 1 || _options.MaxInFlightBytes < 1 || _options.MaxConnections < 1)
        {
            ThrowHelper.ThrowArgument(nameof(options), "In-flight and connection limits must be positive.");
        }
        if (_options.MaxServerInFlightBytes < PayloadPool.MinPieceSize)
        {
            ThrowHelper.ThrowArgument(nameof(options), $"The server's payload budget must be at least {PayloadPool.MinPieceSize} bytes; got {_options.MaxServerInFlightBytes}.");
        }
        if (_options.HandshakeTimeout <= TimeSpan.Zero && _options.HandshakeTimeout != Timeout.InfiniteTimeSpan)
        {
            ThrowHelper.ThrowArgument(nameof(options), "The handshake timeout must be positive.");
        }
        if (_options.TlsMode != NbdTlsMode.Off && _options.TlsCredentials is null)
        {
            ThrowHelper.ThrowArgument(nameof(options), $"TLS mode {_options.TlsMode} needs credentials.");
        }
        // A WRITE is received in pieces of which one per connection fits in the budget, so connections stalled
        // halfway through their data, each holding its piece, still leave one to every other connection. A READ
        // goes out in pieces of up to 1 MiB: one device call per 256 KiB instead made 1 MiB reads a quarter
        // slower (fio, iodepth 16), as the device loads the lblks of one call in parallel.
        long share = Math.Clamp(_options.MaxServerInFlightBytes / _options.MaxConnections, PayloadPool.MinPieceSize, PayloadPool.MaxPieceSize);
        ReceivePieceSize = 1 << BitOperations.Log2((ulong)share);
        long largest = Math.Min(_options.MaxServerInFlightBytes, PayloadPool.MaxPieceSize);
        _payloadPool = new PayloadPool(_options.MaxServerInFlightBytes, 1 << BitOperations.Log2((ulong)largest));
    }

    public string ExportName => _export.Name;

    /// <summary>The pieces a WRITE larger than one is received in: a share of the budget per connection.</summary>
    internal int ReceivePieceSize { get; }

    /// <summary>Connections and requests served so far, for monitoring.</summary>
    public NbdMetrics Metrics { get; } = new();

    /// <summary>Connections being served now.</summary>
    internal int ConnectionCount
    {
        get
        {
            lock (_lock)
            {
                return _connections.Count;
            }
        }
    }

    /// <summary>
    /// Readers waiting for a connection's in-flight limits, plus requests waiting for payload budget: once the clients
    /// have sent everything, a test waits for this to know the server has admitted all it ever will.
    /// </summary>
    internal int WaitingForRoom
    {
        get
        {
            lock (_lock)
            {
                return _connections.Keys.Count(c => c.IsWaitingForRoom) + _payloadPool.Waiting;
            }
        }
    }

    /// <summary>The payload buffers of every connection (its counters are what tests check the budget with).</summary>
    internal PayloadPool PayloadPool => _payloadPool;

    /// <summary>True when clients see a read-only export (asked for, or the device is read-only).</summary>
    public bool IsReadOnly => _export.IsReadOnly;

    /// <summary>The endpoints listened on, with TCP port 0 resolved to the port actually bound.</summary>
    public IReadOnlyList<EndPoint> EndPoints
    {
        get
        {
            lock (_lock)
            {
                return _listeners.Select(l => l.EndPoint).ToArray();
            }
        }
    }

    /// <summary>
    /// Starts listening on <paramref name="endPoint"/>: a <see cref="UnixDomainSocketEndPoint"/> or an
    /// <see cref="IPEndPoint"/>. Connections are accepted once this returns. May be called once per endpoint.
    /// </summary>
    /// <returns>The bound endpoint.</returns>
    /// <exception cref="IOException">The Unix socket path is served by a live process, or holds a file that is not a stale socket;
    /// or its group or mode (<see cref="NbdServerOptions.UnixSocketMode"/>) cannot be set.</exception>
    /// <exception cref="SocketException">The endpoint cannot be bound.</exception>
    public async Task<EndPoint> StartAsync(EndPoint endPoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        lock (_lock)
        {
            if (_stopping)
            {
                ThrowHelper.ThrowInvalidOperation("The server is stopping.");
            }
        }

        string? socketPath = null;
        Socket socket;
        if (endPoint is UnixDomainSocketEndPoint unix)
        {
            socketPath = unix.ToString();
            await RemoveStaleSocketAsync(socketPath, cancellationToken).ConfigureAwait(false);
            socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        }
        else
        {
            socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        }
        try
        {
            socket.Bind(endPoint);
            if (socketPath is not null)
            {
                // bind creates the file with the umask's mode, possibly 0777. A socket accepts no connection before
                // listen (connect gets ECONNREFUSED) and a socket file cannot be opened, so owner and mode set here,
                // between the two, are the ones every client meets: there is no moment when a wider mode lets one in.
                UnixSocketFile.SetAccess(socketPath, _options.UnixSocketMode, _options.UnixSocketGroupId);
            }
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return AddListener(socket, socket.LocalEndPoint ?? endPoint, socketPath);
    }

    /// <summary>
    /// Serves a socket that is already bound and listening, such as one passed by systemd socket activation. The
    /// server owns it from now on and closes it on <see cref="StopAsync"/>, but never deletes its Unix socket file:
    /// whoever created the file removes it. (Disposing a <see cref="Socket"/> that this process bound with
    /// <see cref="Socket.Bind"/> makes .NET unlink the file; a socket wrapped from a passed descriptor has no such tie.)
    /// </summary>
    /// <returns>The socket's local endpoint.</returns>
    /// <exception cref="ArgumentException">The socket is not a listening stream socket.</exception>
    public EndPoint Start(Socket listening)
    {
        ArgumentNullException.ThrowIfNull(listening);
        EndPoint? bound = listening.LocalEndPoint;
        if (bound is null || listening.SocketType != SocketType.Stream
            || (int)listening.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.AcceptConnection)! == 0)
        {
            ThrowHelper.ThrowArgument(nameof(listening), "The socket is not a bound, listening stream socket.");
        }
        return AddListener(listening, bound, socketPath: null);
    }

    private EndPoint AddListener(Socket socket, EndPoint bound, string? socketPath)
    {
        lock (_lock)
        {
            if (_stopping)
            {
                socket.Dispose();
                ThrowHelper.ThrowInvalidOperation("The server is stopping.");
            }
            var listener = new Listener(socket, bound, socketPath, Task.Run(() => AcceptLoopAsync(socket)));
            _listeners.Add(listener);
        }
        string tls = _options.TlsMode switch
        {
            NbdTlsMode.On => " (TLS offered)",
            NbdTlsMode.Require => _options.TlsCredentials!.VerifyPeer ? " (TLS required, client certificates verified)" : " (TLS required)",
            _ => "",
        };
        _options.Log?.Invoke($"listening on {Describe(bound)}{tls}");
        return bound;
    }

    /// <summary>
    /// Stops accepting, stops reading requests, lets the requests in flight finish and their replies go out,
    /// then closes every connection. After <see cref="NbdServerOptions.ShutdownTimeout"/> (or when
    /// <paramref name="cancellationToken"/> fires) device calls still running are cancelled and connections are
    /// closed regardless. Removes the Unix socket files the server created.
    /// </summary>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        Listener[] listeners;
        lock (_lock)
        {
            _stopping = true;
            listeners = [.. _listeners];
            _listeners.Clear();
        }
        foreach (Listener listener in listeners)
        {
            listener.Socket.Dispose();
            if (listener.SocketPath is not null)
            {
                TryDelete(listener.SocketPath);
            }
        }
        await Task.WhenAll(listeners.Select(l => l.AcceptLoop)).ConfigureAwait(false);

        KeyValuePair<NbdConnection, Task>[] connections;
        lock (_lock)
        {
            connections = [.. _connections];
        }
        foreach (var (connection, _) in connections)
        {
            connection.BeginShutdown();
        }
        Task all = Task.WhenAll(connections.Select(c => c.Value));
        try
        {
            await all.WaitAsync(_options.ShutdownTimeout, cancellationToken).ConfigureAwait(false);
            _payloadPool.Dispose();
            return;
        }
        catch (Exception ex) when (ex is TimeoutException or OperationCanceledException)
        {
            _options.Log?.Invoke("requests still in flight after the shutdown grace period; aborting them");
        }
        foreach (var (connection, _) in connections)
        {
            connection.Abort();
        }
        // Aborted device calls end promptly when they honour cancellation; the wait stays bounded if not.
        await Task.WhenAny(all, Task.Delay(_options.ShutdownTimeout, CancellationToken.None)).ConfigureAwait(false);
        if (all.IsCompleted)
        {
            _payloadPool.Dispose();
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is ObjectDisposedException or SocketException { SocketErrorCode: SocketError.OperationAborted or SocketError.Interrupted })
            {
                return;
            }
            catch (SocketException ex)
            {
                // A failure of one accept (a connection reset while queued, a file descriptor limit) must not end
                // the server; pause briefly so that a persistent error does not spin.
                _options.Log?.Invoke($"accept failed: {ex.Message}");
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }

            if (client.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
            {
                // The spec asks both ends to disable Nagle: replies are small and latency-bound.
                client.NoDelay = true;
            }
            var started = new TaskCompletionSource();
            NbdConnection connection;
            Task run;
            lock (_lock)
            {
                if (_stopping)
                {
                    client.Dispose();
                    continue;
                }
                if (_connections.Count >= _options.MaxConnections)
                {
                    // Closed at once rather than queued: a queue would hold what the limit is there to bound. Logged
                    // first, so that the line is there by the time the client sees its connection closed.
                    LogRefusalLocked();
                    Metrics.ConnectionRefused();
                    client.Dispose();
                    continue;
                }
                connection = new NbdConnection(client, _export, _options, _payloadPool, ReceivePieceSize, Metrics);
                // The connection starts only once it is registered, so that StopAsync, which takes the same
                // lock, either sees it and shuts it down or has already closed the listener it came from.
                run = RunConnectionAsync(connection, started.Task);
                _connections.Add(connection, run);
                Metrics.ConnectionOpened();
            }
            started.SetResult();
        }
    }

    /// <summary>One line a second at most, counting the connections refused since the last, however hard clients hammer.</summary>
    private void LogRefusalLocked()
    {
        _refusedSinceLog++;
        long now = Environment.TickCount64;
        if (now - _lastRefusalLog < 1000)
        {
            return;
        }
        _options.Log?.Invoke(_refusedSinceLog == 1
            ? $"connection refused: already serving the maximum of {_options.MaxConnections} connections"
            : $"{_refusedSinceLog} connections refused: already serving the maximum of {_options.MaxConnections} connections");
        _refusedSinceLog = 0;
        _lastRefusalLog = now;
    }

    private async Task RunConnectionAsync(NbdConnection connection, Task registered)
    {
        await registered.ConfigureAwait(false);
        await Task.Yield();
        await connection.RunAsync().ConfigureAwait(false);
        lock (_lock)
        {
            _connections.Remove(connection);
        }
        Metrics.ConnectionClosed();
    }

    /// <summary>
    /// Deletes a socket file left by a server that is gone, so that bind succeeds. A path another process
    /// still accepts on is refused, and so is a non-empty file: a socket file always has size 0, so a
    /// regular file with content is never deleted by mistake.
    /// </summary>
    private static async Task RemoveStaleSocketAsync(string path, CancellationToken cancellationToken)
    {
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            return;
        }
        if (info.Length != 0)
        {
            ThrowHelper.ThrowIO($"{path} exists and is not a socket; refusing to replace it.");
        }
        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            try
            {
                await probe.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
                ThrowHelper.ThrowIO($"{path} is in use by a running server.");
            }
            catch (SocketException)
            {
                // Nobody is listening: the file is stale.
            }
        }
        File.Delete(path);
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    private static string Describe(EndPoint endPoint) => endPoint is UnixDomainSocketEndPoint ? $"unix:{endPoint}" : endPoint.ToString() ?? "";
}
