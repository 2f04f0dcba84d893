using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Runtime.InteropServices;
using Cbd.Cli.Serve;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Nbd;

namespace Cbd.Cli.Commands;

/// <summary>
/// <c>cbd serve IMAGE</c>: opens (or creates) an image and serves it over NBD until SIGINT or SIGTERM, then
/// finishes in-flight requests, flushes, closes the image clean and removes its socket and pid file.
/// </summary>
public static class ServeCommand
{
    private const double MaxFlushDelaySeconds = 86400;

    private static readonly Argument<string> s_image = CliOptions.Image("The cbd image file (or block device) to serve.");

    private static readonly Option<string?> s_socket = new("--socket")
    {
        Description = "Unix socket to listen on. Default, unless --listen is given: $XDG_RUNTIME_DIR/cbd-NAME.sock, or /tmp/cbd-NAME.sock " +
            "without XDG_RUNTIME_DIR, NAME being the image file name without its extension (serve two images of one name with --socket).",
        HelpName = "PATH",
    };

    private static readonly Option<UnixFileMode?> s_socketMode = new("--socket-mode")
    {
        Description = "Permissions of the Unix socket, in octal. Whoever can connect can read and write the whole device, so the default is 600 " +
            "(owner only, whatever the umask), or 660 with --socket-group.",
        HelpName = "MODE",
        CustomParser = SocketAccess.ParseModeArgument,
    };

    private static readonly Option<UnixGroup?> s_socketGroup = new("--socket-group")
    {
        Description = "Give the Unix socket to this group (a name or a numeric id), so that its members can connect.",
        HelpName = "GROUP",
        CustomParser = SocketAccess.ParseGroupArgument,
    };

    private static readonly Option<ListenAddress?> s_listen = new("--listen", "--port", "-p")
    {
        Description = "Also or instead listen on TCP: PORT (on 127.0.0.1), HOST:PORT or [IPv6]:PORT; port 0 takes a free one. " +
            "Without --socket, only TCP is served. TCP has no access control: anyone who reaches the address can use the device.",
        HelpName = ListenAddress.Syntax,
        CustomParser = ParseListen,
    };

    private static readonly Option<ListenAddress?> s_metrics = new("--metrics")
    {
        Description = "Serve live statistics in the Prometheus text format at http://ADDRESS/metrics: PORT (on 127.0.0.1), HOST:PORT or " +
            "[IPv6]:PORT. They show the device's use and the requests served, not its data; anyone who reaches the address can read them.",
        HelpName = ListenAddress.Syntax,
        CustomParser = result => ParseAddress(result, "--metrics"),
    };

    private static readonly Option<string?> s_name = new("--name", "--export-name", "-e")
    {
        Description = "Export name. Default: the image file name without its extension. Clients asking for the default (empty) name get this export too.",
        HelpName = "EXPORT",
    };

    private static readonly Option<bool> s_readOnly = new("--read-only", "-r") { Description = "Open the image read-only and refuse writes." };

    private static readonly Option<long?> s_cache = CliOptions.Size("--cache",
        $"Memory for the lblk cache, e.g. 256M. Default: {Short(new DeviceOptions().CacheBytes)}.");

    private static readonly Option<double?> s_flushDelay = new("--flush-delay")
    {
        Description = $"Seconds (0 to {MaxFlushDelaySeconds}) a written lblk may stay in the cache before it is written back. " +
            $"Default: {new DeviceOptions().FlushDelay.TotalSeconds.ToString(CultureInfo.InvariantCulture)}.",
        HelpName = "SECONDS",
        CustomParser = ParseFlushDelay,
    };

