using System.Buffers.Binary;
using System.Security.Cryptography.X509Certificates;
using Cbd.TestTools;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>Certificates made once for the TLS tests, in a directory removed afterwards.</summary>
public sealed class TlsCertificatesFixture : IAsyncLifetime
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "cbd-tls-" + Guid.NewGuid().ToString("N")[..12]);

    public TestCertificates Certificates { get; private set; } = null!;
    public X509Certificate2 Ca { get; private set; } = null!;
    public X509Certificate2 Client { get; private set; } = null!;
    public X509Certificate2 ForeignClient { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Certificates = await TestCertificates.CreateAsync(_root);
        Ca = X509CertificateLoader.LoadCertificateFromFile(Path.Combine(Certificates.ServerDirectory, "ca-cert.pem"));
        Client = X509Certificate2.CreateFromPemFile(Path.Combine(Certificates.ClientDirectory, "client-cert.pem"),
            Path.Combine(Certificates.ClientDirectory, "client-key.pem"));
        ForeignClient = X509Certificate2.CreateFromPemFile(Path.Combine(Certificates.ForeignClientDirectory, "client-cert.pem"),
            Path.Combine(Certificates.ForeignClientDirectory, "client-key.pem"));
    }

    public Task DisposeAsync()
    {
        Directory.Delete(_root, recursive: true);
        return Task.CompletedTask;
    }
}

/// <summary>NBD_OPT_STARTTLS and the TLS modes, byte by byte against a raw client that speaks TLS with .NET's SslStream.</summary>
public sealed class TlsTests(TlsCertificatesFixture fixture) : IClassFixture<TlsCertificatesFixture>
{
    private const uint OptExtendedHeaders = 11;
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    private Task<ServerHarness> StartAsync(NbdTlsMode mode, bool verifyPeer = false, TimeSpan? handshakeTimeout = null)
        => ServerHarness.StartAsync(new MemoryBlockDevice(1 << 20), options: new NbdServerOptions
        {
            TlsMode = mode,
            TlsCredentials = NbdTlsCredentials.Load(fixture.Certificates.ServerDirectory, verifyPeer),
            HandshakeTimeout = handshakeTimeout ?? TimeSpan.FromSeconds(10),
        });

    private static async Task<RawNbdClient> ConnectAsync(ServerHarness harness)
    {
        RawNbdClient client = await harness.ConnectAsync();
        await client.ReadGreetingAsync();
        await client.SendClientFlagsAsync(3);
        return client;
    }

