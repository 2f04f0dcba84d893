using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Cbd.Nbd;

namespace Cbd.Cli;

/// <summary>
/// The listening sockets a service manager passes to the process it starts, as sd_listen_fds(3) defines them:
/// <c>LISTEN_PID</c> names the process they are for, <c>LISTEN_FDS</c> counts them from file descriptor 3,
/// <c>LISTEN_FDNAMES</c> optionally names them (colon-separated). systemd's socket units and
/// <c>systemd-socket-activate</c> pass them so; nbdkit and qemu-nbd take them the same way.
/// </summary>
internal sealed partial class SystemdActivation
{
    private const string ListenPid = "LISTEN_PID";
    private const string ListenFds = "LISTEN_FDS";
    private const string ListenFdNames = "LISTEN_FDNAMES";

    /// <summary>SD_LISTEN_FDS_START: the first passed descriptor follows stdin, stdout and stderr.</summary>
    private const int FirstFd = 3;

    // No service manager passes more; a larger count is a corrupt variable, not a request to scan the fd table.
    private const int MaxFds = 1024;

    // Linux's values (asm-generic), the same on x86-64 and arm64.
    private const int FGetFd = 1; // fcntl(2) F_GETFD
    private const int FSetFd = 2; // F_SETFD
    private const int FdCloexec = 1; // FD_CLOEXEC
    private const int SolSocket = 1; // SOL_SOCKET
    private const int SoType = 3; // SO_TYPE
    private const int SoAcceptConn = 30; // SO_ACCEPTCONN
    private const int SoDomain = 39; // SO_DOMAIN
    private const int AfUnix = 1;
    private const int AfInet = 2;
    private const int AfInet6 = 10;
    private const int SockStream = 1;
    private const int Enotsock = 88;

    private readonly List<Socket> _sockets;

    private SystemdActivation(List<Socket> sockets) => _sockets = sockets;

    /// <summary>The path of the first Unix socket passed, or null when only TCP sockets were.</summary>
    public string? UnixSocketPath
        => _sockets.Select(s => s.LocalEndPoint).OfType<UnixDomainSocketEndPoint>().FirstOrDefault()?.ToString();

