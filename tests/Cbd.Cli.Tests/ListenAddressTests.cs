using System.Net;
using Cbd.Cli.Serve;

namespace Cbd.Cli.Tests;

public class ListenAddressTests
{
    [Theory]
    [InlineData("10809", "127.0.0.1", 10809)]
    [InlineData("0", "127.0.0.1", 0)]
    [InlineData("65535", "127.0.0.1", 65535)]
    [InlineData("0.0.0.0:10809", "0.0.0.0", 10809)]
    [InlineData("192.168.1.7:1", "192.168.1.7", 1)]
    [InlineData("[::1]:10809", "::1", 10809)]
    [InlineData("[::]:10809", "::", 10809)]
    [InlineData("localhost:10809", "localhost", 10809)]
    [InlineData("nbd-server.example:10809", "nbd-server.example", 10809)]
    public void Parses(string text, string host, int port)
    {
        Assert.True(ListenAddress.TryParse(text, out ListenAddress? address, out string error), error);
        Assert.Equal(new ListenAddress(host, port), address);
    }

    [Theory]
    [InlineData("", "expected PORT")]
    [InlineData("abc", "expected PORT")]
    [InlineData("-1", "expected PORT")]
    [InlineData("+80", "expected PORT")]
    [InlineData("65536", "out of range")]
    [InlineData("99999999999999999999", "out of range")]
    [InlineData("127.0.0.1:", "expected PORT")]
    [InlineData("127.0.0.1:x", "expected PORT")]
    [InlineData(":80", "no host")]
    [InlineData("::1:80", "in brackets")]
    [InlineData("[127.0.0.1]:80", "not an IPv6 address")]
    [InlineData("[::1:80", "in brackets")]
    [InlineData("bad_host!:80", "neither an IP address nor a host name")]
    public void Refuses_with_a_message_naming_the_input(string text, string expected)
    {
        Assert.False(ListenAddress.TryParse(text, out _, out string error));
        Assert.Contains($"'{text}'", error);
        Assert.Contains(expected, error);
    }

    [Theory]
    [InlineData("127.0.0.1", 10809, "127.0.0.1:10809")]
    [InlineData("::1", 10809, "[::1]:10809")]
    public void Prints_as_it_is_typed(string host, int port, string expected)
        => Assert.Equal(expected, new ListenAddress(host, port).ToString());

    [Fact]
    public async Task Resolves_a_literal_without_asking_dns()
    {
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 7), await new ListenAddress("::1", 7).ResolveAsync(CancellationToken.None));
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 7), await new ListenAddress("127.0.0.1", 7).ResolveAsync(CancellationToken.None));
    }

    [Fact]
    public async Task Resolves_localhost_to_loopback()
    {
        IPEndPoint endPoint = await new ListenAddress("localhost", 10809).ResolveAsync(CancellationToken.None);
        Assert.True(IPAddress.IsLoopback(endPoint.Address), $"{endPoint}");
        Assert.Equal(10809, endPoint.Port);
    }
}
