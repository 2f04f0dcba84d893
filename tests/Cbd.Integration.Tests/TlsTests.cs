using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Cbd.Integration.Tests;

/// <summary>
/// <c>cbd serve --tls</c> with real TLS clients: nbdinfo and nbdcopy (libnbd, GnuTLS) through <c>nbds://</c> and
/// <c>nbds+unix://</c> URIs, qemu-img through a <c>tls-creds-x509</c> object, on TCP and on the Unix socket, with
/// certificates made by openssl for each test.
/// </summary>
public sealed partial class TlsTests
{
    private const long MiB = 1 << 20;

    private sealed record TlsServer(CbdServer Server, TestCertificates Certificates, int Port) : IAsyncDisposable
    {
        public string TcpUri(string clientDirectory) => $"nbds://127.0.0.1:{Port}/?tls-certificates={clientDirectory}";

        public string UnixUri(string clientDirectory) => $"nbds+unix:///?socket={Server.SocketPath}&tls-certificates={clientDirectory}";

        public ValueTask DisposeAsync() => Server.DisposeAsync();
    }

    private static async Task<TlsServer> StartAsync(ScratchDirectory scratch, string mode, bool verifyPeer)
    {
        TestCertificates certificates = await TestCertificates.CreateAsync(scratch.Directory("pki"));
        string[] options = ["--listen", "127.0.0.1:0", "--tls", mode, "--tls-certificates", certificates.ServerDirectory, .. verifyPeer ? new[] { "--tls-verify-peer" } : []];
        CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "64M", options);
        await server.WaitForStandardOutputAsync("nbds://127.0.0.1:");
        int port = int.Parse(TcpUriPattern().Match(server.StandardOutput).Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        return new TlsServer(server, certificates, port);
    }

    [GeneratedRegex(@"nbds://127\.0\.0\.1:(\d+)/")]
    private static partial Regex TcpUriPattern();

    private static async Task<JsonElement> ExportInfoAsync(string uri)
    {
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--json", uri]);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput);
        return Assert.Single(json.RootElement.GetProperty("exports").EnumerateArray()).Clone();
    }

    private static string[] QemuTlsObject(string clientDirectory) => ["--object", $"tls-creds-x509,id=tls0,dir={clientDirectory},endpoint=client"];

    [Fact]
    public async Task Require_NbdinfoAndQemuImg_ConnectOverTls_OnTcpAndOnTheUnixSocket()
    {
        using var scratch = new ScratchDirectory();
        await using TlsServer tls = await StartAsync(scratch, "require", verifyPeer: false);
        string client = tls.Certificates.ClientDirectory;

        foreach (string uri in new[] { tls.TcpUri(client), tls.UnixUri(client) })
        {
            Assert.Equal(192 * MiB, (await ExportInfoAsync(uri)).GetProperty("export-size").GetInt64());
            ExternalTool.Result text = await ExternalTool.RunAsync("nbdinfo", [uri]);
            Assert.Contains("with TLS", text.StandardOutput);
        }
        foreach (string options in new[]
        {
            $"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={tls.Port},tls-creds=tls0",
            // Over a Unix socket qemu has no host name to check the server certificate against unless told one.
            $"driver=nbd,server.type=unix,server.path={tls.Server.SocketPath},tls-creds=tls0,tls-hostname=localhost",
        })
        {
            ExternalTool.Result info = await ExternalTool.RunAsync("qemu-img", ["info", .. QemuTlsObject(client), "--image-opts", options]);
            Assert.Contains("virtual size: 192 MiB (201326592 bytes)", info.StandardOutput);
        }
        await tls.Server.StopAsync();
    }