    /// <summary>
    /// Reads the variables and takes the sockets they pass to this process. The variables are removed whatever they
    /// hold, as sd_listen_fds(unset_environment=1) does, so that no child process takes them for its own; each
    /// socket gets FD_CLOEXEC, which the service manager had to clear to pass it.
    /// </summary>
    /// <param name="listenersGiven">--socket or --listen was given: with sockets passed, that is an error.</param>
    /// <returns>Null when no sockets are passed to this process (no LISTEN_PID, another process's, or LISTEN_FDS=0).</returns>
    /// <exception cref="CliException">The variables are malformed, a descriptor is no listening Unix or TCP stream
    /// socket, or listeners were also given on the command line. The message names the variable or descriptor.</exception>
    public static SystemdActivation? Take(bool listenersGiven)
    {
        string? pidText = Environment.GetEnvironmentVariable(ListenPid);
        string? countText = Environment.GetEnvironmentVariable(ListenFds);
        string? namesText = Environment.GetEnvironmentVariable(ListenFdNames);
        // Only the runtime's copy of the environment is changed: it is what Process.Start hands a child. libc's
        // unsetenv is not called, since it is not safe while other threads may read the environment.
        Environment.SetEnvironmentVariable(ListenPid, null);
        Environment.SetEnvironmentVariable(ListenFds, null);
        Environment.SetEnvironmentVariable(ListenFdNames, null);

        if (pidText is null)
        {
            return null;
        }
        // Digits only, as systemd writes them: no sign, no spaces.
        if (!int.TryParse(pidText, NumberStyles.None, CultureInfo.InvariantCulture, out int pid) || pid == 0)
        {
            throw new CliException($"socket activation: {ListenPid}={pidText} is not a process id");
        }
        if (pid != Environment.ProcessId)
        {
            return null;
        }
        if (!int.TryParse(countText, NumberStyles.None, CultureInfo.InvariantCulture, out int count) || count > MaxFds)
        {
            throw new CliException($"socket activation: {ListenFds}={countText ?? "(unset)"} is not a count of file descriptors from 0 to {MaxFds}");
        }
        if (count == 0)
        {
            return null;
        }
        string[]? names = namesText?.Split(':');
        if (names is not null && names.Length != count)
        {
            throw new CliException($"socket activation: {ListenFdNames}={namesText} names {names.Length} file descriptors, {ListenFds}={count}");
        }
        if (listenersGiven)
        {
            throw new CliException($"--socket and --listen cannot be used with socket activation: {count} listening socket(s) were passed ({ListenFds}={count}); the socket unit says where to listen");
        }

        var sockets = new List<Socket>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                sockets.Add(Adopt(FirstFd + i, names?[i]));
            }
        }
        catch
        {
            foreach (Socket socket in sockets)
            {
                socket.Dispose();
            }
            throw;
        }
        return new SystemdActivation(sockets);
    }

    /// <summary>Serves every passed socket on <paramref name="server"/>; returns the NBD URI of each.</summary>
    public IReadOnlyList<string> Start(NbdServer server, string exportName)
    {
        var uris = new List<string>(_sockets.Count);
        foreach (Socket socket in _sockets)
        {
            uris.Add(Uri(server.Start(socket), exportName));
        }
        return uris;
    }

    private static Socket Adopt(int fd, string? name)
    {
        string what = name is { Length: > 0 } ? $"fd {fd} ({name})" : $"fd {fd}";
        int flags = Fcntl(fd, FGetFd, 0);
        if (flags < 0)
        {
            throw new CliException($"socket activation: {what} is not open, though {ListenFds} counts it (errno {Marshal.GetLastPInvokeError()})");
        }
        // Checked on the descriptor before .NET wraps it, which takes any descriptor and calls what it cannot
        // query an Unknown socket.
        int domain = SocketOption(fd, SoDomain, what);
        if (domain is not (AfUnix or AfInet or AfInet6))
        {
            throw new CliException($"socket activation: {what} is a socket of address family {domain}; cbd serves Unix and TCP sockets");
        }
        if (SocketOption(fd, SoType, what) != SockStream)
        {
            throw new CliException($"socket activation: {what} is not a stream socket; NBD needs one (ListenStream=)");
        }
        if (SocketOption(fd, SoAcceptConn, what) == 0)
        {
            throw new CliException($"socket activation: {what} is not listening: cbd takes the listening socket (Accept=no), not one connection");
        }
        if ((flags & FdCloexec) == 0 && Fcntl(fd, FSetFd, flags | FdCloexec) < 0)
        {
            throw new CliException($"socket activation: {what}: cannot set FD_CLOEXEC (errno {Marshal.GetLastPInvokeError()})");
        }
        return new Socket(new SafeSocketHandle(fd, ownsHandle: true));
    }

    private static int SocketOption(int fd, int option, string what)
    {
        uint length = sizeof(int);
        if (GetSockOpt(fd, SolSocket, option, out int value, ref length) == 0)
        {
            return value;
        }
        int errno = Marshal.GetLastPInvokeError();
        throw new CliException(errno == Enotsock
            ? $"socket activation: {what} is not a socket"
            : $"socket activation: {what}: getsockopt failed with errno {errno}");
    }

    private static string Uri(EndPoint endPoint, string exportName) => endPoint switch
    {
        UnixDomainSocketEndPoint unix => $"nbd+unix:///{System.Uri.EscapeDataString(exportName)}?socket={unix}",
        IPEndPoint { AddressFamily: AddressFamily.InterNetworkV6 } ip => $"nbd://[{ip.Address}]:{ip.Port}/{System.Uri.EscapeDataString(exportName)}",
        IPEndPoint ip => $"nbd://{ip.Address}:{ip.Port}/{System.Uri.EscapeDataString(exportName)}",
        _ => $"{endPoint}",
    };

    // fcntl is variadic; an int third argument is passed in the same register as a fixed one on the x86-64 and
    // arm64 Linux ABIs.
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int GetSockOpt(int fd, int level, int option, out int value, ref uint length);
}
