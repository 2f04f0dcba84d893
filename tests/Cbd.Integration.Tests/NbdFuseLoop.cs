namespace Cbd.Integration.Tests;

/// <summary>
/// An NBD export as a kernel block device without the nbd module: <c>nbdfuse DIR URI</c> exposes it as the file
/// DIR/nbd, and <c>losetup</c> turns that file into /dev/loopN. Disposing undoes whatever is still set up (unmount,
/// detach the loop device, unmount the FUSE file system, kill nbdfuse), even after a failed assertion.
/// </summary>
public sealed class NbdFuseLoop : IAsyncDisposable
{
    private readonly string _fuseDirectory;
    private ToolProcess? _nbdfuse;
    private string? _mountPoint;

    private NbdFuseLoop(string fuseDirectory)
    {
        _fuseDirectory = fuseDirectory;
    }

    /// <summary>/dev/loopN, or null once detached.</summary>
    public string? LoopDevice { get; private set; }

    public static async Task<NbdFuseLoop> AttachAsync(string uri, string fuseDirectory)
    {
        Directory.CreateDirectory(fuseDirectory);
        string file = Path.Combine(fuseDirectory, "nbd");
        var disk = new NbdFuseLoop(fuseDirectory);
        try
        {
            ExternalTool.Require("fusermount3");
            disk._nbdfuse = ExternalTool.Start("nbdfuse", [fuseDirectory, uri]);
            await Poll.UntilAsync(() => disk._nbdfuse.HasExited || File.Exists(file), TimeSpan.FromSeconds(20), () => $"{file}: {disk._nbdfuse}");
            Assert.False(disk._nbdfuse.HasExited, $"nbdfuse exited instead of serving {file} (FUSE needs /dev/fuse and root): {disk._nbdfuse}");

            ExternalTool.Result losetup = await ExternalTool.TryRunAsync("losetup", ["-f", "--show", file]);
            Assert.True(losetup.ExitCode == 0,
                $"losetup could not attach a loop device to {file}. The test needs root with /dev/loop-control and a free " +
                $"/dev/loopN (in a container: --privileged, or --device /dev/loop-control and the loop devices). {losetup}");
            disk.LoopDevice = losetup.StandardOutput.Trim();
            Assert.StartsWith("/dev/loop", disk.LoopDevice);
            return disk;
        }
        catch
        {
            await disk.DisposeAsync();
            throw;
        }
    }

    public Task MakeExt4Async() => ExternalTool.RunAsync("mkfs.ext4", ["-q", "-F", LoopDevice!], TimeSpan.FromSeconds(120));

    /// <summary><c>e2fsck -fn</c>: a forced, read-only check; exit code 0 means the file system is clean.</summary>
    public Task<ExternalTool.Result> CheckExt4Async() => ExternalTool.RunAsync("e2fsck", ["-fn", LoopDevice!], TimeSpan.FromSeconds(120));

    public async Task MountAsync(string mountPoint, bool readOnly = false)
    {
        Directory.CreateDirectory(mountPoint);
        await ExternalTool.RunAsync("mount", readOnly ? ["-o", "ro", LoopDevice!, mountPoint] : [LoopDevice!, mountPoint]);
        _mountPoint = mountPoint;
    }

    public async Task UnmountAsync()
    {
        await ExternalTool.RunAsync("umount", [_mountPoint!], TimeSpan.FromSeconds(120));
        _mountPoint = null;
    }

    /// <summary>Detaches the loop device, unmounts the FUSE file system and checks that nbdfuse then exits 0.</summary>
    public async Task DetachAsync()
    {
        await ExternalTool.RunAsync("losetup", ["-d", LoopDevice!]);
        LoopDevice = null;
        // The kernel releases the loop device's backing file asynchronously; until then the FUSE mount is busy.
        ExternalTool.Result? unmount = null;
        for (int attempt = 0; attempt < 100; attempt++)
        {
            unmount = await ExternalTool.TryRunAsync("fusermount3", ["-u", _fuseDirectory]);
            if (unmount.ExitCode == 0)
            {
                break;
            }
            await Task.Delay(100);
        }
        Assert.True(unmount!.ExitCode == 0, $"could not unmount nbdfuse: {unmount}");
        Assert.True(await _nbdfuse!.WaitForExitAsync(TimeSpan.FromSeconds(20)), $"nbdfuse still running after its unmount: {_nbdfuse}");
        Assert.True(_nbdfuse.ExitCode == 0, $"nbdfuse failed: {_nbdfuse}");
    }

    public async ValueTask DisposeAsync()
    {
        // Each step is attempted whatever happened to the one before: a test that failed half-way must not leave a
        // mount, a loop device or a FUSE file system behind.
        if (_mountPoint is not null && ScratchDirectory.IsMountPoint(_mountPoint))
        {
            string mountPoint = _mountPoint;
            if (!await SucceedsAsync("umount", [mountPoint], TimeSpan.FromSeconds(60)))
            {
                await SucceedsAsync("umount", ["-l", mountPoint], TimeSpan.FromSeconds(30));
            }
        }
        if (LoopDevice is not null)
        {
            await SucceedsAsync("losetup", ["-d", LoopDevice], TimeSpan.FromSeconds(30));
        }
        for (int attempt = 0; attempt < 50 && ScratchDirectory.IsMountPoint(_fuseDirectory); attempt++)
        {
            if (!await SucceedsAsync("fusermount3", ["-u", _fuseDirectory], TimeSpan.FromSeconds(30)))
            {
                await Task.Delay(100);
            }
        }
        if (ScratchDirectory.IsMountPoint(_fuseDirectory))
        {
            await SucceedsAsync("fusermount3", ["-u", "-z", _fuseDirectory], TimeSpan.FromSeconds(30));
        }
        if (_nbdfuse is not null)
        {
            await _nbdfuse.DisposeAsync();
        }
    }

    private static async Task<bool> SucceedsAsync(string tool, string[] arguments, TimeSpan timeout)
    {
        try
        {
            return (await ExternalTool.TryRunAsync(tool, arguments, timeout)).ExitCode == 0;
        }
        catch (Exception)
        {
            return false;
        }
    }
}
