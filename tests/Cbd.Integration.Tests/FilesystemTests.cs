using Xunit.Abstractions;

namespace Cbd.Integration.Tests;

/// <summary>An ext4 file system on a real <c>cbd serve</c> export, through nbdfuse and a loop device.</summary>
public sealed class FilesystemTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;

    /// <summary>
    /// mkfs.ext4, a tree of this machine's documentation copied in, a clean e2fsck, every file's SHA-256; then a
    /// full teardown and a new server on the same image: e2fsck is still clean and every file reads back the same.
    /// </summary>
    [Fact]
    public async Task Ext4_FilesCopiedIn_ReadBackIdentical_AfterUnmountAndServerRestart()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string socket = scratch.File("nbd.sock");
        string source = scratch.Directory("source");
        string mountPoint = scratch.Directory("mnt");
        HostFiles.Copy(HostFiles.Documentation(), source, budget: 48 * MiB, minimum: 16 * MiB);
        SortedDictionary<string, string> expected = HostFiles.HashTree(source);
        output.WriteLine($"{expected.Count} files");

        await using (CbdServer server = await CbdServer.CreateAsync(image, socket, "128M"))
        {
            await using (NbdFuseLoop disk = await NbdFuseLoop.AttachAsync(server.Uri, scratch.File("fuse")))
            {
                await disk.MakeExt4Async();
                await disk.MountAsync(mountPoint);
                CopyTree(source, Path.Combine(mountPoint, "files"));
                await disk.UnmountAsync();
                await disk.CheckExt4Async();
                await disk.DetachAsync();
            }
            await server.StopAsync();
        }

        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await using (NbdFuseLoop disk = await NbdFuseLoop.AttachAsync(server.Uri, scratch.File("fuse")))
            {
                await disk.CheckExt4Async();
                await disk.MountAsync(mountPoint, readOnly: true);
                SortedDictionary<string, string> actual = HostFiles.HashTree(Path.Combine(mountPoint, "files"));
                Assert.Equal(expected.Keys, actual.Keys);
                foreach ((string file, string hash) in expected)
                {
                    Assert.True(hash == actual[file], $"{file} differs after the restart");
                }
                await disk.UnmountAsync();
                await disk.DetachAsync();
            }
            await server.StopAsync();
        }
    }

    private static void CopyTree(string from, string to)
    {
        foreach (string file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(to, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
    }
}
