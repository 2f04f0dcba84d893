namespace Cbd.Integration.Tests;

/// <summary>
/// A fresh directory for one test's images, sockets and mount points, deleted on dispose. It lives in /tmp rather
/// than under $TMPDIR because a Unix socket path must fit in 107 bytes.
/// </summary>
public sealed class ScratchDirectory : IDisposable
{
    public ScratchDirectory()
    {
        Path = System.IO.Path.Combine("/tmp", "cbd-it-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Directory(string name)
    {
        string path = File(name);
        System.IO.Directory.CreateDirectory(path);
        return path;
    }

    public void Dispose()
    {
        // Something still mounted below (a cleanup that failed) must not have its contents deleted through the mount.
        if (MountedUnder(Path))
        {
            return;
        }
        try
        {
            System.IO.Directory.Delete(Path, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    public static bool MountedUnder(string directory)
    {
        string prefix = directory.TrimEnd('/') + "/";
        // /proc/self/mounts escapes spaces as \040; scratch paths have none.
        return System.IO.File.ReadLines("/proc/self/mounts")
            .Select(line => line.Split(' '))
            .Any(fields => fields.Length > 1 && (fields[1] + "/").StartsWith(prefix, StringComparison.Ordinal));
    }

    public static bool IsMountPoint(string directory)
        => System.IO.File.ReadLines("/proc/self/mounts")
            .Select(line => line.Split(' '))
            .Any(fields => fields.Length > 1 && fields[1] == directory.TrimEnd('/'));
}
