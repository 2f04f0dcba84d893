using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Cbd.Nbd.Tests;

/// <summary>
/// <see cref="NbdServer.Start(Socket)"/>: serving a socket someone else bound and listens on, as systemd passes one.
/// </summary>
public sealed partial class ListeningSocketTests
{
    [Fact]
    public async Task A_listening_Unix_socket_is_served_and_its_file_is_left_after_stop()
    {
        string directory = Directory.CreateTempSubdirectory("cbd-nbd-").FullName;
        string path = Path.Combine(directory, "passed.sock");
        try
        {
            // .NET unlinks the file of a socket it bound itself when that Socket is disposed, so the server gets a
            // duplicate descriptor of it, as a process started by systemd gets one it did not bind.
            using var binder = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            binder.Bind(new UnixDomainSocketEndPoint(path));
            binder.Listen();
            var passed = new Socket(new SafeSocketHandle(Dup((int)binder.Handle), ownsHandle: true));

            await using var device = new MemoryBlockDevice(1 << 20);
            var server = new NbdServer(device, "passed");
            Assert.Equal(path, server.Start(passed).ToString());

            ExternalTool.Result info = await ExternalTool.RunAsync("nbdinfo", ["--size", $"nbd+unix:///passed?socket={path}"]);
            Assert.Equal($"{1 << 20}", info.StandardOutput.Trim());

            await server.StopAsync();
            Assert.Throws<ObjectDisposedException>(() => passed.Accept());
            Assert.True(File.Exists(path), "the server deleted a socket file it did not create");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task A_listening_TCP_socket_is_served_on_its_port()
    {
        var listening = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listening.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listening.Listen();
        int port = ((IPEndPoint)listening.LocalEndPoint!).Port;

        await using var device = new MemoryBlockDevice(1 << 20);
        await using var server = new NbdServer(device);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, port), server.Start(listening));
        Assert.Contains(new IPEndPoint(IPAddress.Loopback, port), server.EndPoints);

        ExternalTool.Result info = await ExternalTool.RunAsync("nbdinfo", ["--size", $"nbd://127.0.0.1:{port}/"]);
        Assert.Equal($"{1 << 20}", info.StandardOutput.Trim());
    }

    [Fact]
    public async Task A_socket_that_does_not_listen_or_is_not_a_stream_is_refused()
    {
        await using var device = new MemoryBlockDevice(1 << 20);
        await using var server = new NbdServer(device);

        using var bound = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        bound.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Assert.Throws<ArgumentException>(() => server.Start(bound));

        using var datagram = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        datagram.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        Assert.Throws<ArgumentException>(() => server.Start(datagram));

        Assert.Empty(server.EndPoints);
    }

    private static int Dup(int fd)
    {
        int copy = SysDup(fd);
        Assert.True(copy >= 0, $"dup({fd}) failed: errno {Marshal.GetLastPInvokeError()}");
        return copy;
    }

    [LibraryImport("libc", EntryPoint = "dup", SetLastError = true)]
    private static partial int SysDup(int fd);
}
