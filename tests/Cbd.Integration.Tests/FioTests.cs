using System.Text.Json;

namespace Cbd.Integration.Tests;

/// <summary>fio's nbd engine (libnbd) writing and verifying through a real <c>cbd serve</c>.</summary>
public sealed class FioTests
{
    private const long MiB = 1 << 20;

    /// <summary>
    /// Two jobs at once, each on its own connection and its own 32 MiB (4 KiB random writes) or 64 MiB (1 MiB random
    /// writes) range, many requests in flight; then fio reads everything back and checks each block's CRC32C.
    /// </summary>
    [Theory]
    [InlineData("4k", 32, 16)]
    [InlineData("1m", 64, 4)]
    public async Task RandomWritesFromTwoJobs_VerifyWithCrc32c(string blockSize, int mibPerJob, int ioDepth)
    {
        using var scratch = new ScratchDirectory();
        // fio writes incompressible data: the image needs room for all of it.
        await using CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "192M");

        ExternalTool.Result result = await ExternalTool.RunAsync("fio",
        [
            "--name=cbd-verify", "--ioengine=nbd", $"--uri={server.Uri}",
            "--rw=randwrite", $"--bs={blockSize}", $"--size={mibPerJob}m", "--numjobs=2", $"--offset_increment={mibPerJob}m",
            $"--iodepth={ioDepth}", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
            "--output-format=json",
        ], TimeSpan.FromSeconds(120));
        await server.StopAsync();

        Assert.DoesNotContain("verify", result.StandardError, StringComparison.OrdinalIgnoreCase);
        using JsonDocument json = JsonDocument.Parse(JsonPart(result.StandardOutput));
        JsonElement[] jobs = [.. json.RootElement.GetProperty("jobs").EnumerateArray()];
        Assert.Equal(2, jobs.Length);
        foreach (JsonElement job in jobs)
        {
            Assert.True(job.GetProperty("error").GetInt32() == 0, $"fio job error: {result}");
            long written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
            long verified = job.GetProperty("read").GetProperty("io_bytes").GetInt64();
            Assert.Equal(mibPerJob * MiB, written);
            // The verify pass reads back every block written.
            Assert.Equal(written, verified);
        }
    }

    /// <summary>fio may print notices before its JSON document.</summary>
    private static string JsonPart(string output) => output[output.IndexOf('{', StringComparison.Ordinal)..];
}
