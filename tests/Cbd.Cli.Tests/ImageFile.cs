using Cbd.Core.Format;

namespace Cbd.Cli.Tests;

/// <summary>Raw access to an image file at offsets computed from its geometry, to damage it the way a disk can.</summary>
public static class ImageFile
{
    public static Geometry ReadGeometry(string image)
    {
        using var file = File.OpenRead(image);
        byte[] page = new byte[Layout.HeaderSize];
        file.ReadExactly(page);
        Assert.True(Header.TryRead(page, out var header), $"{image} holds no cbd header");
        return Geometry.FromHeader(header, file.Length);
    }

    public sealed record Entry(ulong[] Slots, uint Length, uint Crc)
    {
        public ulong[] UsedPblks(Geometry g) => Length == 0 ? [] : Slots[..g.Alloc.PblksFor(Length)];
    }

    public static Entry ReadEntry(string image, Geometry g, ulong lblk)
    {
        byte[] bytes = Read(image, g.EntryByteOffset(lblk), g.Alloc.EntrySize);
        var slots = new ulong[g.Alloc.PblksPerLblk];
        g.Alloc.Read(bytes, slots, out uint length, out uint crc);
        return new Entry(slots, length, crc);
    }

    public static void WriteEntry(string image, Geometry g, ulong lblk, Entry entry)
    {
        byte[] bytes = new byte[g.Alloc.EntrySize];
        g.Alloc.Write(bytes, entry.Slots, entry.Length, entry.Crc);
        Write(image, g.EntryByteOffset(lblk), bytes);
    }

    public static void FlipBit(string image, long offset, int bit)
    {
        byte[] b = Read(image, offset, 1);
        b[0] ^= (byte)(1 << bit);
        Write(image, offset, b);
    }

    /// <summary>Sets the pbat bit of a zone's data pblk.</summary>
    public static void SetPbatBit(string image, Geometry g, uint zone, int bit)
    {
        long offset = (long)g.ZoneStart(zone) * Layout.PblkSize + bit / 8;
        byte[] b = Read(image, offset, 1);
        b[0] |= (byte)(1 << (bit % 8));
        Write(image, offset, b);
    }

    /// <summary>Rewrites the header with the dirty flag set, as a crash while open leaves it.</summary>
    public static void MarkDirty(string image)
    {
        var header = ReadGeometry(image).Header;
        byte[] page = new byte[Layout.HeaderSize];
        (header with { Flags = header.Flags | HeaderFlags.Dirty }).Write(page);
        Write(image, 0, page.AsSpan(0, Layout.SectorSize).ToArray());
    }

    public static byte[] Read(string path, long offset, int length)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Read);
        file.Position = offset;
        byte[] bytes = new byte[length];
        file.ReadExactly(bytes);
        return bytes;
    }

    public static void Write(string path, long offset, byte[] bytes)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.Write);
        file.Position = offset;
        file.Write(bytes);
    }

    /// <summary>Bytes the file takes on disk: st_blocks x 512, as <c>stat -c %b</c> reports it.</summary>
    public static async Task<long> AllocatedBytesAsync(string path)
    {
        var start = new System.Diagnostics.ProcessStartInfo("stat") { RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("%b");
        start.ArgumentList.Add(path);
        using var process = System.Diagnostics.Process.Start(start)!;
        string output = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.Equal(0, process.ExitCode);
        return long.Parse(output.Trim(), System.Globalization.CultureInfo.InvariantCulture) * 512;
    }
}
