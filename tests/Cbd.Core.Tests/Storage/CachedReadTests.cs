using System.Runtime.InteropServices;
using Cbd.Core.Storage;
using Microsoft.Win32.SafeHandles;

namespace Cbd.Core.Tests.Storage;

/// <summary>
/// A file store's reads take what the page cache holds on the caller's thread, and move to the pool only for bytes
/// that must come from the disk: on a real file under the temporary directory, whose pages are dropped from the
/// cache (fsync, then posix_fadvise DONTNEED) to make a read wait.
/// </summary>
public sealed partial class CachedReadTests : IDisposable
{
    private const int MiB = 1 << 20;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"cbd-cached-{Guid.NewGuid():N}.img");

    public void Dispose() => File.Delete(_path);

    private byte[] WriteFile()
    {
        byte[] data = new byte[4 * MiB];
        new Random(7).NextBytes(data);
        File.WriteAllBytes(_path, data);
        return data;
    }

    /// <summary>Makes the file's pages leave the page cache: written out first, since dirty pages stay.</summary>
    private void DropFromPageCache()
    {
        using SafeFileHandle handle = File.OpenHandle(_path, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.FlushToDisk(handle);
        const int DontNeed = 4; // POSIX_FADV_DONTNEED
        Assert.Equal(0, Fadvise(handle, 0, 0, DontNeed));
    }

    [Fact]
    public async Task A_read_outside_the_page_cache_waits_on_the_pool_and_a_cached_one_does_not()
    {
        byte[] data = WriteFile();
        await using var store = FileBackingStore.Open(_path, writable: false);
        // ext4, xfs and btrfs read with RWF_NOWAIT (Linux 4.14 on); the test's temporary directory is on one of them.
        Assert.True(store.ReadsWithoutWaiting, "the temporary directory's filesystem reads without RWF_NOWAIT");
        DropFromPageCache();

        byte[] buffer = new byte[64 << 10];
        await store.ReadAsync(2 * MiB, buffer);
        Assert.Equal(data.AsSpan(2 * MiB, buffer.Length).ToArray(), buffer);
        Assert.Equal(1, store.ReadsWaited);

        Array.Clear(buffer);
        ValueTask again = store.ReadAsync(2 * MiB, buffer);
        Assert.True(again.IsCompletedSuccessfully, "a read of cached bytes completes on the caller's thread");
        await again;
        Assert.Equal(data.AsSpan(2 * MiB, buffer.Length).ToArray(), buffer);
        Assert.Equal(1, store.ReadsWaited);
    }

    [Fact]
    public async Task A_read_over_the_end_of_a_file_still_reads_its_bytes_and_zeros_past_them()
    {
        byte[] data = WriteFile();
        await using var store = FileBackingStore.OpenShared(_path);
        DropFromPageCache();

        // A store opened shared may see the file cut by its writer: bytes past the end read as zeros.
        byte[] buffer = new byte[8192];
        buffer.AsSpan().Fill(0xff);
        await store.ReadAsync(4 * MiB - 4096, buffer);
        Assert.Equal(data.AsSpan(4 * MiB - 4096).ToArray(), buffer[..4096]);
        Assert.All(buffer[4096..], b => Assert.Equal(0, b));
    }

    [LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int Fadvise(SafeFileHandle fd, long offset, long length, int advice);
}
