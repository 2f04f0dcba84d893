namespace Cbd.Benchmarks;

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
}