    private static readonly Option<DiscardMode> s_discard = new("--discard")
    {
        Description = "What becomes of the pblks the device frees (a rewrite, a trim), once the commit that frees them is durable: " +
            "unmap gives them back to the backing store (a hole punched in the file, a discard on a block device), so the file holds about " +
            "what its data compresses to; ignore leaves them allocated. Default: unmap.",
        HelpName = "unmap|ignore",
        DefaultValueFactory = _ => DiscardMode.Unmap,
        CustomParser = result =>
        {
            string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
            switch (text)
            {
                case "unmap":
                    return DiscardMode.Unmap;
                case "ignore":
                    return DiscardMode.Ignore;
                default:
                    result.AddError($"--discard: '{text}', expected unmap or ignore.");
                    return default;
            }
        },
    };

    private static readonly Option<string?> s_pidFile = new("--pid-file", "-P")
    {
        Description = "Write the process id here once the server accepts connections and has printed its URIs; removed on exit. A symbolic link is refused.",
        HelpName = "PATH",
    };

    private static readonly Option<int> s_maxConnections = PositiveOption<int>("--max-connections",
        "Connections served at once; more are closed as soon as they connect.", "N", new NbdServerOptions().MaxConnections, max: 65536);

    private static readonly Option<double> s_handshakeTimeout = PositiveOption<double>("--handshake-timeout",
        "Seconds a client has to finish option haggling before its connection is closed.", "SECONDS", new NbdServerOptions().HandshakeTimeout.TotalSeconds, max: 3600);

    /// <summary>A number more than 0 and at most <paramref name="max"/>; anything else is a usage error naming the option.</summary>
    private static Option<T> PositiveOption<T>(string name, string description, string helpName, T defaultValue, T max)
        where T : struct, System.Numerics.INumber<T>
    {
        // Checked while parsing rather than by a validator, which would read a value that did not convert.
        var styles = typeof(T) == typeof(double) ? NumberStyles.Float : NumberStyles.Integer;
        return new Option<T>(name)
        {
            Description = description,
            HelpName = helpName,
            DefaultValueFactory = _ => defaultValue,
            CustomParser = result =>
            {
                string text = result.Tokens.Count == 1 ? result.Tokens[0].Value : "";
                if (T.TryParse(text, styles, CultureInfo.InvariantCulture, out T value) && value > T.Zero && value <= max)
                {
                    return value;
                }
                result.AddError($"{name}: '{text}', expected a number more than 0 and at most {max}.");
                return default;
            },
        };
    }

    private static readonly Option<NbdTlsMode?> s_tls = new("--tls")
    {
        Description = "TLS on the NBD connection, as nbdkit and qemu-nbd offer it: off (the default); on (clients may upgrade with STARTTLS, " +
            "plaintext clients are still served); require (every option before STARTTLS is refused with NBD_REP_ERR_TLS_REQD). Needs --tls-certificates.",
        HelpName = "off|on|require",
        CustomParser = ParseTlsMode,
    };

    private static readonly Option<string?> s_tlsCertificates = new("--tls-certificates")
    {
        Description = $"Directory holding {NbdTlsCredentials.CaCertificateFile}, {NbdTlsCredentials.ServerCertificateFile} and " +
            $"{NbdTlsCredentials.ServerKeyFile} (PEM; the layout nbdkit and qemu read).",
        HelpName = "DIR",
    };

    private static readonly Option<bool> s_tlsVerifyPeer = new("--tls-verify-peer")
    {
        Description = $"Admit only clients whose certificate is signed by the CA in {NbdTlsCredentials.CaCertificateFile}: with --tls require, " +
            "the one authentication NBD has.",
    };

    private static readonly Option<bool> s_create = new("--create") { Description = "Create and format IMAGE, which must not exist yet (needs --size)." };

    private static readonly Option<long?> s_size = CliOptions.Size("--size",
        "With --create: size of the new image file, e.g. 10G. The logical size is 3 times that.");