    private static async Task PollAsync(Func<bool> condition, string message)
    {
        var deadline = DateTime.UtcNow + s_timeout;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, message);
            await Task.Delay(10);
        }
    }

    /// <summary>A write then a read of the same bytes, over whatever the client negotiated.</summary>
    private static async Task AssertDataFlowsAsync(RawNbdClient client)
    {
        byte[] data = new byte[100_000];
        Random.Shared.NextBytes(data);
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 4096, (uint)data.Length, payload: data));
        await client.SendRequestAsync(CmdRead, 2, 4096, (uint)data.Length);
        List<Reply> chunks = await client.ReadStructuredReplyAsync(2);
        Assert.Equal(data, AssembleRead(chunks, 4096, data.Length));
    }

    [Theory]
    [InlineData(OptList)]
    [InlineData(OptInfo)]
    [InlineData(OptGo)]
    [InlineData(OptStructuredReply)]
    [InlineData(OptListMetaContext)]
    [InlineData(OptSetMetaContext)]
    [InlineData(OptExtendedHeaders)]
    [InlineData(99u)]
    public async Task Require_AnOptionBeforeStartTls_GetsTlsRequired(uint option)
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(option, option is OptInfo or OptGo ? InfoRequest("") : []);
        OptionReply reply = await client.ReadOptionReplyAsync();
        Assert.Equal((option, RepErrTlsReqd), (reply.Option, reply.Type));

        // The refusal changes nothing: the client may still upgrade, then the same option works.
        await client.StartTlsAsync(fixture.Ca);
        await client.NegotiateAsync();
        await AssertDataFlowsAsync(client);
    }

    [Fact]
    public async Task Require_AnOversizedOptionBeforeStartTls_GetsTlsRequired()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptList, new byte[(64 << 10) + 1]);
        Assert.Equal(RepErrTlsReqd, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task Require_AbortBeforeStartTls_IsAcknowledged()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptAbort, []);
        Assert.Equal(RepAck, (await client.ReadOptionReplyAsync()).Type);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task Require_ExportNameBeforeStartTls_ClosesTheConnection()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptExportName, []);
        Assert.True(await client.IsClosedByServerAsync(), "NBD_OPT_EXPORT_NAME without TLS was not refused by a close");
        Assert.Contains(harness.Log, line => line.Contains("NBD_OPT_EXPORT_NAME without TLS while TLS is required, closing"));
    }

    [Fact]
    public async Task Require_AfterStartTls_ExportNameEntersTransmission()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.StartTlsAsync(fixture.Ca);
        await client.SendOptionAsync(OptExportName, []);
        byte[] reply = await client.ReadExactlyAsync(10);
        Assert.Equal(1ul << 20, BinaryPrimitives.ReadUInt64BigEndian(reply));
        Assert.Equal(0u, await client.RoundTripAsync(CmdFlush, 0, 0));
    }

    [Fact]
    public async Task StartTls_Twice_IsInvalid_AndWithData_IsInvalid()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.On);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptStartTls, [1]);
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
        await client.StartTlsAsync(fixture.Ca);
        await client.SendOptionAsync(OptStartTls, []);
        Assert.Equal(RepErrInvalid, (await client.ReadOptionReplyAsync()).Type);
        await client.NegotiateAsync();
        await AssertDataFlowsAsync(client);
    }

    [Fact]
    public async Task On_ServesPlaintextAndTlsClients()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.On);
        await using RawNbdClient plain = await ConnectAsync(harness);
        await plain.NegotiateAsync();
        await AssertDataFlowsAsync(plain);

        await using RawNbdClient tls = await ConnectAsync(harness);
        await tls.StartTlsAsync(fixture.Ca);
        await tls.NegotiateAsync();
        await AssertDataFlowsAsync(tls);
    }

    [Fact]
    public async Task StartTls_DropsWhatWasAgreedInPlaintext()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.On);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptStructuredReply, []);
        Assert.Equal(RepAck, (await client.ReadOptionReplyAsync()).Type);
        await client.StartTlsAsync(fixture.Ca);
        // Without NBD_OPT_STRUCTURED_REPLY again, the export has no NBD_FLAG_SEND_DF (bit 7), and errors are simple replies.
        var (_, flags) = await client.NegotiateAsync(structured: false);
        Assert.Equal(0, flags & (1 << 7));
        await client.SendRequestAsync(CmdRead, 5, 1 << 20, 1);
        Reply reply = await client.ReadReplyAsync();
        Assert.True(reply.IsSimple);
        Assert.Equal(EInval, reply.Error);
    }

    [Fact]
    public async Task Off_StartTlsIsUnsupported()
    {
        await using ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(1 << 20));
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptStartTls, []);
        Assert.Equal(RepErrUnsup, (await client.ReadOptionReplyAsync()).Type);
    }

    [Fact]
    public async Task AClientHangingUpMidTlsHandshake_CostsOnlyItsConnection()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require);
        await using RawNbdClient served = await ConnectAsync(harness);
        await served.StartTlsAsync(fixture.Ca);
        await served.NegotiateAsync();

        await using (RawNbdClient quitter = await ConnectAsync(harness))
        {
            await quitter.SendOptionAsync(OptStartTls, []);
            Assert.Equal(RepAck, (await quitter.ReadOptionReplyAsync()).Type);
            // The first bytes of a TLS record header (handshake, TLS 1.0 record version), then gone.
            await quitter.SendAsync(new byte[] { 0x16, 0x03, 0x01 });
        }
        await PollAsync(() => harness.Log.Any(line => line.Contains("TLS handshake failed, closing")), "no log line for the failed TLS handshake");
        Assert.Single(harness.Log, line => line.Contains("TLS handshake failed"));
        await PollAsync(() => harness.Server.ConnectionCount == 1, "the connection of the client that hung up was not closed");

        await AssertDataFlowsAsync(served);
        await using RawNbdClient next = await ConnectAsync(harness);
        await next.StartTlsAsync(fixture.Ca);
        await next.NegotiateAsync();
        await AssertDataFlowsAsync(next);
    }

    [Fact]
    public async Task AClientSilentAfterStartTls_IsClosedByTheHandshakeTimeout()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require, handshakeTimeout: TimeSpan.FromSeconds(1));
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.SendOptionAsync(OptStartTls, []);
        Assert.Equal(RepAck, (await client.ReadOptionReplyAsync()).Type);
        Assert.True(await client.IsClosedByServerAsync(), "a client silent in the TLS handshake was not closed");
        Assert.Contains(harness.Log, line => line.Contains("handshake not finished within 1 s, closing"));
        Assert.DoesNotContain(harness.Log, line => line.Contains("TLS handshake failed"));
    }

    [Fact]
    public async Task VerifyPeer_AdmitsAClientCertificateSignedByTheCa()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require, verifyPeer: true);
        await using RawNbdClient client = await ConnectAsync(harness);
        await client.StartTlsAsync(fixture.Ca, fixture.Client);
        await client.NegotiateAsync();
        await AssertDataFlowsAsync(client);
    }

    [Fact]
    public async Task VerifyPeer_RefusesAClientWithoutACertificate()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require, verifyPeer: true);
        await using RawNbdClient client = await ConnectAsync(harness);
        try
        {
            await client.StartTlsAsync(fixture.Ca);
            await client.SendOptionAsync(OptList, []);
            Assert.True(await client.IsClosedByServerAsync(), "a client without a certificate was served");
        }
        catch (Exception ex) when (ex is IOException or System.Security.Authentication.AuthenticationException)
        {
            // Under TLS 1.2 the refusal comes within the client's own handshake.
        }
        await PollAsync(() => harness.Log.Any(line => line.Contains("TLS handshake failed, closing: the client sent no certificate")),
            $"no log line for the refusal: {string.Join('\n', harness.Log)}");
    }

    [Fact]
    public async Task VerifyPeer_RefusesAClientCertificateOfAnotherCa()
    {
        await using ServerHarness harness = await StartAsync(NbdTlsMode.Require, verifyPeer: true);
        await using RawNbdClient client = await ConnectAsync(harness);
        try
        {
            await client.StartTlsAsync(fixture.Ca, fixture.ForeignClient);
            await client.SendOptionAsync(OptList, []);
            Assert.True(await client.IsClosedByServerAsync(), "a client with another CA's certificate was served");
        }
        catch (Exception ex) when (ex is IOException or System.Security.Authentication.AuthenticationException)
        {
        }
        await PollAsync(() => harness.Log.Any(line => line.Contains("client certificate \"CN=foreign client\" refused")),
            $"no log line for the refusal: {string.Join('\n', harness.Log)}");
        Assert.Single(harness.Log, line => line.Contains("TLS handshake failed"));
    }

    [Fact]
    public void Credentials_WithAMissingFile_NameIt()
    {
        var ex = Assert.Throws<IOException>(() => NbdTlsCredentials.Load(fixture.Certificates.ClientDirectory, verifyPeer: false));
        Assert.Contains("server-cert.pem: no such file", ex.Message);
        ex = Assert.Throws<IOException>(() => NbdTlsCredentials.Load(fixture.Certificates.Root, verifyPeer: false));
        Assert.Contains("server-cert.pem: no such file", ex.Message);
    }
}
