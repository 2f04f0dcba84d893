using System.Text.Json;

namespace Cbd.Integration.Tests;

/// <summary>fio's nbd engine (libnbd) writing small blocks through the write log of a default-format image, verified across a restart.</summary>
public sealed class WriteLogFioTests
{
    private const long MiB = 1 << 20;
    // Less than half the default log of a 256 MiB image (32 MiB) even as records (a 4 KiB write of incompressible data
    // takes 4.5 KiB): no merge is due before fio ends, so records are there to see.
    private const long JobBytes = 12 * MiB;

    /// <summary>
    /// Random writes smaller than an lblk at iodepth 16 go to the log; fio verifies every block's CRC32C after its write
    /// phase. Then the image's log holds records; the clean stop merges them all and leaves the log empty;
    /// served again, <c>fio --verify_only</c> of the same job (same seed, so the same blocks) finds every block intact.
    /// </summary>
    [Theory]
    [InlineData("--bs=4k")]
    [InlineData("--bsrange=512-64k")]
    public async Task RandomSmallWrites_Verify_ThenVerifyOnlyAfterCleanRestart(string blockSizes)
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");

        // fio writes incompressible data: the image needs room for all of it, besides its log (an eighth). Records are
        // merged when the log is half full, and all of them once no write came for the flush delay: a long delay keeps
        // them in the log after fio's verify pass, however long that takes, for the test to see.
        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "256M", "--flush-delay", "600"))
        {
            await WriteLogImage.AssertHasLogAsync(image);
            AssertJobDone(await ExternalTool.RunAsync("fio", Job(server.Uri, blockSizes, verifyOnly: false), TimeSpan.FromSeconds(180)));
            WriteLogState served = await WriteLogImage.ReadAsync(image);
            Assert.True(served.Records > 0, $"after fio's writes the log holds no record: {served}");
            await server.StopAsync();
        }
        WriteLogState closed = await WriteLogImage.ReadAsync(image);
        Assert.True(closed is { Records: 0, Dirty: false } && closed.LogSeq > 0,
            $"after a clean stop the log should be empty, with records appended and retired: {closed}");

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            AssertJobDone(await ExternalTool.RunAsync("fio", Job(server.Uri, blockSizes, verifyOnly: true), TimeSpan.FromSeconds(180)));
            await server.StopAsync();
        }
        WriteLogState reclosed = await WriteLogImage.ReadAsync(image);
        // No record appended either: the verify pass only read, so it checked what the first server left.
        Assert.True(reclosed is { Records: 0, Dirty: false } && reclosed.LogSeq == closed.LogSeq, $"after the second clean stop: {reclosed}, before: {closed}");
    }

    /// <summary>
    /// On a log of the least size: a first fio job's 4 KiB random writes, ended by a flush (end_fsync) and verified; then
    /// a second job's 512 B to 16 KiB random writes over another range, the server SIGKILLed while they go on, the log
    /// wrapping and holding records. Served again (recovery), the first job verifies in full, the device reads the
    /// same after a clean stop and a new server, and the first job verifies again. The log is always under pressure there,
    /// so merges store lblks patched (docs/FORMAT.md, "Patched lblks"): the kill comes after some did, as the server's
    /// metrics count them.
    /// </summary>
    [Fact]
    public async Task FlushedBlocksVerify_AfterSigkillDuringSmallWrites_OnTheLeastLog()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        long logBytes = (long)Cbd.Core.Format.Geometry.MinLogPblks(65536) * 4096;
        await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "128M", "--log-size", logBytes.ToString(), "--quiet"]);
        WriteLogState formatted = await WriteLogImage.AssertHasLogAsync(image, logBytes);
        const long SecondStart = 2 * JobBytes;

        await using (CbdServer server = await CbdServer.StartAsync(image, socket, "--metrics", "0"))
        {
            string metrics = await MetricsScrape.WaitForUrlAsync(server);
            AssertJobDone(await ExternalTool.RunAsync("fio", [.. Job(server.Uri, "--bs=4k", verifyOnly: false), "--end_fsync=1"], TimeSpan.FromSeconds(180)));
            await using ToolProcess second = ExternalTool.Start("fio",
            [
                "--name=cbd-log-2", "--ioengine=nbd", $"--uri={server.Uri}", "--rw=randwrite", "--bsrange=512-16k",
                $"--offset={SecondStart}", $"--size={JobBytes}", "--iodepth=16", "--time_based", "--runtime=120",
            ]);
            // Ten laps of the ring at least since the first job ended, records in it now, and lblks stored patched.
            WriteLogState running = formatted;
            double patched = 0;
            ulong seqBefore = (await WriteLogImage.ReadAsync(image)).LogSeq;
            await Poll.UntilAsync(async () =>
            {
                Assert.False(second.HasExited, $"the second fio job ended before the kill: {second}");
                running = await WriteLogImage.ReadAsync(image);
                patched = MetricsScrape.Value(await MetricsScrape.GetAsync(metrics), "cbd_patched_write_backs_total");
                return running.Records > 0 && (long)(running.LogSeq - seqBefore) * 512 >= 10 * logBytes && patched > 0;
            }, TimeSpan.FromSeconds(100), () => $"ten laps of the log, records in it and lblks stored patched ({patched}): {running}");
            await server.KillAsync();
        }
        WriteLogState killed = await WriteLogImage.ReadAsync(image);
        Assert.True(killed is { Dirty: true, Records: > 0 }, $"the kill should leave a dirty image with records in its log: {killed}");

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            AssertJobDone(await ExternalTool.RunAsync("fio", Job(server.Uri, "--bs=4k", verifyOnly: true), TimeSpan.FromSeconds(180)));
            await server.StopAsync();
        }
        await WriteLogImage.AssertReadsSameAcrossCleanRestartAsync(image, socket, scratch, "after the SIGKILL");
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            AssertJobDone(await ExternalTool.RunAsync("fio", Job(server.Uri, "--bs=4k", verifyOnly: true), TimeSpan.FromSeconds(180)));
            await server.StopAsync();
        }
        WriteLogState closed = await WriteLogImage.ReadAsync(image);
        Assert.True(closed is { Records: 0, Dirty: false }, $"a clean stop leaves the log empty: {closed}");
    }

    private static string[] Job(string uri, string blockSizes, bool verifyOnly) =>
    [
        "--name=cbd-log", "--ioengine=nbd", $"--uri={uri}", "--rw=randwrite", blockSizes, $"--size={JobBytes}",
        "--iodepth=16", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randseed=1130", "--output-format=json",
        .. verifyOnly ? new[] { "--verify_only" } : [],
    ];

    private static void AssertJobDone(ExternalTool.Result result)
    {
        Assert.DoesNotContain("verify", result.StandardError, StringComparison.OrdinalIgnoreCase);
        using JsonDocument json = JsonDocument.Parse(result.StandardOutput[result.StandardOutput.IndexOf('{', StringComparison.Ordinal)..]);
        JsonElement job = Assert.Single(json.RootElement.GetProperty("jobs").EnumerateArray());
        Assert.True(job.GetProperty("error").GetInt32() == 0, $"fio job error: {result}");
        long written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
        long verified = job.GetProperty("read").GetProperty("io_bytes").GetInt64();
        // --verify_only counts the writes it replays without sending them.
        Assert.True(written == JobBytes, $"fio wrote {written} bytes: {result}");
        // Every block written is read back and checked.
        Assert.True(verified == JobBytes, $"fio verified {verified} of {JobBytes} bytes: {result}");
    }
}
