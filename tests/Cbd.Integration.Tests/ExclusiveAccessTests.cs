namespace Cbd.Integration.Tests;

/// <summary>An image being served is not opened for writing by anything else: a second writer would trust metadata the server is changing.</summary>
public sealed class ExclusiveAccessTests
{
    [Fact]
    public async Task Repair_and_a_second_server_refuse_an_image_that_is_being_served()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        await using var server = await CbdServer.CreateAsync(image, scratch.File("nbd.sock"), "64M");
        await ExternalTool.QemuIoAsync(server.Uri, ["write -P 0x5a 0 1M", "flush"]);

        var repair = await RunCbdAsync(["check", image, "--repair"]);
        Assert.Equal(8, repair.ExitCode);
        Assert.Contains("in use by another process", repair.StandardError);

        var second = await RunCbdAsync(["serve", image, "--socket", scratch.File("second.sock")]);
        Assert.Equal(1, second.ExitCode);
        Assert.Contains("in use by another process", second.StandardError);

        // The first server is unharmed.
        await ExternalTool.QemuIoAsync(server.Uri, ["read -P 0x5a 0 1M"], readOnly: true);
        await server.StopAsync();
    }

    private static async Task<ExternalTool.Result> RunCbdAsync(string[] arguments)
    {
        await using var process = ToolProcess.Start(CbdServer.Executable, arguments);
        Assert.True(await process.WaitForExitAsync(TimeSpan.FromSeconds(60)), $"cbd did not finish: {process}");
        return new ExternalTool.Result(process.CommandLine, process.ExitCode, process.StandardOutput, process.StandardError);
    }
}
