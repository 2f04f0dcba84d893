namespace Cbd.Integration.Tests;

/// <summary>Real clients killed mid-transfer: the server loses those connections only.</summary>
public sealed class ClientFailureTests
{
    private const long MiB = 1 << 20;

    [Fact]
    public async Task ClientsSigkilledMidTransfer_OtherConnectionAndNewClientsKeepWorking_ServerStopsClean()
    {
        using var scratch = new ScratchDirectory();
        await using CbdServer server = await CbdServer.CreateAsync(scratch.File("disk.cbd"), scratch.File("nbd.sock"), "128M");

        // A connection open through everything below.
        await using QemuIoSession bystander = await QemuIoSession.OpenAsync(server.Uri);
        await bystander.RunAsync("write -P 0x5e 300M 1M");

        // nbdcopy streaming from a pipe (over its several connections), killed while data is still flowing.
        await using (ToolProcess nbdcopy = ExternalTool.Start("nbdcopy", ["-", server.Uri], redirectInput: true))
        {
            long fed = 0;
            Task feeder = Task.Run(async () =>
            {
                byte[] chunk = new byte[MiB];
                try
                {
                    for (int i = 0; i < 256; i++)
                    {
                        Random.Shared.NextBytes(chunk);
                        await nbdcopy.StandardInput.BaseStream.WriteAsync(chunk);
                        Interlocked.Add(ref fed, chunk.Length);
                    }
                }
                catch (IOException)
                {
                    // The pipe broke: nbdcopy was killed.
                }
            });
            await Poll.UntilAsync(() => Interlocked.Read(ref fed) >= 32 * MiB || nbdcopy.HasExited, TimeSpan.FromSeconds(60), () => $"nbdcopy to take 32 MiB: {nbdcopy}");
            Assert.False(nbdcopy.HasExited, $"nbdcopy ended before it was killed: {nbdcopy}");
            nbdcopy.Signal(Posix.SigKill);
            Assert.True(await nbdcopy.WaitForExitAsync(TimeSpan.FromSeconds(10)));
            await feeder;
            Assert.True(Interlocked.Read(ref fed) < 256 * MiB, "the whole stream went through before the kill");
        }

        // qemu-io killed with asynchronous writes in flight.
        await using (QemuIoSession victim = await QemuIoSession.OpenAsync(server.Uri))
        {
            for (int i = 0; i < 8; i++)
            {
                await victim.SendAsync($"aio_write -P 0x{0x70 + i:x2} {128 * MiB + i * 4 * MiB} 4M");
            }
            victim.Process.Signal(Posix.SigKill);
            Assert.True(await victim.Process.WaitForExitAsync(TimeSpan.FromSeconds(10)));
        }

        Assert.False(server.HasExited, $"the server died with its clients: {server.Output}");
        await bystander.RunAsync("read -P 0x5e 300M 1M");
        await bystander.RunAsync("write -P 0x5f 301M 1M");
        await bystander.RunAsync("read -P 0x5f 301M 1M");
        await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x60 302M 1M", "read -P 0x60 302M 1M", "read -P 0x5e 300M 1M", "read -P 0x5f 301M 1M"]);
        await ExternalTool.RunAsync("nbdinfo", [server.Uri]);
        await bystander.QuitAsync();

        // No dead connection holds the shutdown up.
        await server.StopAsync();
    }
}
