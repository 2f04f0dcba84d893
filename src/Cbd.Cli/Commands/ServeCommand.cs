using System.CommandLine;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Cbd.Core.Engine;
using Cbd.Core.Storage;
using Cbd.Nbd;

namespace Cbd.Cli.Commands;

/// <summary>
/// <c>cbd serve IMAGE</c>: opens (or creates) an image and serves it over NBD until SIGINT or SIGTERM, then
/// finishes in-flight requests, flushes, closes the image clean and removes its socket.
/// </summary>
public static class ServeCommand
{
    private static readonly Argument<string> s_image = new("IMAGE") { Description = "The cbd image file (or block device) to serve." };

    private static readonly Option<string?> s_socket = new("--socket")
    {
        Description = "Unix socket to listen on. Default, unless --listen is given: $XDG_RUNTIME_DIR/cbd-NAME.sock, or /tmp/cbd-NAME.sock without XDG_RUNTIME_DIR, NAME being the image file name without its extension.",
        HelpName = "PATH",
    };

    private static readonly Option<string?> s_listen = new("--listen")
    {
        Description = "Also or instead listen on TCP: PORT (on 127.0.0.1) or HOST:PORT. Without --socket, only TCP is served.",
        HelpName = "[HOST:]PORT",
    };

    private static readonly Option<string?> s_name = new("--name")
    {
        Description = "Export name. Default: the image file name without its extension. Clients asking for the default (empty) name get this export too.",
        HelpName = "EXPORT",
    };

    private static readonly Option<bool> s_readOnly = new("--read-only") { Description = "Open the image read-only and refuse writes." };

    private static readonly Option<long> s_cache = new("--cache")
    {
        Description = "Memory for the lblk cache, e.g. 256M.",
        HelpName = "SIZE",
        CustomParser = SizeParser.ParseArgument,
        DefaultValueFactory = _ => new DeviceOptions().CacheBytes,
    };

    private static readonly Option<double> s_flushDelay = new("--flush-delay")
    {
        Description = "Seconds a written lblk may stay in the cache before it is written back.",
        HelpName = "SECONDS",
        DefaultValueFactory = _ => new DeviceOptions().FlushDelay.TotalSeconds,
    };

    private static readonly Option<string?> s_pidFile = new("--pid-file")
    {
        Description = "Write the process id here once the server accepts connections; removed on exit.",
        HelpName = "PATH",
    };

    private static readonly Option<bool> s_create = new("--create") { Description = "Create and format IMAGE, which must not exist yet (needs --size)." };

    private static readonly Option<long?> s_size = CliOptions.Size("--size",
        "With --create: size of the new image file, e.g. 10G. The logical size is 3 times that.");

