using System.Text.Json;
using Cbd.Core.Storage;
using Cbd.TestTools;

namespace Cbd.Cli.Tests;

/// <summary>
/// Thin backing end to end: cbd serve gives freed pblks back to the image file (--discard unmap, the default) or leaves
/// them (ignore), cbd info shows what the file takes, and cbd trim releases the free pblks of a closed image.
/// </summary>
public class TrimCommandTests
{
    private const long MiB = 1 << 20;

    /// <summary>
    /// 16 MiB of random data written, rewritten and discarded by qemu-io through the real server, which is then stopped.
    /// With unmap the file holds the metadata and little more, and trim finds nothing left to release; with ignore it holds
    /// the data last stored, and trim gives it back.
    /// </summary>
    [Theory]
    [InlineData("unmap")]
    [InlineData("ignore")]
    public async Task Freed_pblks_leave_the_file_as_serve_frees_them_or_when_trim_runs(string discard)
    {
        using var scratch = new Scratch();
        string image = scratch.File("thin.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        string random = scratch.File("random.bin");
        await File.WriteAllBytesAsync(random, RandomBytes(16 * (int)MiB, 1));
        string again = scratch.File("again.bin");
        await File.WriteAllBytesAsync(again, RandomBytes(16 * (int)MiB, 2));

        await ServeAsync(scratch, image, ["--discard", discard], async uri =>
        {
            await ExternalTool.QemuIoAsync(uri, [$"write -s {random} 0 16M", "flush"]);
            await ExternalTool.QemuIoAsync(uri, [$"write -s {again} 0 16M", "flush"]);
            long served = await AllocatedAsync(image);
            Assert.True(served >= 16 * MiB, $"{served} bytes allocated while 16 MiB of random data is stored");
            await ExternalTool.QemuIoAsync(uri, ["discard 0 16M", "flush"]);
        });

        long before = await AllocatedAsync(image);
        var text = await CbdTool.RunAsync(0, "info", image);
        Assert.Contains("store allocated", text.StandardOutput);
        var trim = await CbdTool.RunAsync(0, "trim", image, "--json");
        using var report = JsonDocument.Parse(trim.StandardOutput);
        var root = report.RootElement;
        Assert.Equal(image, root.GetProperty("image").GetString());
        Assert.Equal("pbats_and_lbats", root.GetProperty("source").GetString());
        Assert.Equal(before, root.GetProperty("allocated_bytes_before").GetInt64());
        long after = root.GetProperty("allocated_bytes_after").GetInt64();
        Assert.Equal(before - after, root.GetProperty("released_bytes").GetInt64());
        Assert.Equal(after, await AllocatedAsync(image));
        if (discard == "unmap")
        {
            Assert.True(before < 2 * MiB, $"{before} bytes still allocated after everything was discarded");
            Assert.True(before - after < 256 * 1024, $"trim released {before - after} bytes the server should have released");
        }
        else
        {
            Assert.True(before >= 16 * MiB, $"only {before} bytes allocated with --discard ignore");
            Assert.True(after < 2 * MiB, $"{after} bytes still allocated after trim");
        }
        var check = await CbdTool.RunAsync(0, "check", image, "--data", "--json");
        using var checkReport = JsonDocument.Parse(check.StandardOutput);
        Assert.Equal("clean", checkReport.RootElement.GetProperty("result").GetString());
    }

    /// <summary>Trim punches only free pblks: the lblks still stored read back as written, and trim again releases nothing.</summary>
    [Fact]
    public async Task Trim_keeps_every_stored_lblk_and_a_second_trim_releases_nothing()
    {
        using var scratch = new Scratch();
        string image = scratch.File("kept.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        string random = scratch.File("random.bin");
        var data = RandomBytes(8 * (int)MiB, 3);
        await File.WriteAllBytesAsync(random, data);

        await ServeAsync(scratch, image, ["--discard", "ignore"], async uri =>
        {
            await ExternalTool.QemuIoAsync(uri, [$"write -s {random} 0 8M", $"write -s {random} 8M 8M", "flush"]);
            await ExternalTool.QemuIoAsync(uri, ["discard 0 8M", "flush"]);
        });

        var first = await CbdTool.RunAsync(0, "trim", image);
        Assert.Contains($"trimmed {image}", first.StandardOutput);
        Assert.Contains("released", first.StandardOutput);
        var second = await CbdTool.RunAsync(0, "trim", image, "--json");
        using (var report = JsonDocument.Parse(second.StandardOutput))
            Assert.Equal(0, report.RootElement.GetProperty("released_bytes").GetInt64());

        string exported = scratch.File("exported.raw");
        await CbdTool.RunAsync(0, "export", image, exported, "--quiet");
        await using var raw = File.OpenRead(exported);
        var back = new byte[8 * MiB];
        raw.Position = 8 * MiB;
        await raw.ReadExactlyAsync(back);
        Assert.True(back.AsSpan().SequenceEqual(data), "lblks 8M..16M changed after trim");
    }

    /// <summary>
    /// On a block device the freed pblks are discarded (BLKDISCARD). A loop device over a sparse file shows it: a discard
    /// there punches the file. info and trim say n/a for what a device holds.
    /// </summary>
    [Fact]
    public async Task A_block_device_gets_freed_pblks_discarded()
    {
        using var scratch = new Scratch();
        string backing = scratch.File("loop.img");
        await using (var file = File.Create(backing))
            file.SetLength(64 * MiB);
        var losetup = await ExternalTool.TryRunAsync("losetup", ["-f", "--show", backing]);
        Assert.True(losetup.ExitCode == 0, $"losetup could not attach a loop device (the test needs root and /dev/loop-control): {losetup}");
        string device = losetup.StandardOutput.Trim();
        try
        {
            await CbdTool.RunAsync(0, "format", device, "--force");
            string random = scratch.File("random.bin");
            await File.WriteAllBytesAsync(random, RandomBytes(8 * (int)MiB, 4));
            long written = 0;
            await ServeAsync(scratch, device, [], async uri =>
            {
                await ExternalTool.QemuIoAsync(uri, [$"write -s {random} 0 8M", "flush"]);
                written = await BackingAllocatedAsync(backing);
                await ExternalTool.QemuIoAsync(uri, ["discard 0 8M", "flush"]);
            });
            long discarded = await BackingAllocatedAsync(backing);
            Assert.True(written >= 8 * MiB && discarded < MiB, $"the loop device's file held {written} bytes with 8 MiB stored, {discarded} after the discard");

            var info = await CbdTool.RunAsync(0, "info", device, "--json");
            using (var json = JsonDocument.Parse(info.StandardOutput))
                Assert.Equal(JsonValueKind.Null, json.RootElement.GetProperty("store_allocated_bytes").ValueKind);
            var trim = await CbdTool.RunAsync(0, "trim", device);
            Assert.Contains("n/a (a block device", trim.StandardOutput);
        }
        finally
        {
            await ExternalTool.TryRunAsync("losetup", ["-d", device]);
        }
    }

    /// <summary>What the loop device's file takes on its filesystem.</summary>
    private static async Task<long> BackingAllocatedAsync(string path)
    {
        await using var store = FileBackingStore.OpenShared(path);
        return store.AllocatedBytes!.Value;
    }

    [Fact]
    public async Task Trim_refuses_a_served_image()
    {
        using var scratch = new Scratch();
        string image = scratch.File("busy.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        await ServeAsync(scratch, image, [], async _ =>
            await CbdTool.FailsAsync(1, "in use by another process", "trim", image));
    }

    [Fact]
    public async Task Serve_takes_unmap_or_ignore_for_discard()
    {
        using var scratch = new Scratch();
        string image = scratch.File("any.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "64M");
        var result = await CbdTool.RunAsync(2, "serve", image, "--discard", "sometimes");
        Assert.StartsWith("cbd: --discard: 'sometimes', expected unmap or ignore.", result.StandardError);
    }

    private static async Task ServeAsync(Scratch scratch, string image, string[] options, Func<string, Task> work)
    {
        string socket = scratch.File("trim.sock");
        string pidFile = scratch.File("trim.pid");
        await using var serve = ToolProcess.Start(CbdTool.Executable, ["serve", image, "--socket", socket, "--pid-file", pidFile, .. options]);
        await ExportSafetyTests.PollAsync(() => File.Exists(pidFile) || serve.HasExited);
        Assert.False(serve.HasExited, serve.ToString());
        await work($"nbd+unix:///?socket={socket}");
        serve.Signal(Signals.Terminate);
        Assert.True(await serve.WaitForExitAsync(TimeSpan.FromSeconds(60)), serve.ToString());
        Assert.True(serve.ExitCode == 0, serve.ToString());
    }

    /// <summary>The image's allocated bytes as cbd info --json reports them.</summary>
    private static async Task<long> AllocatedAsync(string image)
    {
        var info = await CbdTool.RunAsync(0, "info", image, "--json", "--quiet");
        using var json = JsonDocument.Parse(info.StandardOutput);
        return json.RootElement.GetProperty("store_allocated_bytes").GetInt64();
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }
}
