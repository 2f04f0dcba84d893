namespace Cbd.Integration.Tests;

/// <summary>A served image filling up: the client gets ENOSPC, and the server's log says so and warned before.</summary>
public sealed class SpaceTests
{
    private const int MiB = 1 << 20;

    /// <summary>
    /// 4 MiB of image (12 MiB of device) and 12 MiB of random data, which does not compress: nbdcopy fails with
    /// ENOSPC, and cbd serve's stderr carries a high-water warning and one line saying the image is full.
    /// </summary>
    [Fact]
    public async Task Filling_the_image_logs_high_water_warnings_and_the_refused_writes()
    {
        using var scratch = new ScratchDirectory();
        string random = scratch.File("random.bin");
        byte[] bytes = new byte[12 * MiB];
        new Random(5).NextBytes(bytes);
        await File.WriteAllBytesAsync(random, bytes);

        await using CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "4M", "--flush-delay", "0");
        var copy = await ExternalTool.TryRunAsync("nbdcopy", [random, server.Uri]);
        Assert.True(copy.ExitCode != 0, $"12 MiB of random data fit in a 4 MiB image: {copy}");

        await Poll.UntilAsync(() => server.StandardError.Contains("% full"), TimeSpan.FromSeconds(20), () => $"a high-water warning: {server.Output}");
        Assert.Contains("is full: a write of", server.StandardError);
        Assert.Contains("ENOSPC", server.StandardError);
        Assert.Contains("cbd resize", server.StandardError);
        // Rate-limited: a burst of refused writes is one line, not one per request.
        int fullLines = server.StandardError.Split('\n').Count(line => line.Contains(" is full: "));
        Assert.True(fullLines <= 2, $"{fullLines} lines about a full image in one burst: {server.Output}");
        await server.StopAsync();
    }
}
