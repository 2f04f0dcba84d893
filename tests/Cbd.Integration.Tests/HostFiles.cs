using System.Security.Cryptography;

namespace Cbd.Integration.Tests;

/// <summary>
/// Real data for the tests: copies of this machine's own files (shared libraries, package documentation), and
/// the hashing and sparse-file measurements used to compare what went in with what came out.
/// </summary>
public static class HostFiles
{
    /// <summary>The shared libraries of the machine's multiarch directory (e.g. /usr/lib/x86_64-linux-gnu/*.so*).</summary>
    public static IEnumerable<string> SharedLibraries()
    {
        string? multiarch = Directory.GetDirectories("/usr/lib", "*-linux-gnu").Order(StringComparer.Ordinal).FirstOrDefault();
        return multiarch is null ? [] : RegularFiles(multiarch, "*.so*", SearchOption.TopDirectoryOnly);
    }

    public static IEnumerable<string> Documentation() => RegularFiles("/usr/share/doc", "*", SearchOption.AllDirectories);

    /// <summary>
    /// Copies files, in order, below <paramref name="destination"/> under their absolute path, skipping any that would
    /// take the total past <paramref name="budget"/> bytes. Returns the bytes copied; fails the test when that is
    /// less than <paramref name="minimum"/>, since a test on too little data proves too little.
    /// </summary>
    public static long Copy(IEnumerable<string> files, string destination, long budget, long minimum)
    {
        long copied = 0;
        foreach (string file in files)
        {
            long length;
            try
            {
                length = new FileInfo(file).Length;
            }
            catch (IOException)
            {
                continue;
            }
            if (copied + length > budget)
            {
                continue;
            }
            string target = Path.Combine(destination, file.TrimStart('/'));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            try
            {
                File.Copy(file, target);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                continue;
            }
            copied += length;
        }
        Assert.True(copied >= minimum, $"found only {copied} bytes of host files to copy, need {minimum}");
        return copied;
    }

    /// <summary>SHA-256 of every regular file below <paramref name="root"/>, keyed by path relative to it.</summary>
    public static SortedDictionary<string, string> HashTree(string root)
    {
        var hashes = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (string file in RegularFiles(root, "*", SearchOption.AllDirectories))
        {
            using FileStream stream = File.OpenRead(file);
            hashes[Path.GetRelativePath(root, file)] = Convert.ToHexString(SHA256.HashData(stream));
        }
        return hashes;
    }

    /// <summary>SHA-256 of the first <paramref name="length"/> bytes of a file.</summary>
    public static string HashPrefix(string path, long length)
    {
        using FileStream stream = File.OpenRead(path);
        Assert.True(stream.Length >= length, $"{path} has {stream.Length} bytes, expected at least {length}");
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] buffer = new byte[1 << 20];
        long left = length;
        while (left > 0)
        {
            int read = stream.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
            Assert.True(read > 0, $"{path} ended early");
            hash.AppendData(buffer, 0, read);
            left -= read;
        }
        return Convert.ToHexString(hash.GetHashAndReset());
    }

    /// <summary>Offset of the first non-zero byte at or after <paramref name="offset"/>, or -1.</summary>
    public static long FirstNonZeroFrom(string path, long offset)
    {
        using FileStream stream = File.OpenRead(path);
        stream.Position = offset;
        byte[] buffer = new byte[1 << 20];
        int read;
        while ((read = stream.Read(buffer)) > 0)
        {
            int at = buffer.AsSpan(0, read).IndexOfAnyExcept((byte)0);
            if (at >= 0)
            {
                return stream.Position - read + at;
            }
        }
        return -1;
    }

    /// <summary>Bytes in 4 KiB blocks that are not all zero: the data a block device copy must actually store.</summary>
    public static long NonZeroBytes(string path)
    {
        using FileStream stream = File.OpenRead(path);
        byte[] buffer = new byte[1 << 20];
        long total = 0;
        int read;
        while ((read = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false)) > 0)
        {
            for (int block = 0; block < read; block += 4096)
            {
                if (buffer.AsSpan(block, Math.Min(4096, read - block)).IndexOfAnyExcept((byte)0) >= 0)
                {
                    total += Math.Min(4096, read - block);
                }
            }
        }
        return total;
    }

    /// <summary>Bytes the file occupies on disk (<c>stat -c '%b %B'</c>: allocated blocks times their size), not its length.</summary>
    public static async Task<long> AllocatedBytesAsync(string path)
    {
        ExternalTool.Result stat = await ExternalTool.RunAsync("stat", ["-c", "%b %B", path]);
        string[] fields = stat.StandardOutput.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return long.Parse(fields[0]) * long.Parse(fields[1]);
    }

    /// <summary>
    /// A raw ext4 image of <paramref name="size"/> bytes holding copies of host libraries and documentation, built
    /// with <c>mkfs.ext4 -d</c> (no mount needed).
    /// </summary>
    public static async Task CreateExt4ImageAsync(string image, long size, string staging, long libraryBytes, long documentationBytes)
    {
        Copy(SharedLibraries(), staging, libraryBytes, libraryBytes / 2);
        Copy(Documentation(), staging, documentationBytes, documentationBytes / 2);
        await using (var file = new FileStream(image, FileMode.CreateNew))
        {
            file.SetLength(size);
        }
        await ExternalTool.RunAsync("mkfs.ext4", ["-q", "-F", "-d", staging, image]);
    }

    private static IEnumerable<string> RegularFiles(string directory, string pattern, SearchOption option)
    {
        if (!Directory.Exists(directory))
        {
            return [];
        }
        var enumeration = new EnumerationOptions
        {
            RecurseSubdirectories = option == SearchOption.AllDirectories,
            IgnoreInaccessible = true,
            AttributesToSkip = FileAttributes.ReparsePoint,
        };
        return Directory.EnumerateFiles(directory, pattern, enumeration)
            .Where(file => new FileInfo(file).LinkTarget is null)
            .Order(StringComparer.Ordinal)
            .ToList();
    }
}
