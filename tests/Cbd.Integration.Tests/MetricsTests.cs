using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Cbd.Integration.Tests;

/// <summary><c>cbd serve --metrics</c>: scraped with curl while fio runs, checked with promtool, and agreeing with fio's own totals.</summary>
public sealed class MetricsTests
{
    /// <summary>
    /// fio does random 4 KiB reads and writes, paced so that it runs for about two seconds; a scrape taken while it
    /// runs already counts its writes and passes promtool, and once its connections are closed the read and write
    /// requests and bytes are exactly fio's totals from its JSON report.
    /// </summary>
    [Fact]
    public async Task Scrapes_during_and_after_fio_pass_promtool_and_count_exactly_what_fio_did()
    {
        using var scratch = new ScratchDirectory();
        await using CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "64M", "--metrics", "0");
        string url = await MetricsScrape.WaitForUrlAsync(server);
        Assert.StartsWith("http://127.0.0.1:", url);
        await MetricsScrape.AssertValidAsync(await MetricsScrape.GetAsync(url), scratch);

        await using ToolProcess fio = ExternalTool.Start("fio",
        [
            "--name=metrics", "--ioengine=nbd", $"--uri={server.Uri}", "--rw=randrw", "--bs=4k", "--size=8m", "--iodepth=8",
            "--rate_iops=500", "--randrepeat=0", "--eta=never", "--output-format=json",
        ]);
        string during = "";
        await Poll.UntilAsync(async () =>
        {
            during = await MetricsScrape.GetAsync(url);
            return MetricsScrape.Value(during, "cbd_nbd_requests_total{command=\"write\"}") > 0;
        }, TimeSpan.FromSeconds(30), () => $"a scrape counting fio's writes: {fio}");
        Assert.False(fio.HasExited, $"fio ended before a scrape saw its writes; the scrape was not taken during the run: {fio}");
        // fio's own connection at least; the one it probed the size with may not be counted closed yet.
        Assert.True(MetricsScrape.Value(during, "cbd_nbd_connections") >= 1, during);
        await MetricsScrape.AssertValidAsync(during, scratch);

        Assert.True(await fio.WaitForExitAsync(TimeSpan.FromSeconds(120)), $"fio did not finish: {fio}");
        Assert.True(fio.ExitCode == 0, $"fio failed: {fio}");
        // A request is counted once its reply is sent, which fio may see first: its connection closing comes after.
        string after = "";
        await Poll.UntilAsync(async () =>
        {
            after = await MetricsScrape.GetAsync(url);
            return MetricsScrape.Value(after, "cbd_nbd_connections") == 0;
        }, TimeSpan.FromSeconds(30), () => "fio's connections to be closed");
        await MetricsScrape.AssertValidAsync(after, scratch);

        string report = fio.StandardOutput;
        using JsonDocument json = JsonDocument.Parse(report[report.IndexOf('{', StringComparison.Ordinal)..]);
        JsonElement job = json.RootElement.GetProperty("jobs")[0];
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        foreach (string direction in new[] { "read", "write" })
        {
            long ios = job.GetProperty(direction).GetProperty("total_ios").GetInt64();
            long bytes = job.GetProperty(direction).GetProperty("io_bytes").GetInt64();
            Assert.True(ios > 0, $"fio did no {direction}s: {report}");
            Assert.Equal(ios, MetricsScrape.Value(after, $"cbd_nbd_requests_total{{command=\"{direction}\"}}"));
            Assert.Equal(bytes, MetricsScrape.Value(after, $"cbd_nbd_request_bytes_total{{command=\"{direction}\"}}"));
            Assert.Equal(0, MetricsScrape.Value(after, $"cbd_nbd_request_errors_total{{command=\"{direction}\"}}"));
            Assert.Equal(ios, MetricsScrape.Value(after, $"cbd_nbd_request_duration_seconds_count{{command=\"{direction}\"}}"));
        }
        Assert.Equal(8 << 20, MetricsScrape.Value(after, "cbd_nbd_request_bytes_total{command=\"read\"}")
            + MetricsScrape.Value(after, "cbd_nbd_request_bytes_total{command=\"write\"}"));
        // Written data is somewhere: in stored lblks, dirty in the cache, or in write log records not yet merged.
        Assert.True(MetricsScrape.Value(after, "cbd_lblks_used") + MetricsScrape.Value(after, "cbd_dirty_lblks")
            + MetricsScrape.Value(after, "cbd_log_pending_lblks") > 0, after);
        Assert.True(MetricsScrape.Value(after, "cbd_log_bytes") > 0, "the image has no write log: " + after);
        await server.StopAsync();
    }

    [Fact]
    public async Task Unknown_paths_are_404_and_a_taken_port_is_a_one_line_error()
    {
        using var scratch = new ScratchDirectory();
        await using (CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "64M", "--metrics", "0"))
        {
            string url = await MetricsScrape.WaitForUrlAsync(server);
            ExternalTool.Result missing = await ExternalTool.RunAsync("curl", ["--silent", "--output", "/dev/null", "--write-out", "%{http_code}", url.Replace("/metrics", "/nope")]);
            Assert.Equal("404", missing.StandardOutput);
            ExternalTool.Result post = await ExternalTool.RunAsync("curl", ["--silent", "--output", "/dev/null", "--write-out", "%{http_code}", "--data", "x", url]);
            Assert.Equal("405", post.StandardOutput);
            // The endpoint is still serving, and the device too.
            await MetricsScrape.AssertValidAsync(await MetricsScrape.GetAsync(url), scratch);
            await ExternalTool.RunAsync("nbdinfo", ["--size", server.Uri]);
            await server.StopAsync();
        }

        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        int port = ((IPEndPoint)taken.LocalEndpoint).Port;
        ExternalTool.Result refused = await ExternalTool.TryRunAsync(CbdServer.Executable,
            ["serve", scratch.File("disk.cbd"), "--socket", scratch.File("other.sock"), "--metrics", port.ToString(System.Globalization.CultureInfo.InvariantCulture)],
            TimeSpan.FromSeconds(30));
        Assert.True(refused.ExitCode == 1, $"expected exit 1: {refused}");
        Assert.Equal($"cbd: --metrics 127.0.0.1:{port}: port {port} on 127.0.0.1 is already in use by another program", refused.StandardError.Trim());
        Assert.False(File.Exists(scratch.File("other.sock")), $"the NBD socket was created although the start failed: {refused}");
    }
}
