using System.Formats.Tar;

namespace Cbd.Cli.Tests;

/// <summary>
/// A raw disk image made of this machine's own files, with runs of zeros between them, and a cbd image it
/// was imported into by <c>cbd import</c>. Built once per test run; tests work on copies.
/// </summary>
/// <remarks>
/// Layout of the 24 MiB raw image (lblks of 64 KiB): a tar archive of /usr/share/doc files in the first
/// 9 MiB; zeros to 12 MiB; shared libraries' bytes to 18 MiB; zeros; 30000 bytes copied again at an offset
/// aligned to nothing (22 MiB + 12345); zeros to the end.
/// </remarks>
public static class TestData
{
    public const int LblkSize = 64 * 1024;
    public const long RawLength = 24L << 20;
    public const string RawSize = "24M";

    /// <summary>The physical size of the image: room for the data (about 14 MiB compressed) with some to spare.</summary>
    public const string ImageSize = "32M";

    private const int TarBudget = 9 << 20;
    private const int LibrariesAt = 12 << 20;
    private const int LibrariesLength = 6 << 20;
    private const int IslandAt = (22 << 20) + 12345;
    private const int IslandLength = 30000;

    private static readonly Lazy<Task<Base>> s_base = new(BuildAsync);

    public sealed record Base(string Raw, string Image, byte[] Bytes);

    /// <summary>A copy of the imported image, and the raw image, in <paramref name="scratch"/>.</summary>
    public static async Task<(string Raw, string Image, byte[] Bytes)> CopyAsync(Scratch scratch)
    {
        var built = await s_base.Value;
        string image = scratch.File("image.cbd");
        File.Copy(built.Image, image);
        return (built.Raw, image, built.Bytes);
    }

    /// <summary>The raw image alone: its path (shared, read-only by convention) and bytes.</summary>
    public static async Task<(string Raw, byte[] Bytes)> RawAsync()
    {
        var built = await s_base.Value;
        return (built.Raw, built.Bytes);
    }

    /// <summary>lblks of <paramref name="bytes"/> holding a non-zero byte: what an import with zero detection allocates.</summary>
    public static int NonZeroLblks(byte[] bytes)
    {
        int count = 0;
        for (int at = 0; at < bytes.Length; at += LblkSize)
        {
            if (bytes.AsSpan(at, Math.Min(LblkSize, bytes.Length - at)).ContainsAnyExcept((byte)0))
            {
                count++;
            }
        }
        return count;
    }

    private static async Task<Base> BuildAsync()
    {
        string directory = Path.Combine(Path.GetTempPath(), "cbd-cli-base-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(directory);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(directory, recursive: true);
            }
            catch (IOException)
            {
            }
        };

        byte[] bytes = BuildRaw();
        string raw = Path.Combine(directory, "raw.img");
        await File.WriteAllBytesAsync(raw, bytes);
        string image = Path.Combine(directory, "image.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", ImageSize, "--logical-size", RawSize);
        await CbdTool.RunAsync(0, "import", raw, image);
        return new Base(raw, image, bytes);
    }

    private static byte[] BuildRaw()
    {
        byte[] raw = new byte[RawLength];
        int tar = WriteTar(raw.AsSpan(0, TarBudget));
        Assert.True(tar >= 4 << 20, $"found only {tar} bytes of /usr/share files for the tar archive, need 4 MiB");
        int libraries = Concatenate(SharedLibraries(), raw.AsSpan(LibrariesAt, LibrariesLength));
        Assert.True(libraries == LibrariesLength, $"found only {libraries} bytes of shared libraries, need {LibrariesLength}");
        raw.AsSpan(0, IslandLength).CopyTo(raw.AsSpan(IslandAt));
        return raw;
    }

    /// <summary>Writes a tar archive of documentation files into <paramref name="destination"/>; returns its length.</summary>
    private static int WriteTar(Span<byte> destination)
    {
        var archive = new MemoryStream();
        using (var writer = new TarWriter(archive, TarEntryFormat.Pax, leaveOpen: true))
        {
            foreach (string file in RegularFiles("/usr/share/doc").Concat(RegularFiles("/usr/share")))
            {
                long room = destination.Length - archive.Length - 1024; // the archive ends with two zero blocks
                if (room < 8192)
                {
                    break;
                }
                // A header, a PAX extended header and its data, then the file padded to 512 bytes.
                long need = 4 * 512 + (new FileInfo(file).Length + 511) / 512 * 512;
                if (need > room)
                {
                    continue;
                }
                try
                {
                    writer.WriteEntry(file, file.TrimStart('/'));
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
                {
                }
            }
        }
        Assert.True(archive.Length <= destination.Length, "the tar archive outgrew its budget");
        archive.GetBuffer().AsSpan(0, (int)archive.Length).CopyTo(destination);
        return (int)archive.Length;
    }

    /// <summary>Fills <paramref name="destination"/> with the files' bytes one after another; returns the bytes filled.</summary>
    private static int Concatenate(IEnumerable<string> files, Span<byte> destination)
    {
        int filled = 0;
        foreach (string file in files)
        {
            if (filled == destination.Length)
            {
                break;
            }
            try
            {
                using var stream = File.OpenRead(file);
                int n;
                while (filled < destination.Length && (n = stream.Read(destination[filled..])) > 0)
                {
                    filled += n;
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }
        return filled;
    }

    private static IEnumerable<string> SharedLibraries() =>
        Directory.GetDirectories("/usr/lib", "*-linux-gnu").Order(StringComparer.Ordinal).SelectMany(d => RegularFiles(d, "*.so*", SearchOption.TopDirectoryOnly));

    private static IEnumerable<string> RegularFiles(string root, string pattern = "*", SearchOption option = SearchOption.AllDirectories)
    {
        if (!Directory.Exists(root))
        {
            return [];
        }
        var options = new EnumerationOptions { RecurseSubdirectories = option == SearchOption.AllDirectories, IgnoreInaccessible = true, AttributesToSkip = FileAttributes.ReparsePoint };
        return Directory.EnumerateFiles(root, pattern, options)
            .Where(f => new FileInfo(f) is { LinkTarget: null, Length: > 0 })
            .Order(StringComparer.Ordinal);
    }
}
