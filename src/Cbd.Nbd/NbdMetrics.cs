using Cbd.Core.Engine;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>
/// Running totals of an <see cref="NbdServer"/>, for monitoring: connections, and per command the requests that
/// reached the device, their failures, bytes and latency. Requests refused before the device (out of range, writes
/// to a read-only export, malformed) count only in <see cref="RequestsRefused"/>. Every update is an interlocked
/// add with no lock and no allocation; readers see each figure as of the moment they read it.
/// </summary>
public sealed class NbdMetrics
{
    /// <summary>The commands counted, in the order monitoring lists them.</summary>
    public static readonly IReadOnlyList<NbdCommand> Commands =
        [NbdCommand.Read, NbdCommand.Write, NbdCommand.Flush, NbdCommand.Trim, NbdCommand.WriteZeroes, NbdCommand.BlockStatus, NbdCommand.Cache];

    // Indexed by the command's wire value; NBD_CMD_DISC never reaches the device and its slot stays empty.
    private readonly CommandCounters[] _commands = [.. Enumerable.Range(0, (int)NbdCommand.BlockStatus + 1).Select(_ => new CommandCounters())];
    private long _connectionsOpened;
    private long _connectionsClosed;
    private long _connectionsRefused;
    private long _disconnects;
    private long _requestsRefused;

    /// <summary>The counters of <paramref name="command"/>, one of <see cref="Commands"/>.</summary>
    public CommandCounters this[NbdCommand command] => _commands[(int)command];

    /// <summary>Connections accepted and served (not those refused over the limit).</summary>
    public long ConnectionsOpened => Volatile.Read(ref _connectionsOpened);

    /// <summary>Served connections that have ended, for whatever reason.</summary>
    public long ConnectionsClosed => Volatile.Read(ref _connectionsClosed);

    /// <summary>Connections being served now: handshaking or transmitting.</summary>
    public long Connections => ConnectionsOpened - ConnectionsClosed;

    /// <summary>Connections closed on accept because <see cref="NbdServerOptions.MaxConnections"/> were being served.</summary>
    public long ConnectionsRefused => Volatile.Read(ref _connectionsRefused);

    /// <summary>NBD_CMD_DISC requests read: connections the client ends cleanly (the server still finishes their requests in flight).</summary>
    public long Disconnects => Volatile.Read(ref _disconnects);

    /// <summary>Requests answered with an error without reaching the device: invalid for the export or the protocol.</summary>
    public long RequestsRefused => Volatile.Read(ref _requestsRefused);

    /// <summary>Counts a request once its reply has been sent (or could not be).</summary>
    /// <param name="startTimestamp">When its processing began (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>).</param>
    internal void Record(NbdCommand command, ulong length, RequestOutcome outcome, long startTimestamp)
    {
        if (outcome == RequestOutcome.Refused || (uint)command >= (uint)_commands.Length)
        {
            Interlocked.Increment(ref _requestsRefused);
            return;
        }
        CommandCounters counters = _commands[(int)command];
        counters.Latency.ObserveSince(startTimestamp);
        Interlocked.Increment(ref counters.RequestsField);
        if (outcome == RequestOutcome.Failed)
        {
            Interlocked.Increment(ref counters.ErrorsField);
        }
        else
        {
            Interlocked.Add(ref counters.BytesField, (long)length);
        }
    }

    internal void DisconnectRead() => Interlocked.Increment(ref _disconnects);

    internal void ConnectionOpened() => Interlocked.Increment(ref _connectionsOpened);

    internal void ConnectionClosed() => Interlocked.Increment(ref _connectionsClosed);

    internal void ConnectionRefused() => Interlocked.Increment(ref _connectionsRefused);

    /// <summary>The totals of one command.</summary>
    public sealed class CommandCounters
    {
        internal long RequestsField;
        internal long ErrorsField;
        internal long BytesField;

        /// <summary>Requests that reached the device, failed or not.</summary>
        public long Requests => Volatile.Read(ref RequestsField);

        /// <summary>Requests the device failed (an I/O error, no space, ...), answered with an NBD error.</summary>
        public long Errors => Volatile.Read(ref ErrorsField);

        /// <summary>The lengths of the requests that succeeded: bytes read or written, trimmed, zeroed, described or prefetched.</summary>
        public long Bytes => Volatile.Read(ref BytesField);

        /// <summary>From the request read whole (its data included) to its reply sent.</summary>
        public DurationHistogram Latency { get; } = new(DurationHistogram.RequestBounds);
    }
}

/// <summary>How a request ended, as <see cref="NbdMetrics"/> counts it.</summary>
internal enum RequestOutcome
{
    /// <summary>Answered with an error before reaching the device.</summary>
    Refused,

    /// <summary>The device failed it.</summary>
    Failed,

    /// <summary>Done, its reply sent.</summary>
    Done,
}