    [Fact]
    public async Task Require_NbdcopyAndQemuImgConvert_CopyInAndOutOverTls()
    {
        using var scratch = new ScratchDirectory();
        await using TlsServer tls = await StartAsync(scratch, "require", verifyPeer: true);
        string client = tls.Certificates.ClientDirectory;
        string raw = scratch.File("in.raw");
        byte[] data = new byte[24 * MiB];
        Random.Shared.NextBytes(data.AsSpan(0, 8 * (int)MiB));
        data.AsSpan(16 * (int)MiB, 4 * (int)MiB).Fill(0x5a);
        await File.WriteAllBytesAsync(raw, data);
        byte[] expected = SHA256.HashData(data);

        // nbdcopy in over TCP, out over the Unix socket, each with its multiple connections.
        await ExternalTool.RunAsync("nbdcopy", [raw, tls.TcpUri(client)], TimeSpan.FromSeconds(120));
        string outRaw = scratch.File("out.raw");
        await ExternalTool.RunAsync("nbdcopy", [tls.UnixUri(client), outRaw], TimeSpan.FromSeconds(120));
        Assert.Equal(expected, SHA256.HashData(File.ReadAllBytes(outRaw).AsSpan(0, data.Length)));

        // qemu-img convert out over TCP, then new data in over the Unix socket.
        string qemuOut = scratch.File("qemu-out.raw");
        string tcp = $"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={tls.Port},tls-creds=tls0";
        await ExternalTool.RunAsync("qemu-img", ["convert", .. QemuTlsObject(client), "--image-opts", tcp, "-O", "raw", qemuOut], TimeSpan.FromSeconds(120));
        Assert.Equal(expected, SHA256.HashData(File.ReadAllBytes(qemuOut).AsSpan(0, data.Length)));

        // Other bytes, so that what comes back shows the write happened.
        Random.Shared.NextBytes(data.AsSpan(0, 8 * (int)MiB));
        await File.WriteAllBytesAsync(raw, data);
        expected = SHA256.HashData(data);
        string unix = $"driver=nbd,server.type=unix,server.path={tls.Server.SocketPath},tls-creds=tls0,tls-hostname=localhost";
        await ExternalTool.RunAsync("qemu-img", ["convert", "-n", .. QemuTlsObject(client), "-f", "raw", raw, "--target-image-opts", unix], TimeSpan.FromSeconds(120));
        string again = scratch.File("again.raw");
        await ExternalTool.RunAsync("nbdcopy", [tls.TcpUri(client), again], TimeSpan.FromSeconds(120));
        Assert.Equal(expected, SHA256.HashData(File.ReadAllBytes(again).AsSpan(0, data.Length)));
        await tls.Server.StopAsync();
    }

    [Fact]
    public async Task Require_APlaintextClientIsRefused_OnTcpAndOnTheUnixSocket()
    {
        using var scratch = new ScratchDirectory();
        await using TlsServer tls = await StartAsync(scratch, "require", verifyPeer: false);
        foreach (string uri in new[] { $"nbd://127.0.0.1:{tls.Port}/", tls.Server.Uri })
        {
            ExternalTool.Result result = await ExternalTool.TryRunAsync("nbdinfo", [uri]);
            Assert.NotEqual(0, result.ExitCode);
            Assert.DoesNotContain("export-size", result.StandardOutput);
        }
        // The server's reason reaches a client that shows it (libnbd logs it under LIBNBD_DEBUG).
        ExternalTool.Result debug = await ExternalTool.TryRunAsync("/bin/sh", ["-c", $"LIBNBD_DEBUG=1 nbdinfo '{tls.Server.Uri}'"]);
        Assert.Contains("this server requires TLS: send NBD_OPT_STARTTLS first", debug.StandardError);
        await tls.Server.StopAsync();
    }

    [Fact]
    public async Task On_ServesPlaintextAndTlsClients()
    {
        using var scratch = new ScratchDirectory();
        await using TlsServer tls = await StartAsync(scratch, "on", verifyPeer: false);
        Assert.Contains("without TLS", (await ExternalTool.RunAsync("nbdinfo", [tls.Server.Uri])).StandardOutput);
        Assert.Contains("with TLS", (await ExternalTool.RunAsync("nbdinfo", [tls.TcpUri(tls.Certificates.ClientDirectory)])).StandardOutput);
        Assert.Contains($"listening on 127.0.0.1:{tls.Port} (TLS offered)", tls.Server.StandardError);
        // Listening on TCP without --tls require: the warning is on stderr.
        Assert.Contains("warning: --listen 127.0.0.1:0: the export is open to anyone who can reach the port", tls.Server.StandardError);
        await tls.Server.StopAsync();
    }

