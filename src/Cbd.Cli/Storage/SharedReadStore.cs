using System.Runtime.InteropServices;
using Cbd.Core.Storage;
using Microsoft.Win32.SafeHandles;

namespace Cbd.Cli.Storage;

/// <summary>
/// A read-only look at an image another process holds open for writing (cbd serve), as qemu-img's
/// <c>--force-share</c> gives: the file is opened with open(2) directly, without the flock that
/// <see cref="FileBackingStore.Open"/> takes, so it neither waits for nor disturbs the writer's lock.
/// </summary>
/// <remarks>
/// What it reads is the image as the writer last wrote it back: its lbats lag what the writer holds in its
/// cache, and a page may change between two reads, so whoever reads through it must take a torn view in
/// stride (an approximate answer, or a clear error). Every write is refused.
/// </remarks>
public sealed class SharedReadStore : IBackingStore
{
    private const int ReadOnlyCloseOnExec = 0x80000; // O_RDONLY (0) | O_CLOEXEC
    private const int SeekEnd = 2;

    private readonly SafeFileHandle _handle;

    private SharedReadStore(SafeFileHandle handle, long length, string path)
    {
        _handle = handle;
        Length = length;
        Path = path;
    }

    public string Path { get; }
    public long Length { get; }
    public bool CanWrite => false;

    /// <exception cref="IOException">The file cannot be opened; the message says why.</exception>
    public static SharedReadStore Open(string path)
    {
        int fd = OpenFile(path, ReadOnlyCloseOnExec);
        if (fd < 0)
        {
            throw new IOException($"cannot open it read-only: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        // lseek to the end gives the size of a regular file and of a block device alike.
        long length = Seek(handle, 0, SeekEnd);
        if (length < 0)
        {
            string error = Marshal.GetLastPInvokeErrorMessage();
            handle.Dispose();
            throw new IOException($"cannot find its size: {error}");
        }
        return new SharedReadStore(handle, length, path);
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        // Past the end (the writer may have cut the file meanwhile) reads as zeros, as a sparse region does.
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(_handle, buffer.Span[done..], offset + done);
            if (n == 0)
            {
                buffer.Span[done..].Clear();
                break;
            }
            done += n;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default) => throw ReadOnly();
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
    public ValueTask ZeroRangeAsync(long offset, long length, CancellationToken cancellationToken = default) => throw ReadOnly();
    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => throw ReadOnly();

    public ValueTask DisposeAsync()
    {
        _handle.Dispose();
        return ValueTask.CompletedTask;
    }

    private InvalidOperationException ReadOnly() => new($"{Path} is in use by another process and was opened for reading only");

    [DllImport("libc", EntryPoint = "open", SetLastError = true)]
    private static extern int OpenFile([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static extern long Seek(SafeFileHandle fd, long offset, int whence);
}
