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
    /// Payload bytes (WRITE data received, READ data to send) of one connection's requests in flight at once;
    /// a request larger than a piece counts as one piece, since it is received or sent piece by piece. A single
    /// request is always admitted when nothing else is in flight.
    /// </summary>
    public long MaxInFlightBytes { get; init; } = 8L << 20;

    /// <summary>
    /// Payload bytes of all connections together held in memory at once, buffers kept for reuse included, so
    /// that the server's memory does not grow with the number of clients or the size of their requests.
    /// WRITEs larger than a piece (this divided by <see cref="MaxConnections"/>, a power of two from 64 KiB to
    /// 1 MiB; 256 KiB by default) are received piece by piece, and as every connection fits one piece in the
    /// budget, clients that stall halfway through their data cannot take all of it from the others. READs
    /// larger than 1 MiB are read and sent 1 MiB at a time. No request holds more than one piece at once.
    /// </summary>
    public long MaxServerInFlightBytes { get; init; } = 16L << 20;

    /// <summary>
    /// Connections served at once; one more is closed as soon as it is accepted (and logged, at most once a
    /// second). 64 is well above what the clients of one image open (nbdcopy 4, nbd-client one per
    /// connection it is told to make, qemu and nbdfuse one), and it bounds what idle or stalled connections
    /// can hold: each keeps a 64 KiB receive buffer and, mid-WRITE, one 256 KiB piece.
    /// </summary>
    public int MaxConnections { get; init; } = 64;

    /// <summary>
    /// Time a client has from connecting to the end of option haggling (NBD_OPT_GO or NBD_OPT_EXPORT_NAME);
    /// a connection still negotiating then is closed, with one log line. Real clients need milliseconds;
    /// this frees the connection slots that silent or dribbling clients would otherwise hold for ever. There
    /// is no idle timeout after the handshake: nbdfuse and the kernel keep healthy connections idle for hours.
    /// <see cref="Timeout.InfiniteTimeSpan"/> disables it.
    /// </summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

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

    /// <summary>Whether and how TLS is offered (NBD_OPT_STARTTLS); anything but <see cref="NbdTlsMode.Off"/> needs <see cref="TlsCredentials"/>.</summary>
    public NbdTlsMode TlsMode { get; init; } = NbdTlsMode.Off;

    /// <summary>The server's certificate and, for peer verification, the client CA.</summary>
    public NbdTlsCredentials? TlsCredentials { get; init; }

    /// <summary>Receives one line per connection event and per unexpected failure; null to stay silent.</summary>
    public Action<string>? Log { get; init; }
}
