namespace Cbd.Nbd;

/// <summary>Limits and hooks of an <see cref="NbdServer"/>; the defaults suit a local server.</summary>
public sealed record NbdServerOptions
{
    /// <summary>
    /// Requests of one connection being processed at once. When reached, the server stops reading that
    /// connection until a request completes, so the client's own queue and TCP flow control absorb the rest.
    /// </summary>
    public int MaxInFlightRequests { get; init; } = 64;

    /// <summary>
    /// Payload bytes (WRITE data received, READ data to send) of one connection held in memory at once.
    /// A single request is always admitted when nothing else is in flight, so this never blocks a request of
    /// up to <see cref="Protocol.NbdLimits.MaxRequestLength"/>.
    /// </summary>
    public long MaxInFlightBytes { get; init; } = 8L << 20;

    /// <summary>
    /// Payload bytes of all connections together held in memory at once, so that the server's memory does
    /// not grow with the number of clients. A connection with nothing in flight may still take one request.
    /// </summary>
    public long MaxServerInFlightBytes { get; init; } = 16L << 20;

    /// <summary>
    /// How long <see cref="NbdServer.StopAsync"/> lets in-flight requests finish before it cancels the
    /// device calls still running and closes the connections.
    /// </summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Permissions of the Unix socket files the server creates. Whoever may connect may read and write the whole
    /// device, so the default is the owner only (0600), whatever the process umask.
    /// </summary>
    public UnixFileMode UnixSocketMode { get; init; } = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>Group id given to the Unix socket files the server creates; null keeps the process's group.</summary>
    public int? UnixSocketGroupId { get; init; }

    /// <summary>Receives one line per connection event and per unexpected failure; null to stay silent.</summary>
    public Action<string>? Log { get; init; }
}
