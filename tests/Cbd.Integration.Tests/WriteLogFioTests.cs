using System.Text.Json;

namespace Cbd.Integration.Tests;

/// <summary>fio's nbd engine (libnbd) writing small blocks through the write log of a default-format image, verified across a restart.</summary>
public sealed class WriteLogFioTests
{
    private const long MiB = 1 << 20;
    private const long JobBytes = 32 * MiB;

    /// <summary>
    /// Random writes smaller than an lblk at iodepth 16 go to the log; fio verifies every block's CRC32C after its write
    /// phase. While it runs the image's log holds records; the clean stop merges them all and leaves the log empty;
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
        long recordsSeen = 0;

        // fio writes incompressible data: the image needs room for all of it, besides its log (an eighth).
        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "256M"))
        {
            await WriteLogImage.AssertHasLogAsync(image);
            Task<ExternalTool.Result> fio = ExternalTool.RunAsync("fio", Job(server.Uri, blockSizes, verifyOnly: false), TimeSpan.FromSeconds(180));
            // The log as a reader would find it, while fio writes: records the server has appended and not yet retired.
            while (!fio.IsCompleted && recordsSeen == 0)
            {
                recordsSeen = (await WriteLogImage.ReadAsync(image)).Records;
                await Task.WhenAny(fio, Task.Delay(20));
            }
            AssertJobDone(await fio);
            await server.StopAsync();
        }
        Assert.True(recordsSeen > 0, "the log was never seen holding a record while fio wrote");
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
