using System.Net;
using System.Net.Sockets;
using Cbd.Nbd;

namespace Cbd.Cli.Serve;

/// <summary>Starts the server's Unix and TCP listeners, turning bind failures into one line that names the address and the cause.</summary>
public static class Listeners
{
    /// <summary>Listens on a Unix socket; returns its NBD URI.</summary>
    /// <param name="option">How the user named the path: "--socket" when given, else empty (the default path).</param>
    /// <exception cref="CliException">The socket cannot be created; the message says why.</exception>
    public static async Task<string> StartUnixAsync(NbdServer server, string path, string option, string exportName, CancellationToken cancellationToken)
    {
        string what = option.Length > 0 ? $"{option} {path}" : $"socket {path}";
        string directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(directory))
        {
            throw new CliException($"{what}: no such directory {directory}");
        }
        UnixDomainSocketEndPoint endPoint;
        try
        {
            endPoint = new UnixDomainSocketEndPoint(path);
        }
        catch (ArgumentException)
        {
            throw new CliException($"{what}: longer than the 107 bytes a Unix socket path can have; give a shorter --socket PATH");
        }
        try
        {
            await server.StartAsync(endPoint, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            throw new CliException($"{what}: {Describe(ex)}");
        }
        catch (IOException ex) when (option.Length == 0)
        {
            // The default path is derived from the image's name alone: another image of that name may be served.
            throw new CliException($"{CommandRunner.OneLine(ex.Message)} Serve this image on another path with --socket PATH");
        }
        catch (IOException ex)
        {
            throw new CliException(ex.Message);
        }
        return $"nbd+unix:///{Uri.EscapeDataString(exportName)}?socket={path}";
    }

    /// <summary>Listens on TCP; returns its NBD URI, with port 0 replaced by the port bound.</summary>
    /// <exception cref="CliException">The address cannot be resolved or bound; the message says why.</exception>
    public static async Task<string> StartTcpAsync(NbdServer server, ListenAddress address, string exportName, CancellationToken cancellationToken)
    {
        IPEndPoint endPoint = await address.ResolveAsync(cancellationToken).ConfigureAwait(false);
        IPEndPoint bound;
        try
        {
            bound = (IPEndPoint)await server.StartAsync(endPoint, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            throw new CliException($"--listen {address}: {BindFailure(ex, endPoint)}");
        }
        string host = bound.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{bound.Address}]" : bound.Address.ToString();
        return $"nbd://{host}:{bound.Port}/{Uri.EscapeDataString(exportName)}";
    }

    /// <summary>Why <paramref name="endPoint"/> could not be bound, in words, for a TCP listener's error line.</summary>
    public static string BindFailure(SocketException ex, IPEndPoint endPoint) => ex.SocketErrorCode switch
    {
        SocketError.AddressAlreadyInUse => $"port {endPoint.Port} on {endPoint.Address} is already in use by another program",
        SocketError.AddressNotAvailable => $"{endPoint.Address} is not an address of this machine",
        SocketError.AccessDenied => $"permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE",
        SocketError.AddressFamilyNotSupported => $"{endPoint.AddressFamily} is not supported here",
        _ => Describe(ex),
    };

    private static string Describe(SocketException ex) => ex.SocketErrorCode switch
    {
        SocketError.AccessDenied => "permission denied",
        SocketError.AddressAlreadyInUse => "address already in use",
        _ => char.ToLowerInvariant(ex.Message[0]) + ex.Message[1..],
    };
}
