using Xunit.Abstractions;

namespace Cbd.Integration.Tests;

/// <summary><c>nbdcopy</c> (libnbd) copying real disk images into and out of a real <c>cbd serve</c>.</summary>
public sealed class NbdcopyTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;

    /// <summary>
    /// A 256 MiB ext4 image of this machine's libraries and documentation goes in and comes out byte for byte, and
    /// the image file then takes less disk space than the data it holds.
    /// </summary>
    [Fact]
    public async Task Ext4ImageOfHostFiles_CopiesInAndOutIdentically_AndIsStoredCompressed()
    {
        using var scratch = new ScratchDirectory();
        string raw = scratch.File("raw.img");
        string copy = scratch.File("out.img");
        string image = scratch.File("disk.cbd");
        const long rawSize = 256 * MiB;
        await HostFiles.CreateExt4ImageAsync(raw, rawSize, scratch.Directory("staging"), libraryBytes: 100 * MiB, documentationBytes: 50 * MiB);
        long data = HostFiles.NonZeroBytes(raw);

        await using CbdServer server = await CbdServer.CreateAsync(image, scratch.File("nbd.sock"), "256M");
        await ExternalTool.RunAsync("nbdcopy", [raw, server.Uri], TimeSpan.FromSeconds(120));
        await ExternalTool.RunAsync("nbdcopy", [server.Uri, copy], TimeSpan.FromSeconds(120));
        await server.StopAsync();

        // The device is three times the image file, so the copy out is too: the raw image, then zeroes.
        Assert.Equal(3 * rawSize, new FileInfo(copy).Length);
        Assert.Equal(HostFiles.HashPrefix(raw, rawSize), HostFiles.HashPrefix(copy, rawSize));
        Assert.Equal(-1, HostFiles.FirstNonZeroFrom(copy, rawSize));

        long physical = await HostFiles.AllocatedBytesAsync(image);
        double ratio = (double)data / physical;
        output.WriteLine($"non-zero data {data / (double)MiB:0.0} MiB, image file allocated {physical / (double)MiB:0.0} MiB, ratio {ratio:0.00}");
        Assert.True(ratio > 1.3, $"image file allocates {physical} bytes for {data} bytes of data: ratio {ratio:0.00}, expected > 1.3");
    }

    /// <summary>
    /// nbdcopy zeroes a hole of the source with one NBD_CMD_WRITE_ZEROES however long the hole is (libnbd 1.14
    /// does not split it at the maximum block size); with <c>--allocated</c> the request carries NO_HOLE. A sparse
    /// source with a hole over 32 MiB must still copy.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task SourceWithAHoleLongerThanTheMaximumBlockSize_IsCopied(bool allocated)
    {
        using var scratch = new ScratchDirectory();
        string raw = scratch.File("sparse.img");
        string copy = scratch.File("out.img");
        const long rawSize = 48 * MiB;
        byte[] chunk = new byte[MiB];
        new Random(3).NextBytes(chunk);
        await using (var file = new FileStream(raw, FileMode.CreateNew))
        {
            file.SetLength(rawSize);
            await file.WriteAsync(chunk);
            file.Position = rawSize - MiB;
            await file.WriteAsync(chunk);
        }

        string image = scratch.File("disk.cbd");
        if (allocated)
        {
            // NO_HOLE is served only by a device whose pblks store every lblk uncompressed (docs/NBD.md, "Space").
            await ExternalTool.RunAsync(CbdServer.Executable, ["format", image, "--size", "64M", "--logical-size", "48M"]);
        }
        await using CbdServer server = allocated
            ? await CbdServer.StartAsync(image, scratch.File("nbd.sock"))
            : await CbdServer.CreateAsync(image, scratch.File("nbd.sock"), "64M");
        // Something to overwrite, so that the zeroing is observable.
        await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x77 0 48M"]);
        await ExternalTool.RunAsync("nbdcopy", allocated ? ["--allocated", raw, server.Uri] : [raw, server.Uri]);
        await ExternalTool.RunAsync("nbdcopy", [server.Uri, copy]);
        await server.StopAsync();

        Assert.Equal(HostFiles.HashPrefix(raw, rawSize), HostFiles.HashPrefix(copy, rawSize));
    }
}