    public static Command Create()
    {
        var command = new Command("serve", "Serve an image over NBD until interrupted (SIGINT or SIGTERM, at any moment, end with the image closed clean). " +
            "Exit codes: 0 after a clean shutdown; 1 the image could not be opened or served, or not closed clean; 2 the command line was not understood.")
        {
            s_image, s_socket, s_socketMode, s_socketGroup, s_listen, s_name, s_readOnly, s_cache, s_flushDelay, s_pidFile, s_create, s_size,
            s_maxConnections, s_handshakeTimeout, s_tls, s_tlsCertificates, s_tlsVerifyPeer, s_metrics,
        };
        command.Options.Add(s_discard);
        command.Validators.Add(result =>
        {
            bool create = result.GetValue(s_create);
            bool hasSize = result.GetResult(s_size) is not null;
            if (create && !hasSize)
            {
                result.AddError("--create needs --size SIZE.");
            }
            if (!create && hasSize)
            {
                result.AddError("--size is only used with --create.");
            }
            bool unix = result.GetResult(s_socket) is not null || result.GetResult(s_listen) is null;
            if (!unix && (result.GetResult(s_socketMode) is not null || result.GetResult(s_socketGroup) is not null))
            {
                result.AddError("--socket-mode and --socket-group apply to a Unix socket; --listen alone serves none (add --socket PATH).");
            }
            bool tls = TlsMode(result.GetValue(s_tls)) != NbdTlsMode.Off;
            if (tls && result.GetResult(s_tlsCertificates) is null)
            {
                result.AddError($"--tls {TlsMode(result.GetValue(s_tls)).ToString().ToLowerInvariant()} needs --tls-certificates DIR.");
            }
            if (!tls && (result.GetResult(s_tlsCertificates) is not null || result.GetValue(s_tlsVerifyPeer)))
            {
                result.AddError("--tls-certificates and --tls-verify-peer need --tls on or --tls require.");
            }
        });
        CommandRunner.SetAction(command, (parse, _) => RunAsync(parse));
        return command;
    }

    private static async Task<int> RunAsync(ParseResult parse)
    {
        // First of all: from here on a signal at any moment ends in a clean close, never with the image left open.
        using var shutdown = new ShutdownSignal();
        string image = parse.GetRequiredValue(s_image);
        bool readOnly = parse.GetValue(s_readOnly);
        var deviceOptions = new DeviceOptions { ReadOnly = readOnly, Log = Log };
        deviceOptions = deviceOptions with
        {
            CacheBytes = parse.GetValue(s_cache) ?? deviceOptions.CacheBytes,
            FlushDelay = parse.GetValue(s_flushDelay) is { } seconds ? TimeSpan.FromSeconds(seconds) : deviceOptions.FlushDelay,
            Discard = parse.GetValue(s_discard),
        };

        if (parse.GetValue(s_pidFile) is { } pidPath)
        {
            PidFile.CheckPath(pidPath);
        }
        // Before the image is opened: a mistake in the certificates costs nothing then.
        NbdTlsCredentials? tls = LoadTlsCredentials(parse);
        // Sockets passed by a service manager (systemd socket activation) replace the default socket.
        var activation = SystemdActivation.Take(listenersGiven: parse.GetValue(s_socket) is not null || parse.GetValue(s_listen) is not null);
        CompressedDevice device = parse.GetValue(s_create)
            ? await CreateAsync(image, parse.GetValue(s_size)!.Value, deviceOptions).ConfigureAwait(false)
            : await ImageFiles.OpenDeviceAsync(image, deviceOptions, CancellationToken.None).ConfigureAwait(false);
        int exitCode = ExitCodes.Failed;
        PidFile? pidFile = null;
        try
        {
            if (device.Recovered)
            {
                Log($"{image} was not closed cleanly: pbats and usage rebuilt from the lbats");
            }
            // A signal that came while the image was being opened: close it again without serving.
            exitCode = shutdown.IsSignalled ? ExitCodes.Success : await ServeAsync(parse, image, device, shutdown, activation, tls, written => pidFile = written).ConfigureAwait(false);
        }
        finally
        {
            if (!await CloseAsync(image, device, readOnly).ConfigureAwait(false))
            {
                exitCode = ExitCodes.Failed;
            }
            // Last, so that a script waiting for the file to go waits for the image to be closed.
            pidFile?.Dispose();
        }
        return exitCode;
    }

