namespace Cbd.Integration.Tests;

/// <summary>qemu-img and qemu-io (QEMU's own NBD client) against a real <c>cbd serve</c>.</summary>
public sealed class QemuTests
{
    private const long MiB = 1 << 20;
    private const int Lblk = 65536;

    [Fact]
    public async Task QemuImgConvert_Ext4ImageInAndOut_IsIdentical()
    {
        using var scratch = new ScratchDirectory();
        string raw = scratch.File("raw.img");
        string copy = scratch.File("out.img");
        const long rawSize = 64 * MiB;
        await HostFiles.CreateExt4ImageAsync(raw, rawSize, scratch.Directory("staging"), libraryBytes: 24 * MiB, documentationBytes: 16 * MiB);

        await using CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "64M");
        // -n: the target exists (qemu-img cannot create an NBD export).
        await ExternalTool.RunAsync("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", raw, server.Uri], TimeSpan.FromSeconds(120));
        await ExternalTool.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", server.Uri, copy], TimeSpan.FromSeconds(120));
        await server.StopAsync();

        Assert.Equal(3 * rawSize, new FileInfo(copy).Length);
        Assert.Equal(HostFiles.HashPrefix(raw, rawSize), HostFiles.HashPrefix(copy, rawSize));
        Assert.Equal(-1, HostFiles.FirstNonZeroFrom(copy, rawSize));
    }

    /// <summary>
    /// Byte patterns written at unaligned offsets and across lblk boundaries, then partly discarded and zeroed,
    /// read back with <c>read -P</c> right away and again, all of the first 4 MiB, after the server restarted.
    /// </summary>
    [Fact]
    public async Task QemuIo_UnalignedAndBoundarySpanningPatterns_DiscardAndWriteZeroes_ReadBackAndSurviveRestart()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        // The expected contents of the first 4 MiB, updated with each operation.
        byte[] model = new byte[4 * MiB];
        var commands = new List<string>();

        void Write(byte pattern, long offset, long length)
        {
            commands.Add($"write -P 0x{pattern:x2} {offset} {length}");
            commands.Add($"read -P 0x{pattern:x2} {offset} {length}");
            model.AsSpan((int)offset, (int)length).Fill(pattern);
        }
        void Zero(string command, long offset, long length)
        {
            commands.Add($"{command} {offset} {length}");
            commands.Add($"read -P 0 {offset} {length}");
            model.AsSpan((int)offset, (int)length).Clear();
        }

        Write(0x11, Lblk - 100, 300);                     // across the first lblk boundary
        Write(0x22, 1, 1);                                 // one byte, inside lblk 0
        Write(0x33, 2 * Lblk - 536, 200000);               // across four boundaries, neither end aligned
        Write(0x44, MiB, MiB);                             // whole lblks
        Write(0x55, 3 * MiB - 7, 4096 + 14);               // a 4 KiB block off by 7 bytes either side
        Zero("discard", MiB + Lblk, 2 * Lblk);             // whole lblks: deallocated
        Zero("discard", 1300000, 70000);                   // partial lblks at both ends: zeroed
        Zero("write -z", 1500000, 100000);                 // NBD_CMD_WRITE_ZEROES with NO_HOLE
        Zero("write -z -u", 2 * MiB - Lblk, 2 * Lblk);     // WRITE_ZEROES that may deallocate, across 2 MiB
        Zero("write -z", Lblk - 36, 100);                  // inside the 0x11 run, across the boundary
        Write(0x66, 1500000 + 5000, 10);                   // data again inside a zeroed range
        commands.Add("flush");
        commands.AddRange(VerifyAll(model));

        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "64M"))
        {
            await ExternalTool.QemuIoAsync(server.Uri, commands);
            await server.StopAsync();
        }
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await ExternalTool.QemuIoAsync(server.Uri, VerifyAll(model), readOnly: true);
            await server.StopAsync();
        }
    }

    /// <summary>One <c>read -P</c> per run of equal bytes: together they check every byte of the model.</summary>
    private static List<string> VerifyAll(byte[] model)
    {
        var reads = new List<string>();
        int start = 0;
        for (int i = 1; i <= model.Length; i++)
        {
            if (i == model.Length || model[i] != model[start])
            {
                reads.Add($"read -P 0x{model[start]:x2} {start} {i - start}");
                start = i;
            }
        }
        return reads;
    }
}
