using System.Runtime.InteropServices;

namespace Cbd.Benchmarks;

/// <summary>Kinds of real bytes from this machine, as a disk image holds them.</summary>
public enum SampleKind
{
    /// <summary>XML documentation of the .NET reference pack: English prose in markup.</summary>
    Text,

    /// <summary>System.Private.CoreLib.dll: code, metadata and resources.</summary>
    Binary,
}

internal static class Corpus
{
    /// <summary>One lblk of real bytes from this machine's libraries: compresses like disk contents do.</summary>
    public static byte[] Lblk(int size)
    {
        var data = new byte[size];
        string path = typeof(object).Assembly.Location;
        using var file = File.OpenRead(path);
        file.Position = Math.Min(1 << 20, file.Length - size);
        file.ReadExactly(data);
        return data;
    }

    /// <summary>
    /// <paramref name="count"/> blocks of <paramref name="size"/> bytes spread evenly over a file of the kind,
    /// each at a 4 KiB boundary, so that a figure is not one block's.
    /// </summary>
    public static byte[][] Samples(SampleKind kind, int size, int count)
    {
        string path = kind == SampleKind.Text ? TextFile() : typeof(object).Assembly.Location;
        using var file = File.OpenRead(path);
        if (file.Length < (long)size * count)
            throw new InvalidOperationException($"{path}: {file.Length} bytes, expected at least {(long)size * count}");
        var blocks = new byte[count][];
        for (int i = 0; i < count; i++)
        {
            blocks[i] = new byte[size];
            file.Position = (file.Length - size) * i / Math.Max(1, count - 1) / 4096 * 4096;
            file.ReadExactly(blocks[i]);
        }
        return blocks;
    }

    // The runtime's directory is DOTNET_ROOT/shared/Microsoft.NETCore.App/VERSION; the reference pack's XML
    // docs are under DOTNET_ROOT/packs in every SDK install.
    private static string TextFile()
    {
        string packs = Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", "..", "packs", "Microsoft.NETCore.App.Ref"));
        return Directory.Exists(packs)
            ? Directory.EnumerateFiles(packs, "System.Runtime.xml", SearchOption.AllDirectories).FirstOrDefault()
              ?? throw new FileNotFoundException($"no System.Runtime.xml under {packs}")
            : throw new DirectoryNotFoundException($"{packs}: no .NET reference pack to take text from");
    }
}
