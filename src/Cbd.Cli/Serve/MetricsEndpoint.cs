using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Cbd.Cli.Serve;

/// <summary>
/// <c>--metrics</c>: answers <c>GET /metrics</c> over HTTP/1.1 with <see cref="MetricsText"/>, one request per
/// connection, any other path with 404. A plain socket rather than HttpListener, whose prefixes can neither take
/// port 0 nor report a taken port as such, or ASP.NET, a web stack for one page. Nothing a scraper does (a stalled or
/// oversized request, a flood of connections) or a failure to render reaches the NBD server: each connection has
/// <see cref="RequestTimeout"/>, at most <see cref="MaxConnections"/> are served at once, and every failure ends
/// only its own connection.
/// </summary>
public sealed class MetricsEndpoint : IAsyncDisposable
{
    public static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(10);
    public const int MaxConnections = 8;

    /// <summary>A request line and headers fit in this many bytes; Prometheus and curl send a few hundred.</summary>
    private const int MaxRequestBytes = 8 << 10;

    private readonly Socket _listener;
    private readonly Func<string> _render;
    private readonly Action<string> _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly Lock _lock = new();
    private readonly HashSet<Task> _connections = [];
    private readonly Task _acceptLoop;

    private MetricsEndpoint(Socket listener, Func<string> render, Action<string> log)
    {
        _listener = listener;
        _render = render;
        _log = log;
        EndPoint = (IPEndPoint)listener.LocalEndPoint!;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The address bound, with port 0 replaced by the port the system chose.</summary>
    public IPEndPoint EndPoint { get; }

    public string Url => EndPoint.AddressFamily == AddressFamily.InterNetworkV6
        ? $"http://[{EndPoint.Address}]:{EndPoint.Port}/metrics"
        : $"http://{EndPoint.Address}:{EndPoint.Port}/metrics";

    /// <summary>Listens on <paramref name="address"/>; <paramref name="render"/> is called for each scrape, on a thread of the pool.</summary>
    /// <exception cref="CliException">The address cannot be resolved or bound; the message names it and says why.</exception>
    public static async Task<MetricsEndpoint> StartAsync(ListenAddress address, Func<string> render, Action<string> log, CancellationToken cancellationToken)
    {
        IPEndPoint endPoint = await address.ResolveAsync("--metrics", cancellationToken).ConfigureAwait(false);
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(endPoint);
            socket.Listen(MaxConnections);
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            throw new CliException($"--metrics {address}: {Listeners.BindFailure(ex, endPoint)}");
        }
        return new MetricsEndpoint(socket, render, log);
    }

    /// <summary>Stops listening and waits for the scrapes being answered, which the stop cancels.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        Task[] connections;
        lock (_lock)
        {
            connections = [.. _connections];
        }
        await Task.WhenAll(connections).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stop.Dispose();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is ObjectDisposedException or OperationCanceledException)
            {
                return;
            }
            catch (SocketException ex)
            {
                // As for NBD: one failed accept (a reset while queued, no file descriptors left) must not end the endpoint.
                _log($"metrics: accept failed: {ex.Message}");
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            Task serve;
            lock (_lock)
            {
                if (_connections.Count >= MaxConnections)
                {
                    client.Dispose();
                    continue;
                }
                // ServeAsync yields first, so it is in the set before it can finish and leave it.
                serve = ServeAsync(client);
                _connections.Add(serve);
            }
            _ = serve.ContinueWith(t =>
            {
                lock (_lock)
                {
                    _connections.Remove(t);
                }
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    private async Task ServeAsync(Socket client)
    {
        await Task.Yield();
        byte[] buffer = ArrayPool<byte>.Shared.Rent(MaxRequestBytes);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(RequestTimeout);
        try
        {
            int length = 0;
            int headerEnd;
            while ((headerEnd = buffer.AsSpan(0, length).IndexOf("\r\n\r\n"u8)) < 0)
            {
                if (length == MaxRequestBytes)
                {
                    await RespondAsync(client, 431, "Request Header Fields Too Large", "request headers over 8 KiB\n", head: false, timeout.Token).ConfigureAwait(false);
                    return;
                }
                int received = await client.ReceiveAsync(buffer.AsMemory(length, MaxRequestBytes - length), SocketFlags.None, timeout.Token).ConfigureAwait(false);
                if (received == 0)
                {
                    return;
                }
                length += received;
            }
            int lineEnd = buffer.AsSpan(0, headerEnd).IndexOf("\r\n"u8);
            string requestLine = Encoding.ASCII.GetString(buffer, 0, lineEnd < 0 ? headerEnd : lineEnd);
            await AnswerAsync(client, requestLine, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException or IOException)
        {
            // The scraper went away or stalled: its connection alone ends.
        }
        catch (Exception ex)
        {
            _log($"metrics: answering {client.RemoteEndPoint} failed: {ex.Message}");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            client.Dispose();
        }
    }

    private async Task AnswerAsync(Socket client, string requestLine, CancellationToken cancellationToken)
    {
        string[] parts = requestLine.Split(' ');
        if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal) || !parts[1].StartsWith('/'))
        {
            await RespondAsync(client, 400, "Bad Request", "expected an HTTP/1.x request line, e.g. GET /metrics HTTP/1.1\n", head: false, cancellationToken).ConfigureAwait(false);
            return;
        }
        bool head = parts[0] == "HEAD";
        if (parts[0] != "GET" && !head)
        {
            await RespondAsync(client, 405, "Method Not Allowed", "only GET and HEAD\n", head: false, cancellationToken, "Allow: GET, HEAD\r\n").ConfigureAwait(false);
            return;
        }
        string path = parts[1].Split('?')[0];
        if (path != "/metrics")
        {
            await RespondAsync(client, 404, "Not Found", "not found: the metrics are at /metrics\n", head, cancellationToken).ConfigureAwait(false);
            return;
        }
        string body;
        try
        {
            body = _render();
        }
        catch (Exception ex)
        {
            _log($"metrics: rendering failed: {ex.Message}");
            await RespondAsync(client, 500, "Internal Server Error", $"rendering the metrics failed: {ex.Message}\n", head, cancellationToken).ConfigureAwait(false);
            return;
        }
        await RespondAsync(client, 200, "OK", body, head, cancellationToken, contentType: MetricsText.ContentType).ConfigureAwait(false);
    }

    private static async Task RespondAsync(Socket client, int status, string reason, string body, bool head, CancellationToken cancellationToken,
        string extraHeaders = "", string contentType = "text/plain; charset=utf-8")
    {
        byte[] content = Encoding.UTF8.GetBytes(body);
        string header = $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {content.Length}\r\n{extraHeaders}Connection: close\r\n\r\n";
        byte[] response = [.. Encoding.ASCII.GetBytes(header), .. head ? [] : content];
        for (int sent = 0; sent < response.Length;)
        {
            sent += await client.SendAsync(response.AsMemory(sent), SocketFlags.None, cancellationToken).ConfigureAwait(false);
        }
        client.Shutdown(SocketShutdown.Send);
    }
}
