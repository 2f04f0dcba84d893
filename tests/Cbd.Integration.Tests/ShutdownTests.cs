namespace Cbd.Integration.Tests;

/// <summary>SIGTERM while a real client is writing: the documented graceful shutdown, seen from outside.</summary>
public sealed class ShutdownTests
{
    private const long MiB = 1 << 20;

    /// <summary>
    /// fio keeps 2 x 16 requests in flight when <c>cbd serve</c> gets SIGTERM. The server must exit 0 with its
    /// socket removed and the image closed clean (no recovery on the next open); data flushed before is intact and
    /// fio's writes that were answered are on the image.
    /// </summary>
    [Fact]
    public async Task SigtermDuringFioWrites_ExitsZero_ClosesTheImageClean_FlushedDataIntact()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");

        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "128M", "--metrics", "0"))
        {
            string metrics = await MetricsScrape.WaitForUrlAsync(server);
            await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x6b 0 8M", "flush"]);
            const string Writes = "cbd_nbd_requests_total{command=\"write\"}";
            double before = MetricsScrape.Value(await MetricsScrape.GetAsync(metrics), Writes);

            await using ToolProcess fio = ExternalTool.Start("fio",
            [
                "--name=load", "--ioengine=nbd", $"--uri={server.Uri}", "--rw=randwrite", "--bs=64k",
                "--offset=16m", "--size=24m", "--numjobs=2", "--offset_increment=24m", "--iodepth=16",
                "--time_based", "--runtime=60", "--eta=never",
            ]);
            // fio is in full flow once the server has answered a few rounds of its 2 x 16 writes in flight.
            await Poll.UntilAsync(async () => MetricsScrape.Value(await MetricsScrape.GetAsync(metrics), Writes) >= before + 64, TimeSpan.FromSeconds(30),
                () => $"the server to answer 64 of fio's writes: {fio}");
            Assert.False(fio.HasExited, $"fio should still be writing when the server is stopped: {fio}");

            await server.StopAsync();

            // Its server gone, fio stops on an I/O error; that is expected, only its exit matters here.
            Assert.True(await fio.WaitForExitAsync(TimeSpan.FromSeconds(30)), $"fio did not notice the server stopping: {fio}");
        }

        Assert.False(await ImageInspection.NeedsRecoveryAsync(image), "the image was not closed clean after SIGTERM");

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await ExternalTool.QemuIoAsync(server.Uri, ["read -P 0x6b 0 8M", "read -P 0 8M 8M"], readOnly: true);
            // Allocated: the flushed 8 MiB and whatever fio wrote in its 16-64 MiB range, nothing else.
            var data = (await NbdMap.ReadAsync(server.Uri)).Where(e => e.Type == NbdMap.Data).ToList();
            Assert.Equal((0L, 8 * MiB, NbdMap.Data), data[0]);
            Assert.True(data.Count > 1, "nothing fio wrote reached the image");
            Assert.All(data.Skip(1), e => Assert.True(e.Offset >= 16 * MiB && e.Offset + e.Length <= 64 * MiB, $"data outside fio's range: {e}"));
            await server.StopAsync();
        }
    }
}
