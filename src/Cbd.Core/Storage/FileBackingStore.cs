using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Cbd.Core.Storage;

/// <summary>A file or block device accessed with positional I/O on one shared handle.</summary>
/// <remarks>
/// pread/pwrite carry their own offset, so concurrent <see cref="RandomAccess"/> calls on one handle
/// need no lock and no seek. Durability is fsync through <see cref="RandomAccess.FlushToDisk"/>.
/// </remarks>
public sealed class FileBackingStore : IBackingStore
{
    private readonly SafeFileHandle _handle;
    private long _length;

    /// <summary>Opened without the lock: the writer holding it may change the file under us (see <see cref="OpenShared"/>).</summary>
    private bool _shared;

    /// <summary>Reads below <see cref="Length"/> that found their bytes outside the page cache (and so waited on another thread).</summary>
    private long _readsWaited;

    private FileBackingStore(SafeFileHandle handle, bool writable, long length, string path)
    {
        _handle = handle;
        CanWrite = writable;
        _length = length;
        Path = path;
        // One byte of the header, read the way every read will be: a kernel or filesystem without RWF_NOWAIT says so
        // now, and the store then reads as it always did, blocking its caller.
        Span<byte> probe = stackalloc byte[1];
        ReadsWithoutWaiting = CachedReads.Read(handle, 0, probe, path, out _) != CachedReads.Outcome.Unsupported;
    }

    public string Path { get; }
    public long Length => Volatile.Read(ref _length);
    public bool CanWrite { get; }

    /// <summary>
    /// True when reads take what the page cache holds on the calling thread and leave the rest to a pool thread
    /// (preadv2 RWF_NOWAIT); false on a kernel or filesystem without it, where every read blocks its caller as pread does.
    /// </summary>
    public bool ReadsWithoutWaiting { get; }

    /// <summary>Reads that waited for the disk on a pool thread because their bytes were not in the page cache.</summary>
    public long ReadsWaited => Interlocked.Read(ref _readsWaited);

    /// <summary>True when the store is a block device (its size is fixed).</summary>
    public bool IsBlockDevice { get; private init; }

