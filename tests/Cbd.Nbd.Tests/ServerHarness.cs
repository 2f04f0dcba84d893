using System.Net.Sockets;
using Cbd.Core.Engine;

namespace Cbd.Nbd.Tests;

/// <summary>An <see cref="NbdServer"/> on a Unix socket in a fresh temporary directory, removed on dispose.</summary>
public sealed class ServerHarness : IAsyncDisposable
{
    private readonly List<string> _log = [];

    private ServerHarness(IBlockDevice device, string exportName, bool readOnly, string? description, NbdServerOptions options)
    {
        Device = device;
        Directory = Path.Combine(Path.GetTempPath(), "cbd-nbd-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(Directory);
        Server = new NbdServer(device, exportName, readOnly, description, options with
        {
            Log = line =>
            {
                lock (_log)
                {
                    _log.Add(line);
                }
            },
        });
    }

    public IBlockDevice Device { get; }
    public NbdServer Server { get; }
    public string Directory { get; }
    public string SocketPath => Path.Combine(Directory, "nbd.sock");

    /// <summary>The URI of the default export, as libnbd and qemu take it.</summary>
    public string Uri => $"nbd+unix:///?socket={SocketPath}";

    public IReadOnlyList<string> Log
    {
        get
        {
            lock (_log)
            {
                return [.. _log];
            }
        }
    }

    public static async Task<ServerHarness> StartAsync(
        IBlockDevice device, string exportName = "", bool readOnly = false, string? description = null, NbdServerOptions? options = null)
    {
        var harness = new ServerHarness(device, exportName, readOnly, description, options ?? new NbdServerOptions());
        await harness.Server.StartAsync(new UnixDomainSocketEndPoint(harness.SocketPath));
        return harness;
    }

    public Task<RawNbdClient> ConnectAsync() => RawNbdClient.ConnectAsync(SocketPath);

    public async ValueTask DisposeAsync()
    {
        await Server.StopAsync();
        await Device.DisposeAsync();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