    [Fact]
    public async Task VerifyPeer_RefusesAClientWithoutACertificate_OrWithAnotherCasOne_AndServesTheNextClient()
    {
        using var scratch = new ScratchDirectory();
        await using TlsServer tls = await StartAsync(scratch, "require", verifyPeer: true);
        Assert.DoesNotContain("warning", tls.Server.StandardError);
        Assert.Contains($"listening on 127.0.0.1:{tls.Port} (TLS required, client certificates verified)", tls.Server.StandardError);

        foreach (string directory in new[] { tls.Certificates.AnonymousClientDirectory, tls.Certificates.ForeignClientDirectory })
        {
            foreach (string uri in new[] { tls.TcpUri(directory), tls.UnixUri(directory) })
            {
                ExternalTool.Result refused = await ExternalTool.TryRunAsync("nbdinfo", [uri]);
                Assert.NotEqual(0, refused.ExitCode);
                Assert.DoesNotContain("export-size", refused.StandardOutput);
            }
        }
        // (qemu is not among these clients: it checks its own certificate against its CA before connecting.)
        await Poll.UntilAsync(() => Regex.Count(tls.Server.StandardError, "TLS handshake failed, closing: the client sent no certificate") == 2,
            TimeSpan.FromSeconds(10), () => tls.Server.Output);
        await Poll.UntilAsync(() => Regex.Count(tls.Server.StandardError, "TLS handshake failed, closing: client certificate \"CN=foreign client\" refused") == 2,
            TimeSpan.FromSeconds(10), () => tls.Server.Output);
        Assert.Equal(192 * MiB, (await ExportInfoAsync(tls.TcpUri(tls.Certificates.ClientDirectory))).GetProperty("export-size").GetInt64());
        await tls.Server.StopAsync();
    }

    [Fact]
    public async Task UnderSocketActivation_TlsIsRequiredOnThePassedSocket()
    {
        using var scratch = new ScratchDirectory();
        TestCertificates certificates = await TestCertificates.CreateAsync(scratch.Directory("pki"));
        string image = scratch.File("disk.cbd");
        await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "64M"]);
        string socket = scratch.File("activated.sock");
        await using ToolProcess activator = await SocketActivationTests.StartActivatorAsync(socket,
            ["serve", image, "--tls", "require", "--tls-certificates", certificates.ServerDirectory, "--tls-verify-peer"]);

        string uri = $"nbds+unix:///?socket={socket}&tls-certificates={certificates.ClientDirectory}";
        Assert.Equal(192 * MiB, (await ExportInfoAsync(uri)).GetProperty("export-size").GetInt64());
        Assert.NotEqual(0, (await ExternalTool.TryRunAsync("nbdinfo", [$"nbd+unix:///?socket={socket}"])).ExitCode);
        await SocketActivationTests.StopAsync(activator);
        Assert.Contains($"nbds+unix:///disk?socket={socket}", activator.StandardOutput);
    }

    [Theory]
    [InlineData(new[] { "--tls", "require" }, "--tls require needs --tls-certificates DIR.")]
    [InlineData(new[] { "--tls-verify-peer" }, "--tls-certificates and --tls-verify-peer need --tls on or --tls require.")]
    [InlineData(new[] { "--tls", "bogus" }, "--tls: 'bogus', expected off, on or require.")]
    public async Task TlsOptionsThatDoNotGoTogether_AreAUsageError(string[] options, string message)
    {
        using var scratch = new ScratchDirectory();
        ExternalTool.Result result = await ExternalTool.TryRunAsync(CbdServer.Executable,
            ["serve", scratch.File("disk.cbd"), "--create", "--size", "64M", "--socket", scratch.File("nbd.sock"), .. options]);
        Assert.Equal(2, result.ExitCode);
        Assert.Contains(message, result.StandardError);
        Assert.False(File.Exists(scratch.File("disk.cbd")));
    }

    [Fact]
    public async Task ACertificateDirectoryWithoutTheServerKey_IsOneLineNamingIt_AndTheImageIsNotCreated()
    {
        using var scratch = new ScratchDirectory();
        TestCertificates certificates = await TestCertificates.CreateAsync(scratch.Directory("pki"));
        File.Delete(Path.Combine(certificates.ServerDirectory, "server-key.pem"));
        ExternalTool.Result result = await ExternalTool.TryRunAsync(CbdServer.Executable,
            ["serve", scratch.File("disk.cbd"), "--create", "--size", "64M", "--socket", scratch.File("nbd.sock"),
                "--tls", "require", "--tls-certificates", certificates.ServerDirectory]);
        Assert.Equal(1, result.ExitCode);
        Assert.Equal($"cbd: --tls-certificates: {certificates.ServerDirectory}/server-key.pem: no such file", result.StandardError.Trim());
        Assert.False(File.Exists(scratch.File("disk.cbd")));
    }
}
