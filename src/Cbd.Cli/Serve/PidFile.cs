using System.Globalization;

namespace Cbd.Cli.Serve;

/// <summary>
/// The <c>--pid-file</c> of a running server: written whole once the server accepts connections, removed on exit.
/// It is never written through a symbolic link, so a link planted at the path (or at a temporary name beside it) cannot
/// make a privileged server overwrite a file elsewhere.
/// </summary>
public sealed class PidFile : IDisposable
{
    private readonly string _path;
    private readonly string _content;

    private PidFile(string path, string content)
    {
        _path = path;
        _content = content;
    }

    /// <exception cref="CliException">The path is a symbolic link or a directory, or the file cannot be written.</exception>
    public static PidFile Write(string path)
    {
        CheckPath(path);
        string content = $"{Environment.ProcessId.ToString(CultureInfo.InvariantCulture)}\n";
        string directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string temporary = Path.Combine(directory, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            // CreateNew is O_CREAT|O_EXCL, which fails on any existing name, a symbolic link included, instead of
            // following it.
            var options = new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
            };
            using (var stream = new FileStream(temporary, options))
            using (var writer = new StreamWriter(stream))
            {
                if (!OperatingSystem.IsWindows())
                {
                    // Whatever the umask: a pid file others could write would let them point a script's kill elsewhere.
                    File.SetUnixFileMode(stream.SafeFileHandle, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
                }
                writer.Write(content);
            }
            // rename(2) replaces whatever is at the path, a link put there since the check included, without following
            // it; a script polling for the file never reads it half-written.
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporary);
            throw new CliException($"--pid-file {path}: cannot write it: {ex.Message}");
        }
        return new PidFile(path, content);
    }

    /// <summary>Refuses a path that is a symbolic link, a directory, or in a missing directory: checked before the image is opened, and again when writing.</summary>
    /// <exception cref="CliException">The path cannot be a pid file.</exception>
    public static void CheckPath(string path)
    {
        if (new FileInfo(path).LinkTarget is not null)
        {
            throw new CliException($"--pid-file {path}: is a symbolic link; refusing to write through it");
        }
        if (Directory.Exists(path))
        {
            throw new CliException($"--pid-file {path}: is a directory");
        }
        string directory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        if (!Directory.Exists(directory))
        {
            throw new CliException($"--pid-file {path}: no such directory {directory}");
        }
    }

    /// <summary>Removes the file, unless it no longer names this process (another server took the path over).</summary>
    public void Dispose()
    {
        try
        {
            if (new FileInfo(_path).LinkTarget is null && File.ReadAllText(_path) == _content)
            {
                File.Delete(_path);
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }
}
