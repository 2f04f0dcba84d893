using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Cbd.Nbd;

/// <summary>How a server offers TLS (the spec's modes, under nbdkit's and qemu-nbd's names).</summary>
public enum NbdTlsMode
{
    /// <summary>No TLS (the spec's NOTLS): NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP.</summary>
    Off,

    /// <summary>TLS at the client's choice: NBD_OPT_STARTTLS upgrades the connection, plaintext clients are served too.</summary>
    On,

    /// <summary>
    /// TLS for every client (the spec's FORCEDTLS): before NBD_OPT_STARTTLS every option but NBD_OPT_ABORT is
    /// answered NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME, which cannot be refused, closes the connection.
    /// </summary>
    Require,
}

/// <summary>
/// The server's certificate and, with peer verification, the CA that client certificates must be signed by. Read
/// from a directory laid out as nbdkit and qemu read theirs: <c>ca-cert.pem</c>, <c>server-cert.pem</c> (the
/// certificate, then any intermediates) and <c>server-key.pem</c>.
/// </summary>
public sealed class NbdTlsCredentials
{
    public const string CaCertificateFile = "ca-cert.pem";
    public const string ServerCertificateFile = "server-cert.pem";
    public const string ServerKeyFile = "server-key.pem";

    private readonly SslStreamCertificateContext _certificate;
    private readonly X509Certificate2Collection? _clientCa;

    private NbdTlsCredentials(SslStreamCertificateContext certificate, X509Certificate2Collection? clientCa)
    {
        _certificate = certificate;
        _clientCa = clientCa;
    }

    /// <summary>True when only clients with a certificate signed by the CA get in.</summary>
    public bool VerifyPeer => _clientCa is not null;

    /// <summary>Reads the credentials in <paramref name="directory"/>.</summary>
    /// <param name="verifyPeer">Require a client certificate signed by the CA in <c>ca-cert.pem</c>, which must then exist.</param>
    /// <exception cref="IOException">A file is missing, unreadable or not what it should be; the message names it and says why.</exception>
    public static NbdTlsCredentials Load(string directory, bool verifyPeer)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!Directory.Exists(directory))
        {
            ThrowHelper.ThrowIO($"{directory}: no such directory");
        }
        string certPath = Path.Combine(directory, ServerCertificateFile);
        string keyPath = Path.Combine(directory, ServerKeyFile);
        string caPath = Path.Combine(directory, CaCertificateFile);
        RequireFile(certPath);
        RequireFile(keyPath);

        X509Certificate2 certificate;
        var intermediates = new X509Certificate2Collection();
        try
        {
            certificate = X509Certificate2.CreateFromPemFile(certPath, keyPath);
            intermediates.ImportFromPemFile(certPath);
        }
        catch (CryptographicException ex)
        {
            throw new IOException($"{certPath} with {keyPath}: not a PEM certificate and its private key: {ex.Message}", ex);
        }
        if (!certificate.HasPrivateKey)
        {
            ThrowHelper.ThrowIO($"{keyPath}: does not hold the private key of {certPath}");
        }
        // The first certificate of the file is the server's own; the rest, if any, are intermediates sent with it.
        intermediates.RemoveAt(0);

        X509Certificate2Collection? clientCa = null;
        if (verifyPeer)
        {
            RequireFile(caPath);
            clientCa = [];
            try
            {
                clientCa.ImportFromPemFile(caPath);
            }
            catch (CryptographicException ex)
            {
                throw new IOException($"{caPath}: not a PEM certificate: {ex.Message}", ex);
            }
            if (clientCa.Count == 0)
            {
                ThrowHelper.ThrowIO($"{caPath}: holds no certificate");
            }
        }
        return new NbdTlsCredentials(SslStreamCertificateContext.Create(certificate, intermediates, offline: true), clientCa);
    }

    /// <summary>
    /// The options of one connection's TLS handshake. TLS 1.2 and 1.3 only: the spec asks for 1.2 at least and
    /// for older versions only by configuration. With peer verification, <paramref name="onClientRejected"/> gets
    /// why a client certificate was refused.
    /// </summary>
    internal SslServerAuthenticationOptions CreateOptions(Action<string> onClientRejected)
    {
        var options = new SslServerAuthenticationOptions
        {
            ServerCertificateContext = _certificate,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ClientCertificateRequired = _clientCa is not null,
            AllowRenegotiation = false,
        };
        if (_clientCa is not null)
        {
            // Trust the given CA and nothing else: not the system's roots, which would let in any certificate a
            // public CA ever signed.
            var policy = new X509ChainPolicy
            {
                TrustMode = X509ChainTrustMode.CustomRootTrust,
                RevocationMode = X509RevocationMode.NoCheck,
            };
            policy.CustomTrustStore.AddRange(_clientCa);
            options.CertificateChainPolicy = policy;
            options.RemoteCertificateValidationCallback = (_, certificate, chain, errors) =>
            {
                if (errors == SslPolicyErrors.None)
                {
                    return true;
                }
                onClientRejected(certificate is null
                    ? "the client sent no certificate"
                    : $"client certificate \"{certificate.Subject}\" refused: {Describe(errors, chain)}");
                return false;
            };
        }
        return options;
    }

    private static string Describe(SslPolicyErrors errors, X509Chain? chain)
    {
        if ((errors & SslPolicyErrors.RemoteCertificateChainErrors) != 0 && chain is not null && chain.ChainStatus.Length > 0)
        {
            return string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct());
        }
        return errors.ToString();
    }

    private static void RequireFile(string path)
    {
        if (!File.Exists(path))
        {
            ThrowHelper.ThrowIO($"{path}: no such file");
        }
    }
}
