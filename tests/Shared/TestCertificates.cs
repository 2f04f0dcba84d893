namespace Cbd.TestTools;

/// <summary>
/// A throwaway PKI made with openssl, laid out as nbdkit, qemu and libnbd read their <c>tls-certificates</c>
/// directories: a CA, a server certificate for localhost and 127.0.0.1 signed by it, a client certificate signed
/// by it, and a client certificate signed by a second CA that the server does not trust.
/// </summary>
public sealed class TestCertificates
{
    private TestCertificates(string root) => Root = root;

    public string Root { get; }

    /// <summary>ca-cert.pem, server-cert.pem, server-key.pem: what <c>cbd serve --tls-certificates</c> and nbdkit take.</summary>
    public string ServerDirectory => Path.Combine(Root, "server");

    /// <summary>ca-cert.pem, client-cert.pem, client-key.pem: a client the server's CA signed.</summary>
    public string ClientDirectory => Path.Combine(Root, "client");

    /// <summary>ca-cert.pem only: a client that checks the server but has no certificate of its own.</summary>
    public string AnonymousClientDirectory => Path.Combine(Root, "anonymous");

    /// <summary>A client whose certificate another CA signed (it trusts the server's CA, so only the server can refuse it).</summary>
    public string ForeignClientDirectory => Path.Combine(Root, "foreign");

    public static async Task<TestCertificates> CreateAsync(string root)
    {
        var certificates = new TestCertificates(root);
        foreach (string directory in new[] { "ca", "other-ca", "server", "client", "anonymous", "foreign" })
        {
            Directory.CreateDirectory(Path.Combine(root, directory));
        }
        string ca = Path.Combine(root, "ca");
        string otherCa = Path.Combine(root, "other-ca");
        await MakeCaAsync(ca, "cbd test CA");
        await MakeCaAsync(otherCa, "another CA");
        string extensions = Path.Combine(root, "extensions.cnf");
        // qemu checks key usage and purpose when it loads a certificate; a critical flag it misses is an error.
        await File.WriteAllTextAsync(extensions,
            "[server]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" +
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n" +
            "[client]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n");
        await MakeLeafAsync(ca, certificates.ServerDirectory, "server", "localhost", extensions);
        await MakeLeafAsync(ca, certificates.ClientDirectory, "client", "cbd test client", extensions);
        await MakeLeafAsync(otherCa, certificates.ForeignClientDirectory, "client", "foreign client", extensions);
        foreach (string directory in new[] { certificates.ServerDirectory, certificates.ClientDirectory, certificates.AnonymousClientDirectory, certificates.ForeignClientDirectory })
        {
            File.Copy(Path.Combine(ca, "ca-cert.pem"), Path.Combine(directory, "ca-cert.pem"));
        }
        return certificates;
    }

    private static async Task MakeCaAsync(string directory, string name)
    {
        await ExternalTool.RunAsync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", $"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", Path.Combine(directory, "ca-key.pem"), "-out", Path.Combine(directory, "ca-cert.pem")]);
    }

    /// <summary>Makes <c>ROLE-key.pem</c> and <c>ROLE-cert.pem</c> in <paramref name="directory"/>, signed by the CA in <paramref name="ca"/>.</summary>
    private static async Task MakeLeafAsync(string ca, string directory, string role, string name, string extensions)
    {
        string key = Path.Combine(directory, $"{role}-key.pem");
        string request = Path.Combine(directory, $"{role}.csr");
        await ExternalTool.RunAsync("openssl", ["req", "-newkey", "rsa:2048", "-nodes", "-subj", $"/CN={name}", "-keyout", key, "-out", request]);
        await ExternalTool.RunAsync("openssl", ["x509", "-req", "-in", request, "-days", "2", "-CA", Path.Combine(ca, "ca-cert.pem"),
            "-CAkey", Path.Combine(ca, "ca-key.pem"), "-set_serial", Random.Shared.NextInt64(1, long.MaxValue).ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-extfile", extensions, "-extensions", role, "-out", Path.Combine(directory, $"{role}-cert.pem")]);
        File.Delete(request);
    }
}
