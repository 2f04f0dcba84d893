namespace Cbd.Cli.Tests;

public class ImportExportTests
{
    [Fact]
    public async Task Round_trip_of_host_files_is_byte_identical_and_the_export_sparse()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        string exported = scratch.File("exported.img");
        var result = await CbdTool.RunAsync(0, "export", image, exported);
        Assert.Contains($"exported {TestData.RawLength} bytes", result.StandardOutput);

        Assert.True(bytes.AsSpan().SequenceEqual(File.ReadAllBytes(exported)), "the exported image differs from the imported one");
        // The zero runs (3 MiB, then about 4 and 2 MiB) stay holes: allocation follows the non-zero lblks.
        long allocated = await ImageFile.AllocatedBytesAsync(exported);
        long nonZero = (long)TestData.NonZeroLblks(bytes) * TestData.LblkSize;
        Assert.InRange(allocated, 1, nonZero + (1 << 20));
        Assert.True(allocated <= TestData.RawLength - (8L << 20), $"export allocated {allocated} bytes of {TestData.RawLength}");
    }

    [Fact]
    public async Task Import_replaces_what_the_image_held()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        string small = scratch.File("small.img");
        byte[] head = bytes.AsSpan(0, (5 << 20) + 777).ToArray();
        File.WriteAllBytes(small, head);

        var result = await CbdTool.RunAsync(0, "import", small, image);
        Assert.Contains($"imported {head.Length} bytes", result.StandardOutput);
        await ResizeAndTuneTests.AssertExportsAsync(scratch, image, [.. head, .. new byte[TestData.RawLength - head.Length]]);
        using var info = await FormatCommandTests.InfoAsync(image);
        Assert.Equal(TestData.NonZeroLblks(head), info.RootElement.GetProperty("usage").GetProperty("lblks_used").GetInt64());
    }

    [Fact]
    public async Task Stdin_and_stdout_carry_the_same_bytes()
    {
        using var scratch = new Scratch();
        var (raw, bytes) = await TestData.RawAsync();
        string image = scratch.File("piped.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", TestData.ImageSize, "--logical-size", TestData.RawSize, "--compression", "zlib");
        var import = await CbdTool.TryRunAsync(["import", "-", image], standardInputFile: raw);
        Assert.True(import.ExitCode == 0, import.ToString());

        var export = await CbdTool.RunAsync(0, "export", image, "-");
        Assert.True(bytes.AsSpan().SequenceEqual(export.StandardOutputBytes), "stdout differs from what went in on stdin");
    }

    [Fact]
    public async Task Refusals_are_one_line()
    {
        using var scratch = new Scratch();
        var (raw, _) = await TestData.RawAsync();
        string image = scratch.File("small.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "16M", "--logical-size", "8M");
        await CbdTool.FailsAsync(1, "more than the logical size of " + image + ", 8 MiB", "import", raw, image);
        await CbdTool.FailsAsync(1, "same file", "import", image, image);
        await CbdTool.FailsAsync(1, "is the image itself", "export", image, image);
        await CbdTool.FailsAsync(1, "is a directory", "export", image, scratch.Path);
        await CbdTool.RunAsync(0, "check", image);
    }

    [Fact]
    public async Task Export_replaces_an_existing_file_only_with_force()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        string exported = scratch.File("old.img");
        byte[] old = new byte[40 << 20];
        Array.Fill(old, (byte)0xAA);
        File.WriteAllBytes(exported, old);
        await CbdTool.FailsAsync(1, "holds data (a non-zero byte at offset 0", "export", image, exported);
        Assert.True(old.AsSpan().SequenceEqual(File.ReadAllBytes(exported)), "a refused export changed the file");
        await CbdTool.RunAsync(0, "export", image, exported, "--force");
        Assert.True(bytes.AsSpan().SequenceEqual(File.ReadAllBytes(exported)), "the export kept bytes of the file it replaced");
    }
}
