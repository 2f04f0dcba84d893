namespace Cbd.Integration.Tests;

/// <summary>qemu-io's small writes through a write log of the least size, so that it wraps and merges many times.</summary>
public sealed class WriteLogQemuIoTests
{
    private const int Lblk = 65536;
    private const int Writes = 1200;

    // The lblk written over, and the neighbours a write may reach into: [Lblk * 4, Lblk * 7).
    private const int RegionStart = 4 * Lblk;
    private const int RegionLength = 3 * Lblk;

    /// <summary>
    /// 512 B to 8 KiB at unaligned offsets over one lblk and into its neighbours, alternately a byte pattern (a
    /// record that compresses) and random bytes (one that does not), each pattern read back with <c>read -P</c> at
    /// once; then every byte of the device compared with the model through nbdcopy, before and after a restart
    /// (a clean stop, or a SIGKILL after qemu-io's closing flush).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task SmallUnalignedWrites_WrapTheLeastLog_ReadBackAcrossRestart(bool kill)
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        long logBytes = (long)Cbd.Core.Format.Geometry.MinLogPblks(Lblk) * 4096;
        await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "16M", "--log-size", logBytes.ToString(), "--quiet"]);
        WriteLogState formatted = await WriteLogImage.AssertHasLogAsync(image, logBytes);

        var random = new Random(20261130);
        byte[] source = new byte[8192];
        random.NextBytes(source);
        string sourceFile = scratch.File("random.bin");
        await File.WriteAllBytesAsync(sourceFile, source);

        byte[] model = new byte[RegionLength];
        var commands = new List<string>();
        for (int n = 0; n < Writes; n++)
        {
            int length = random.Next(512, 8193);
            int offset = Lblk - 8192 + random.Next(Lblk + 2 * 8192 - length);
            if (n % 2 == 0)
            {
                byte pattern = (byte)random.Next(1, 256);
                commands.Add($"write -q -P 0x{pattern:x2} {RegionStart + offset} {length}");
                commands.Add($"read -q -P 0x{pattern:x2} {RegionStart + offset} {length}");
                model.AsSpan(offset, length).Fill(pattern);
            }
            else
            {
                // -s: the write's bytes are the file's first length bytes.
                commands.Add($"write -q -s {sourceFile} {RegionStart + offset} {length}");
                source.AsSpan(0, length).CopyTo(model.AsSpan(offset));
            }
        }

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await ExternalTool.QemuIoAsync(server.Uri, commands, timeout: TimeSpan.FromSeconds(180));
            await AssertDeviceMatchesAsync(server.Uri, model, scratch.File("before.raw"));
            if (kill)
            {
                await server.KillAsync();
            }
            else
            {
                await server.StopAsync();
            }
        }

        WriteLogState afterRun = await WriteLogImage.ReadAsync(image);
        // Each write took at least one record of at least one sector, so log_seq counts laps of the ring from below.
        long laps = (long)(afterRun.LogSeq - formatted.LogSeq) * 512 / logBytes;
        Assert.True(laps >= 4, $"the writes went round the {logBytes}-byte log only {laps} times: {afterRun}");
        if (!kill)
        {
            Assert.True(afterRun is { Records: 0, Dirty: false }, $"a clean stop leaves the log empty: {afterRun}");
        }

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await AssertDeviceMatchesAsync(server.Uri, model, scratch.File("after.raw"));
            await server.StopAsync();
        }
        WriteLogState closed = await WriteLogImage.ReadAsync(image);
        Assert.True(closed is { Records: 0, Dirty: false }, $"a clean stop leaves the log empty: {closed}");
    }

    /// <summary>The whole device through nbdcopy: the region as the model says, zeros everywhere else.</summary>
    private static async Task AssertDeviceMatchesAsync(string uri, byte[] model, string copy)
    {
        await ExternalTool.RunAsync("nbdcopy", [uri, copy], TimeSpan.FromSeconds(120));
        byte[] device = await File.ReadAllBytesAsync(copy);
        long differs = -1;
        for (int i = 0; i < device.Length && differs < 0; i++)
        {
            byte expected = i >= RegionStart && i < RegionStart + RegionLength ? model[i - RegionStart] : (byte)0;
            if (device[i] != expected)
            {
                differs = i;
            }
        }
        Assert.True(differs < 0, $"byte {differs} of the device (lblk {differs / Lblk}, offset {differs % Lblk} in it) differs from what was written");
        File.Delete(copy);
    }
}