    private static async Task<int> ServeAsync(ParseResult parse, string image, CompressedDevice device, ShutdownSignal shutdown, SystemdActivation? activation,
        NbdTlsCredentials? tls, Action<PidFile> pidWritten)
    {
        string name = parse.GetValue(s_name) ?? Path.GetFileNameWithoutExtension(image);
        bool readOnly = parse.GetValue(s_readOnly);
        UnixGroup? group = parse.GetValue(s_socketGroup);
        await using var monitor = new SpaceMonitor(device, image, Log);
        var options = new NbdServerOptions
        {
            Log = Log,
            MaxConnections = parse.GetValue(s_maxConnections),
            HandshakeTimeout = TimeSpan.FromSeconds(parse.GetValue(s_handshakeTimeout)),
            UnixSocketMode = parse.GetValue(s_socketMode) ?? (group is null ? SocketAccess.DefaultMode : SocketAccess.GroupMode),
            UnixSocketGroupId = group?.Id,
            TlsMode = TlsMode(parse.GetValue(s_tls)),
            TlsCredentials = tls,
        };
        var server = new NbdServer(monitor, name, readOnly, $"cbd image {Path.GetFileName(image)}", options);
        MetricsEndpoint? metrics = null;
        try
        {
            ListenAddress? listen = parse.GetValue(s_listen);
            string? socketPath = parse.GetValue(s_socket);
            var uris = new List<string>();
            // Before the NBD listeners: a taken metrics port then fails the start before any client could connect.
            if (parse.GetValue(s_metrics) is { } metricsAddress)
            {
                metrics = await MetricsEndpoint.StartAsync(metricsAddress, () => MetricsText.Render(device.GetStats(), device.Counters, server.Metrics), Log,
                    CancellationToken.None).ConfigureAwait(false);
                Log($"serving metrics on {metrics.Url}");
            }
            if (activation is not null)
            {
                uris.AddRange(activation.Start(server, name));
                socketPath = activation.UnixSocketPath;
            }
            else if (socketPath is not null || listen is null)
            {
                string option = socketPath is null ? "" : "--socket";
                socketPath ??= DefaultSocketPath(image);
                uris.Add(await Listeners.StartUnixAsync(server, socketPath, option, name, CancellationToken.None).ConfigureAwait(false));
            }
            if (listen is not null)
            {
                uris.Add(await Listeners.StartTcpAsync(server, listen, name, CancellationToken.None).ConfigureAwait(false));
                if (options.TlsMode != NbdTlsMode.Require)
                {
                    Log($"warning: --listen {listen}: the export is open to anyone who can reach the port; " +
                        "serve it with --tls require (and --tls-verify-peer to admit only clients with a certificate)");
                }
            }
            if (options.TlsMode != NbdTlsMode.Off)
            {
                uris = [.. uris.Select(TlsUri)];
            }
            DeviceStats stats = device.GetStats();
            foreach (string line in AttachHints.Lines(image, name, device.Size, device.BlockSize, server.IsReadOnly, stats.LblksUsed, uris, socketPath))
            {
                Console.WriteLine(line);
            }
            Console.Out.Flush();
            // Last: a script that waits for the pid file finds the server accepting and its URIs printed.
            if (parse.GetValue(s_pidFile) is { } pidPath)
            {
                pidWritten(PidFile.Write(pidPath));
            }

            string signal = await shutdown.WaitAsync().ConfigureAwait(false) == PosixSignal.SIGINT ? "SIGINT" : "SIGTERM";
            Log($"{signal}: shutting down: finishing requests in flight");
            return ExitCodes.Success;
        }
        finally
        {
            // Stops accepting, lets requests in flight finish, and removes the socket files.
            await server.StopAsync().ConfigureAwait(false);
            if (metrics is not null)
            {
                await metrics.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>Flushes (unless read-only) and closes the image; false, with the reason logged, when it could not be closed clean.</summary>
    private static async Task<bool> CloseAsync(string image, CompressedDevice device, bool readOnly)
    {
        bool clean = true;
        try
        {
            if (!readOnly)
            {
                await device.FlushAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException)
        {
            CommandRunner.Error($"flushing {image} failed: {ex.Message}");
            clean = false;
        }
        try
        {
            await device.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException)
        {
            CommandRunner.Error($"closing {image} failed: {ex.Message}");
            clean = false;
        }
        return clean;
    }

    private static async Task<CompressedDevice> CreateAsync(string image, long size, DeviceOptions options)
    {
        if (File.Exists(image) || Directory.Exists(image))
        {
            throw new CliException($"{image}: already exists; drop --create to serve it");
        }
        var format = FormatCommand.WithLog(new FormatOptions(), size, logSize: null);
        return await ImageFiles.CreateDeviceAsync(image, size, format, options, CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// A per-user runtime directory keeps the socket private to its user; /tmp is the fallback where none is set, where the
    /// socket's own mode (600 by default) keeps other users out. Unix socket paths are limited to 107 bytes, so the name stays short.
    /// </summary>
    private static string DefaultSocketPath(string image)
    {
        string directory = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime && Directory.Exists(runtime)
            ? runtime
            : "/tmp";
        return Path.Combine(directory, $"cbd-{Path.GetFileNameWithoutExtension(image)}.sock");
    }

    /// <summary>The credentials of --tls-certificates, null with --tls off; a file that is wrong is one line naming it.</summary>
    private static NbdTlsCredentials? LoadTlsCredentials(ParseResult parse)
    {
        if (TlsMode(parse.GetValue(s_tls)) == NbdTlsMode.Off)
        {
            return null;
        }
        try
        {
            return NbdTlsCredentials.Load(parse.GetValue(s_tlsCertificates)!, parse.GetValue(s_tlsVerifyPeer));
        }
        catch (IOException ex)
        {
            throw new CliException($"--tls-certificates: {CommandRunner.OneLine(ex.Message)}");
        }
    }

    private static NbdTlsMode TlsMode(NbdTlsMode? given) => given ?? NbdTlsMode.Off;

    /// <summary>off, on or require, as nbdkit spells them (any case).</summary>
    private static NbdTlsMode? ParseTlsMode(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        switch (text.ToLowerInvariant())
        {
            case "off":
                return NbdTlsMode.Off;
            case "on":
                return NbdTlsMode.On;
            case "require":
                return NbdTlsMode.Require;
            default:
                result.AddError($"--tls: '{text}', expected off, on or require.");
                return null;
        }
    }

    /// <summary>The URI of a TLS client (libnbd's nbds:// and nbds+unix:// schemes) for a listener's plain one.</summary>
    private static string TlsUri(string uri)
        => uri.StartsWith("nbd+unix://", StringComparison.Ordinal) ? "nbds+unix://" + uri["nbd+unix://".Length..]
            : uri.StartsWith("nbd://", StringComparison.Ordinal) ? "nbds://" + uri["nbd://".Length..]
            : uri;

    private static ListenAddress? ParseListen(ArgumentResult result) => ParseAddress(result, "--listen");

    private static ListenAddress? ParseAddress(ArgumentResult result, string option)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (ListenAddress.TryParse(text, out ListenAddress? address, out string error))
        {
            return address;
        }
        result.AddError($"{option}: {error}");
        return null;
    }

    private static double? ParseFlushDelay(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (double.TryParse(text, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double seconds) && seconds <= MaxFlushDelaySeconds)
        {
            return seconds;
        }
        result.AddError($"--flush-delay: invalid value '{text}': expected seconds from 0 to {MaxFlushDelaySeconds}, e.g. 5 or 0.5");
        return null;
    }

    /// <summary>"64M" rather than 67108864: the way the size would be typed.</summary>
    private static string Short(long bytes) => SizeParser.Format(bytes).Replace(" ", "", StringComparison.Ordinal).Replace("iB", "", StringComparison.Ordinal);

    private static void Log(string line) => Console.Error.WriteLine($"cbd: {line}");
}