    /// <summary>Opens an existing file or block device.</summary>
    public static FileBackingStore Open(string path, bool writable)
    {
        // A writer takes the file exclusively (flock LOCK_EX on Linux): two writers, say a server and a
        // repair, would each trust metadata the other is changing.
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read,
                writable ? FileShare.None : FileShare.ReadWrite, FileOptions.Asynchronous);
        }
        catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException && File.Exists(path))
        {
            throw new IOException("in use by another process (is cbd serve or a repair running on it?)", e);
        }
        // BLKGETSIZE64 answers only for a block device (ENOTTY for a regular file).
        bool isBlock = TryGetBlockDeviceLength(handle, out long blockLength);
        long length = isBlock ? blockLength : RandomAccess.GetLength(handle);
        return new FileBackingStore(handle, writable, length, path) { IsBlockDevice = isBlock };
    }

    /// <summary>
    /// Opens a file or block device read-only without taking its lock, as qemu-img's <c>--force-share</c> does: for
    /// a look at an image another process holds open for writing (cbd serve), which this neither waits for nor
    /// disturbs. .NET's own open takes a shared flock, which the writer's exclusive one refuses, so this uses open(2).
    /// </summary>
    /// <remarks>
    /// What it reads is the image as the writer last wrote it back: its lbats lag what the writer holds in its cache,
    /// and a page may change between two reads, so whoever reads through it must take a torn view in stride (an
    /// approximate answer, or a clear error). Bytes past the end, should the writer cut the file, read as zeros.
    /// </remarks>
    /// <exception cref="IOException">The file cannot be opened; the message says why.</exception>
    public static FileBackingStore OpenShared(string path)
    {
        const int ReadOnlyCloseOnExec = 0x80000; // O_RDONLY (0) | O_CLOEXEC
        int fd = OpenFile(path, ReadOnlyCloseOnExec);
        if (fd < 0)
            throw new IOException($"cannot open it read-only: {Marshal.GetLastPInvokeErrorMessage()}");
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            bool isBlock = TryGetBlockDeviceLength(handle, out long blockLength);
            long length = isBlock ? blockLength : RandomAccess.GetLength(handle);
            return new FileBackingStore(handle, false, length, path) { IsBlockDevice = isBlock, _shared = true };
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Creates a new sparse file of <paramref name="length"/> bytes; fails if it exists.</summary>
    public static FileBackingStore Create(string path, long length)
    {
        var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
        RandomAccess.SetLength(handle, length);
        return new FileBackingStore(handle, true, length, path);
    }

    // A read copies what the page cache holds on the calling thread, and only a read that would wait for the disk
    // moves to the thread pool. On Linux, RandomAccess's async calls queue every read to the pool, and that hop (a
    // wake-up and a context switch) cost more than the copy from the page cache itself; reading on the caller's
    // thread alone, as pread, would hold a thread that serves other requests in turn while the disk answers.
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            int done = 0;
            if (ReadsWithoutWaiting
                && CachedReads.Read(_handle, offset, buffer.Span, Path, out done) is var outcome
                && outcome != CachedReads.Outcome.Unsupported)
            {
                if (outcome == CachedReads.Outcome.Done)
                    return ValueTask.CompletedTask;
                if (outcome == CachedReads.Outcome.WouldBlock)
                {
                    Interlocked.Increment(ref _readsWaited);
                    Memory<byte> rest = buffer[done..];
                    long at = offset + done;
                    return new ValueTask(Task.Run(() => ReadExactly(at, rest.Span), cancellationToken));
                }
            }
            // The end of the file (ReadExactly tells a sparse tail from a cut file), or no RWF_NOWAIT after all.
            ReadExactly(offset + done, buffer.Span[done..]);
            return ValueTask.CompletedTask;
        }
        catch (Exception ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    private void ReadExactly(long offset, Span<byte> span)
    {
        int done = 0;
        while (done < span.Length)
        {
            int n = RandomAccess.Read(_handle, span[done..], offset + done);
            if (n == 0)
            {
                // Past the end of the file: the format treats it as zeros only within Length, unless a writer
                // holding the lock may have cut the file meanwhile.
                if (offset + done < Length && !_shared)
                    throw new IOException($"{Path}: unexpected end of file at byte {offset + done}");
                span[done..].Clear();
                return;
            }
            done += n;
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        if (!CanWrite)
            throw new InvalidOperationException($"{Path} is open read-only");
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            RandomAccess.Write(_handle, data.Span, offset);
            return ValueTask.CompletedTask;
        }
        catch (Exception ex)
        {
            return ValueTask.FromException(ex);
        }
    }

    public async ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (!CanWrite)
            throw new InvalidOperationException($"{Path} is open read-only");
        // A regular file punches a hole: instant, and the blocks return to the filesystem. Where it cannot, zeros are written.
        if (!IsBlockDevice && TryPunch(offset, length))
            return;
        byte[] zeros = new byte[1 << 20];
        for (long done = 0; done < length; done += zeros.Length)
        {
            int n = (int)Math.Min(zeros.Length, length - done);
            await RandomAccess.WriteAsync(_handle, zeros.AsMemory(0, n), offset + done, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Set once the filesystem or device answered that it cannot deallocate: it is not asked again.</summary>
    private volatile bool _cannotDeallocate;

    // Runs on the calling thread like pwrite: a punch in a file takes microseconds. A discard on a block device can
    // take longer, but the engine calls it from a commit, which nothing waits on but a flush.
    public ValueTask<bool> DeallocateAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        if (!CanWrite)
            throw new InvalidOperationException($"{Path} is open read-only");
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (_cannotDeallocate || length <= 0)
                return ValueTask.FromResult(!_cannotDeallocate);
            if (Deallocation.Deallocate(_handle, IsBlockDevice, offset, length, Path))
                return ValueTask.FromResult(true);
            _cannotDeallocate = true;
            return ValueTask.FromResult(false);
        }
        catch (Exception ex)
        {
            return ValueTask.FromException<bool>(ex);
        }
    }

    /// <summary>A file's st_blocks x 512; null for a block device, whose every byte is its own whatever is stored.</summary>
    public long? AllocatedBytes => IsBlockDevice ? null : Deallocation.AllocatedBytes(_handle);

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        // fsync blocks; keep it off the caller's thread so the engine goes on serving reads meanwhile.
        return new ValueTask(Task.Run(() => RandomAccess.FlushToDisk(_handle), cancellationToken));
    }

    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default)
    {
        if (IsBlockDevice)
            throw new NotSupportedException($"{Path} is a block device: its size cannot change");
        RandomAccess.SetLength(_handle, length);
        Volatile.Write(ref _length, length);
        return ValueTask.CompletedTask;
    }

    // lseek(SEEK_DATA) finds the next data of a sparse file without reading its holes: an image's lbats are mostly
    // holes, and the scan behind open read gigabytes of them from a large logical size. The file position it moves
    // is never used, since every read and write is positional.
    public long NextDataOffset(long offset)
    {
        const int SeekData = 3, NoSuchDeviceOrAddress = 6; // SEEK_DATA; ENXIO: no data at or after offset
        if (IsBlockDevice || offset < 0 || offset >= Length)
            return offset;
        long next = Lseek(_handle, offset, SeekData);
        if (next >= 0)
            return Math.Min(next, Length);
        // A filesystem without SEEK_DATA (EINVAL) or any other error: no holes known.
        return Marshal.GetLastPInvokeError() == NoSuchDeviceOrAddress ? Length : offset;
    }

    public ValueTask DisposeAsync()
    {
        _handle.Dispose();
        return ValueTask.CompletedTask;
    }

    private bool TryPunch(long offset, long length)
    {
        try
        {
            return Deallocation.Deallocate(_handle, blockDevice: false, offset, length, Path);
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static bool TryGetBlockDeviceLength(SafeFileHandle handle, out long length)
    {
        const ulong BlkGetSize64 = 0x80081272; // _IOR(0x12, 114, size_t)
        ulong size = 0;
        bool ok = Ioctl(handle, BlkGetSize64, ref size) == 0;
        length = (long)size;
        return ok;
    }

    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    private static extern int OpenFile([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static extern long Lseek(SafeFileHandle fd, long offset, int whence);

    [DllImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static extern int Ioctl(SafeFileHandle fd, ulong request, ref ulong result);
}
