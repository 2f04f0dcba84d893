using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Cbd.Cli.Serve;

/// <summary>
/// A TCP address to listen on, as <c>--listen</c> takes it: <c>PORT</c> (on 127.0.0.1), <c>HOST:PORT</c> or
/// <c>[IPv6]:PORT</c>. Port 0 asks the system for a free port. HOST is an IP address or a name resolved at start.
/// </summary>
public sealed record ListenAddress(string Host, int Port)
{
    public const string Syntax = "[HOST:]PORT";

    private const string Expected = "expected PORT, HOST:PORT or [IPv6]:PORT with PORT from 0 to 65535";

    /// <summary>Parses <paramref name="text"/>; false with a message naming the input and what was expected.</summary>
    public static bool TryParse(string text, [NotNullWhen(true)] out ListenAddress? address, out string error)
    {
        address = null;
        error = "";
        string host = IPAddress.Loopback.ToString();
        string port = text;
        int colon = text.LastIndexOf(':');
        if (colon >= 0)
        {
            host = text[..colon];
            port = text[(colon + 1)..];
            if (host.StartsWith('[') && host.EndsWith(']'))
            {
                host = host[1..^1];
                if (!IPAddress.TryParse(host, out IPAddress? v6) || v6.AddressFamily != AddressFamily.InterNetworkV6)
                {
                    error = $"'{text}': '{host}' in brackets is not an IPv6 address";
                    return false;
                }
            }
            else if (host.Contains(':'))
            {
                error = $"'{text}': an IPv6 address goes in brackets, e.g. [::1]:10809";
                return false;
            }
            if (host.Length == 0)
            {
                error = $"'{text}': no host before the ':'; {Expected}";
                return false;
            }
            if (!IPAddress.TryParse(host, out _) && !IsHostName(host))
            {
                error = $"'{text}': '{host}' is neither an IP address nor a host name; {Expected}";
                return false;
            }
        }
        if (port.Length == 0 || !port.All(char.IsAsciiDigit))
        {
            error = $"'{text}': {Expected}";
            return false;
        }
        if (port.Length > 5 || int.Parse(port, CultureInfo.InvariantCulture) > IPEndPoint.MaxPort)
        {
            error = $"'{text}': port {port} is out of range; {Expected}";
            return false;
        }
        address = new ListenAddress(host, int.Parse(port, CultureInfo.InvariantCulture));
        return true;
    }

    /// <summary>The address to bind: the literal address, or the first address the name resolves to (IPv4 preferred).</summary>
    /// <exception cref="CliException">The name does not resolve.</exception>
    public Task<IPEndPoint> ResolveAsync(CancellationToken cancellationToken) => ResolveAsync("--listen", cancellationToken);

    /// <summary>As <see cref="ResolveAsync(CancellationToken)"/>, for an address that <paramref name="option"/> named.</summary>
    /// <exception cref="CliException">The name does not resolve; the message starts with the option and the address.</exception>
    public async Task<IPEndPoint> ResolveAsync(string option, CancellationToken cancellationToken)
    {
        if (IPAddress.TryParse(Host, out IPAddress? literal))
        {
            return new IPEndPoint(literal, Port);
        }
        IPAddress[] addresses;
        try
        {
            addresses = await Dns.GetHostAddressesAsync(Host, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            throw new CliException($"{option} {this}: cannot resolve host '{Host}': {ex.Message}");
        }
        IPAddress? chosen = addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? addresses.FirstOrDefault();
        return chosen is null
            ? throw new CliException($"{option} {this}: host '{Host}' has no address")
            : new IPEndPoint(chosen, Port);
    }

    public override string ToString() => Host.Contains(':') ? $"[{Host}]:{Port}" : $"{Host}:{Port}";

    /// <summary>Letters, digits, '-' and '.', as in RFC 1123 host names.</summary>
    private static bool IsHostName(string host)
        => host.Length <= 253 && host.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.') && !host.StartsWith('-') && !host.StartsWith('.');
}