    public static Command Create()
    {
        var command = new Command("serve", "Serve an image over NBD until interrupted. " +
            "Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM); 1 the image could not be opened or served, or not closed clean; 2 the command line was not understood.")
        {
            s_image, s_socket, s_listen, s_name, s_readOnly, s_cache, s_flushDelay, s_pidFile, s_create, s_size,
        };
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
            if (result.GetValue(s_flushDelay) is < 0 or > 86400)
            {
                result.AddError("--flush-delay must be between 0 and 86400 seconds.");
            }
            if (result.GetResult(s_cache) is not null && result.GetValue(s_cache) <= 0)
            {
                result.AddError("--cache must be larger than 0.");
            }
        });
        command.SetAction((parseResult, _) => RunAsync(parseResult));
        return command;
    }

    private static async Task<int> RunAsync(ParseResult parse)
    {
        string image = parse.GetRequiredValue(s_image);
        bool readOnly = parse.GetValue(s_readOnly);
        string name = parse.GetValue(s_name) ?? Path.GetFileNameWithoutExtension(image);
        string? pidFile = parse.GetValue(s_pidFile);
        var deviceOptions = new DeviceOptions
        {
            ReadOnly = readOnly,
            CacheBytes = parse.GetValue(s_cache),
            FlushDelay = TimeSpan.FromSeconds(parse.GetValue(s_flushDelay)),
        };

        EndPoint? tcp = null;
        string? socketPath = parse.GetValue(s_socket);
        SystemdActivation? activation;
        try
        {
            if (parse.GetValue(s_listen) is { } listen)
            {
                tcp = ParseListen(listen);
            }
            activation = SystemdActivation.Take(listenersGiven: socketPath is not null || tcp is not null);
        }
        catch (Exception ex) when (ex is FormatException or CliException)
        {
            return Fail(ex.Message);
        }
        if (socketPath is null && tcp is null && activation is null)
        {
            socketPath = DefaultSocketPath(image);
        }

        CompressedDevice device;
        try
        {
            device = await OpenDeviceAsync(image, parse.GetValue(s_create), parse.GetValue(s_size), deviceOptions).ConfigureAwait(false);
        }
        catch (Exception ex) when (IsUserError(ex))
        {
            return Fail($"{image}: {ex.Message}");
        }

        using var shutdown = new ShutdownSignal();
        var server = new NbdServer(device, name, readOnly, $"cbd image {Path.GetFileName(image)}",
            new NbdServerOptions { Log = line => Console.Error.WriteLine($"cbd: {line}") });
        int exitCode = 0;
        bool pidWritten = false;
        try
        {
            var uris = new List<string>();
            if (activation is not null)
            {
                uris.AddRange(activation.Start(server, name));
            }
            if (socketPath is not null)
            {
                await server.StartAsync(new UnixDomainSocketEndPoint(socketPath)).ConfigureAwait(false);
                uris.Add($"nbd+unix:///{Uri.EscapeDataString(name)}?socket={socketPath}");
            }
            if (tcp is not null)
            {
                var bound = (IPEndPoint)await server.StartAsync(tcp).ConfigureAwait(false);
                string host = bound.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{bound.Address}]" : bound.Address.ToString();
                uris.Add($"nbd://{host}:{bound.Port}/{Uri.EscapeDataString(name)}");
            }
            if (pidFile is not null)
            {
                // Written whole, then renamed into place: a script polling for it never reads it half-written.
                string partial = pidFile + ".partial";
                await File.WriteAllTextAsync(partial, $"{Environment.ProcessId}\n").ConfigureAwait(false);
                File.Move(partial, pidFile, overwrite: true);
                pidWritten = true;
            }
            PrintBanner(image, device, name, readOnly, uris, socketPath ?? activation?.UnixSocketPath);
            await shutdown.WaitAsync().ConfigureAwait(false);
            Console.Error.WriteLine("cbd: shutting down: finishing requests in flight");
        }
        catch (Exception ex) when (IsUserError(ex))
        {
            Console.Error.WriteLine($"cbd: {ex.Message}");
            exitCode = 1;
        }

        try
        {
            await server.StopAsync().ConfigureAwait(false);
            if (!readOnly)
            {
                await device.FlushAsync().ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (IsUserError(ex))
        {
            Console.Error.WriteLine($"cbd: flushing {image} failed: {ex.Message}");
            exitCode = 1;
        }
        finally
        {
            try
            {
                await device.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (IsUserError(ex))
            {
                Console.Error.WriteLine($"cbd: closing {image} failed: {ex.Message}");
                exitCode = 1;
            }
            if (socketPath is not null && exitCode == 0)
            {
                TryDelete(socketPath);
            }
            if (pidWritten)
            {
                TryDelete(pidFile!);
            }
        }
        return exitCode;
    }

    private static async Task<CompressedDevice> OpenDeviceAsync(string image, bool create, long? size, DeviceOptions options)
    {
        FileBackingStore store;
        if (create)
        {
            if (File.Exists(image))
            {
                throw new IOException("already exists; drop --create to serve it");
            }
            store = FileBackingStore.Create(image, size!.Value);
            try
            {
                await CompressedDevice.FormatAsync(store, new FormatOptions()).ConfigureAwait(false);
            }
            catch
            {
                await store.DisposeAsync().ConfigureAwait(false);
                TryDelete(image);
                throw;
            }
        }
        else
        {
            if (!File.Exists(image))
            {
                throw new FileNotFoundException("no such file (use --create --size SIZE to make a new image)");
            }
            store = FileBackingStore.Open(image, writable: !options.ReadOnly);
        }
        try
        {
            return await CompressedDevice.OpenAsync(store, options).ConfigureAwait(false);
        }
        catch
        {
            await store.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static void PrintBanner(string image, CompressedDevice device, string name, bool readOnly, List<string> uris, string? socketPath)
    {
        if (device.Recovered)
            Console.Error.WriteLine($"cbd: {image} was not closed cleanly: pbats and usage rebuilt from the lbats");
        Console.WriteLine($"cbd: serving {image} as export \"{name}\": {SizeParser.Format(device.Size)}, lblk {SizeParser.Format(device.BlockSize)}{(readOnly ? ", read-only" : "")}");
        foreach (string uri in uris)
        {
            Console.WriteLine($"  {uri}");
        }
        string first = uris[0];
        string fuse = $"/tmp/{name}-fuse";
        Console.WriteLine("Attach with:");
        Console.WriteLine($"  nbdinfo '{first}'                      # size, block sizes, capabilities");
        Console.WriteLine($"  qemu-img info '{first}'                # or -drive file={first},format=raw");
        if (socketPath is not null)
        {
            Console.WriteLine($"  modprobe nbd && nbd-client -unix {socketPath} -N {name} /dev/nbd0");
        }
        else
        {
            var uri = new Uri(first);
            Console.WriteLine($"  modprobe nbd && nbd-client {uri.Host.Trim('[', ']')} {uri.Port} -N {name} /dev/nbd0");
        }
        Console.WriteLine($"  mkdir -p {fuse} /mnt/{name} && nbdfuse {fuse} '{first}' &");
        Console.WriteLine($"  loop=$(losetup -f --show {fuse}/nbd) && mkfs.ext4 $loop && mount $loop /mnt/{name}");
        Console.Out.Flush();
    }

    /// <summary>
    /// A per-user runtime directory keeps the socket private to its user; /tmp is the fallback where none is set.
    /// Unix socket paths are limited to 107 bytes, so the name stays short.
    /// </summary>
    private static string DefaultSocketPath(string image)
    {
        string directory = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime && Directory.Exists(runtime)
            ? runtime
            : "/tmp";
        return Path.Combine(directory, $"cbd-{Path.GetFileNameWithoutExtension(image)}.sock");
    }

    /// <summary>Parses <c>PORT</c> (loopback), <c>HOST:PORT</c> or <c>[IPv6]:PORT</c>.</summary>
    /// <exception cref="FormatException">The text is none of those; the message says what was expected.</exception>
    private static IPEndPoint ParseListen(string text)
    {
        if (ushort.TryParse(text, out ushort port))
        {
            return new IPEndPoint(IPAddress.Loopback, port);
        }
        int colon = text.LastIndexOf(':');
        if (colon > 0 && ushort.TryParse(text.AsSpan(colon + 1), out port))
        {
            string host = text[..colon].Trim('[', ']');
            if (IPAddress.TryParse(host, out IPAddress? address))
            {
                return new IPEndPoint(address, port);
            }
            try
            {
                IPAddress[] addresses = Dns.GetHostAddresses(host);
                if (addresses.Length > 0)
                {
                    return new IPEndPoint(addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? addresses[0], port);
                }
            }
            catch (SocketException)
            {
            }
            throw new FormatException($"--listen {text}: cannot resolve host '{host}'");
        }
        throw new FormatException($"--listen {text}: expected PORT or HOST:PORT with PORT from 0 to 65535");
    }

    private static bool IsUserError(Exception ex)
        => ex is IOException or UnauthorizedAccessException or InvalidDataException or ArgumentException or SocketException or FormatException;

    private static int Fail(string message)
    {
        Console.Error.WriteLine($"cbd: {message}");
        return 1;
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

    /// <summary>
    /// Completes on the first SIGINT or SIGTERM and keeps the process alive for the graceful shutdown; a second
    /// signal is left to its default action, so an impatient user can still end the process at once.
    /// </summary>
    private sealed class ShutdownSignal : IDisposable
    {
        private readonly TaskCompletionSource _signalled = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly PosixSignalRegistration _interrupt;
        private readonly PosixSignalRegistration _terminate;

        public ShutdownSignal()
        {
            _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle);
            _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle);
        }

        public Task WaitAsync() => _signalled.Task;

        private void Handle(PosixSignalContext context) => context.Cancel = _signalled.TrySetResult();

        public void Dispose()
        {
            _interrupt.Dispose();
            _terminate.Dispose();
        }
    }
}
