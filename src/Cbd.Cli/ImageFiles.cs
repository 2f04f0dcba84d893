using System.Runtime.InteropServices;
using Cbd.Cli.Storage;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Cli;

/// <summary>Opens images and raw files, turning the usual failures into one-line messages naming the path.</summary>
public static class ImageFiles
{
    /// <summary>Opens an existing file or block device.</summary>
    /// <exception cref="CliException">No such file, a directory, no permission, or the open failed.</exception>
    public static FileBackingStore Open(string path, bool writable)
    {
        RequireExisting(path);
        try
        {
            return FileBackingStore.Open(path, writable);
        }
        catch (UnauthorizedAccessException)
        {
            throw new CliException($"{path}: permission denied{(writable ? " (it is opened for writing)" : "")}");
        }
        catch (IOException e)
        {
            throw new CliException($"{path}: {e.Message}");
        }
    }

    /// <summary>
    /// Opens an image to read it. One that another process holds for writing (cbd serve) is opened without
    /// the lock (<see cref="FileBackingStore.OpenShared"/>), and <paramref name="inUse"/> says so: what is read is then
    /// the image as that process last wrote it back.
    /// </summary>
    /// <exception cref="CliException">No such file, a directory, no permission, or the open failed.</exception>
    public static IBackingStore OpenForReading(string path, out bool inUse)
    {
        RequireExisting(path);
        inUse = false;
        try
        {
            return FileBackingStore.Open(path, writable: false);
        }
        catch (UnauthorizedAccessException)
        {
            throw new CliException($"{path}: permission denied");
        }
        catch (IOException)
        {
            // A read-only open fails here only on the writer's exclusive lock; open(2) without the lock tells.
        }
        try
        {
            var shared = FileBackingStore.OpenShared(path);
            inUse = true;
            return shared;
        }
        catch (IOException e)
        {
            throw new CliException($"{path}: {e.Message}");
        }
    }

    public static void RequireExisting(string path)
    {
        if (Directory.Exists(path))
        {
            throw new CliException($"{path}: is a directory");
        }
        if (!File.Exists(path))
        {
            throw new CliException($"{path}: no such file");
        }
    }

    /// <summary>Reads and validates the image's header and geometry.</summary>
    /// <exception cref="CliException">Not a cbd image, or a header that is corrupt or describes no valid geometry.</exception>
    public static async Task<Geometry> ReadGeometryAsync(IBackingStore store, string path, CancellationToken cancellationToken)
    {
        try
        {
            return await Geometry.ReadAsync(store, cancellationToken).ConfigureAwait(false);
        }
        catch (InvalidDataException e)
        {
            throw new CliException($"{path}: {e.Message}; run cbd check for details");
        }
    }

    /// <summary>Opens an image as a device; the device owns the store from here, and disposes it.</summary>
    /// <exception cref="CliException">The image cannot be opened; the message names the problem.</exception>
    public static async Task<CompressedDevice> OpenDeviceAsync(string path, DeviceOptions options, CancellationToken cancellationToken)
    {
        var store = Open(path, writable: !options.ReadOnly);
        try
        {
            return await CompressedDevice.OpenAsync(store, options, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await store.DisposeAsync().ConfigureAwait(false);
            if (e is InvalidDataException)
            {
                throw new CliException($"{path}: {e.Message}; run cbd check for details");
            }
            throw;
        }
    }

    /// <summary>Creates a new sparse image file, formats it and opens it as a device; nothing is left behind on failure.</summary>
    /// <exception cref="CliException">The path exists or cannot be created, or the size cannot be formatted.</exception>
    public static async Task<CompressedDevice> CreateDeviceAsync(string path, long size, FormatOptions format, DeviceOptions options,
        CancellationToken cancellationToken)
    {
        FileBackingStore store;
        try
        {
            store = FileBackingStore.Create(path, size);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException(File.Exists(path) || Directory.Exists(path) ? $"{path}: already exists" : $"{path}: cannot create: {e.Message}");
        }
        try
        {
            await ImageFormatter.FormatAsync(store, format, cancellationToken).ConfigureAwait(false);
            return await CompressedDevice.OpenAsync(store, options, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            await store.DisposeAsync().ConfigureAwait(false);
            File.Delete(path);
            if (e is ArgumentException)
            {
                throw new CliException($"{path}: cannot format: {e.Message}");
            }
            throw;
        }
    }

    /// <summary>Whether two paths name the same file: through symbolic links, hard links and bind mounts alike (the same device and inode).</summary>
    public static bool SameFile(string a, string b)
    {
        if (FileId(a) is { } idA && FileId(b) is { } idB)
        {
            return idA == idB;
        }
        return Resolve(a) == Resolve(b);
    }

    /// <summary>The file's (st_dev, st_ino), following symbolic links; null when it cannot be had (no such file).</summary>
    private static (ulong Device, ulong Inode)? FileId(string path)
    {
        // struct stat starts with st_dev and st_ino, 8 bytes each, on x86-64 and arm64 alike; the buffer is larger than the whole struct.
        byte[] buffer = new byte[256];
        if (Stat(path, buffer) != 0)
        {
            return null;
        }
        return (BitConverter.ToUInt64(buffer, 0), BitConverter.ToUInt64(buffer, 8));
    }

    [DllImport("libc", EntryPoint = "stat", SetLastError = true)]
    private static extern int Stat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, [Out] byte[] buffer);

    private static string Resolve(string path)
    {
        string full = Path.GetFullPath(path);
        try
        {
            return File.ResolveLinkTarget(full, returnFinalTarget: true)?.FullName ?? full;
        }
        catch (IOException)
        {
            return full;
        }
    }
}
