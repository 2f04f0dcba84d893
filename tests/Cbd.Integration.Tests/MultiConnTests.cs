namespace Cbd.Integration.Tests;

/// <summary>
/// NBD_FLAG_CAN_MULTI_CONN as a real client relies on it: writes completed on two connections, a flush on a third,
/// then a crash. The flush must have made both connections' writes durable.
/// </summary>
public sealed class MultiConnTests
{
    [Fact]
    public async Task WritesOnTwoConnections_FlushOnAThird_SurviveSigkill()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        // No timed write-back and a cache far larger than the writes: until a flush, the data is only in memory.
        string[] cacheOnly = ["--flush-delay", "3600", "--cache", "256M"];

        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "64M", cacheOnly))
        {
            await using QemuIoSession first = await QemuIoSession.OpenAsync(server.Uri);
            await using QemuIoSession second = await QemuIoSession.OpenAsync(server.Uri);

            // Both connections write at the same time; each RunAsync returns once qemu-io has the server's reply.
            await Task.WhenAll(
                RunAllAsync(first, "write -P 0xa1 0 4M", "write -P 0xa2 5M 3M", "write -P 0xa3 9000000 12345"),
                RunAllAsync(second, "write -P 0xb1 16M 4M", "write -P 0xb2 21M 2M", "write -P 0xb3 25165900 70000"));

            // Every write above is answered, so this flush, on a connection of its own, covers them all.
            await ExternalTool.QemuIoAsync(server.Uri, ["flush"]);

            // A crash with the writers still connected: they never flushed or closed.
            await server.KillAsync();
        }

        Assert.True(await ImageInspection.NeedsRecoveryAsync(image), "after SIGKILL the image should be marked as not closed clean");

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await ExternalTool.QemuIoAsync(server.Uri,
            [
                "read -P 0xa1 0 4M", "read -P 0 4M 1M", "read -P 0xa2 5M 3M",
                "read -P 0 8M 611392", "read -P 0xa3 9000000 12345", "read -P 0 9012345 7764871",
                "read -P 0xb1 16M 4M", "read -P 0 20M 1M", "read -P 0xb2 21M 2M",
                "read -P 0 23M 1048652", "read -P 0xb3 25165900 70000", "read -P 0 25235900 1M",
            ], readOnly: true);
            await server.StopAsync();
        }
        Assert.False(await ImageInspection.NeedsRecoveryAsync(image));
    }

    private static async Task RunAllAsync(QemuIoSession session, params string[] commands)
    {
        foreach (string command in commands)
        {
            await session.RunAsync(command);
        }
    }
}
