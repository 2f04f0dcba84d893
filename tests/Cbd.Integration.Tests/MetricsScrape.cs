using System.Globalization;
using System.Text.RegularExpressions;

namespace Cbd.Integration.Tests;

/// <summary>The <c>--metrics</c> endpoint of a real <c>cbd serve</c>, scraped with curl as a monitoring system would.</summary>
public static partial class MetricsScrape
{
    /// <summary>The URL <c>cbd serve --metrics</c> logged on stderr (port 0 becomes the port bound); it is logged before the pid file is written.</summary>
    public static async Task<string> WaitForUrlAsync(CbdServer server)
    {
        await Poll.UntilAsync(() => UrlLine().IsMatch(server.StandardError), TimeSpan.FromSeconds(10), () => $"the metrics URL on stderr: {server.Output}");
        return UrlLine().Match(server.StandardError).Groups[1].Value;
    }

    /// <summary>One scrape: the body of <c>GET /metrics</c>, with curl failing the test on any HTTP error.</summary>
    public static async Task<string> GetAsync(string url)
        => (await ExternalTool.RunAsync("curl", ["--silent", "--show-error", "--fail", url], TimeSpan.FromSeconds(30))).StandardOutput;

    /// <summary>The value of the sample <paramref name="series"/> (a name with its labels, as it appears in the scrape).</summary>
    public static double Value(string scrape, string series)
    {
        foreach (string line in scrape.Split('\n'))
        {
            if (line.StartsWith(series + " ", StringComparison.Ordinal))
            {
                return double.Parse(line[(series.Length + 1)..], CultureInfo.InvariantCulture);
            }
        }
        Assert.Fail($"no sample {series} in the scrape:\n{scrape}");
        return 0;
    }

    /// <summary><c>promtool check metrics</c> (Debian's prometheus package) on a scrape: the format and Prometheus' naming rules.</summary>
    public static async Task AssertValidAsync(string scrape, ScratchDirectory scratch)
    {
        string file = scratch.File($"scrape-{Guid.NewGuid():N}.txt");
        await File.WriteAllTextAsync(file, scrape);
        string promtool = ExternalTool.Require("promtool");
        ExternalTool.Result check = await ExternalTool.TryRunAsync("sh", ["-c", "\"$0\" check metrics < \"$1\"", promtool, file], TimeSpan.FromSeconds(30));
        Assert.True(check.ExitCode == 0 && check.StandardOutput.Length + check.StandardError.Length == 0, $"promtool found problems: {check}");
    }

    [GeneratedRegex(@"serving metrics on (http://\S+/metrics)")]
    private static partial Regex UrlLine();
}
