using Cbd.Core.Format;

namespace Cbd.Cli;

/// <summary>
/// What a file or block device already holds, judged from its first bytes, so that <c>cbd format</c>
/// does not destroy data by a mistyped path.
/// </summary>
public static class ExistingContent
{
    /// <summary>Bytes to read: the first 64 KiB and the pblk after them, which holds a btrfs superblock.</summary>
    public const int ProbeBytes = 68 * 1024;

    private const int AnyDataBytes = 64 * 1024;

    // (offset, signature, what it is). More specific first: GPT, FAT and NTFS also end their first sector with 55 AA.
    private static readonly (int Offset, byte[] Magic, string Name)[] s_signatures =
    [
        (0x438, [0x53, 0xEF], "an ext2/ext3/ext4 file system"),
        (0, "XFSB"u8.ToArray(), "an XFS file system"),
        (0x10040, "_BHRfS_M"u8.ToArray(), "a btrfs file system"),
        (0, [.. "LUKS"u8, 0xBA, 0xBE], "a LUKS encrypted volume"),
        (0x200, "LABELONE"u8.ToArray(), "an LVM physical volume"),
        (0x1000, [0xFC, 0x4E, 0x2B, 0xA9], "a Linux RAID member"),
        (0xFF6, "SWAPSPACE2"u8.ToArray(), "a swap area"),
        (0x8001, "CD001"u8.ToArray(), "an ISO 9660 file system"),
        (0, "hsqs"u8.ToArray(), "a squashfs file system"),
        (0, [0x51, 0x46, 0x49, 0xFB], "a qcow2 image"),
        (3, "NTFS    "u8.ToArray(), "an NTFS file system"),
        (0x52, "FAT32   "u8.ToArray(), "a FAT file system"),
        (0x36, "FAT"u8.ToArray(), "a FAT file system"),
        (0x200, "EFI PART"u8.ToArray(), "a GPT partition table"),
        (0x1FE, [0x55, 0xAA], "an MBR partition table or boot sector"),
    ];

    /// <summary>
    /// Null when <paramref name="probe"/> (the first <see cref="ProbeBytes"/> bytes, or fewer when the
    /// store is shorter) shows nothing worth keeping; otherwise what it looks like, e.g. "a cbd image".
    /// </summary>
    public static string? Describe(ReadOnlySpan<byte> probe)
    {
        if (probe.Length >= 4 && probe[..4].SequenceEqual(Header.Magic))
        {
            return DescribeCbd(probe);
        }
        foreach (var (offset, magic, name) in s_signatures)
        {
            if (probe.Length >= offset + magic.Length && probe.Slice(offset, magic.Length).SequenceEqual(magic))
            {
                return name;
            }
        }
        int data = probe[..Math.Min(probe.Length, AnyDataBytes)].IndexOfAnyExcept((byte)0);
        return data < 0 ? null : $"data (a non-zero byte at offset {data}, within the first 64 KiB)";
    }

    /// <summary>
    /// What an existing file holds, for a command about to replace it: null for an empty file, else what
    /// <see cref="Describe(ReadOnlySpan{byte})"/> finds, or its size when its first 64 KiB are zeros.
    /// </summary>
    public static async Task<string?> DescribeFileAsync(string path, CancellationToken cancellationToken)
    {
        await using var store = ImageFiles.Open(path, writable: false);
        if (store.Length == 0)
        {
            return null;
        }
        byte[] probe = new byte[(int)Math.Min(ProbeBytes, store.Length)];
        await store.ReadAsync(0, probe, cancellationToken).ConfigureAwait(false);
        return Describe(probe) ?? $"{SizeParser.Describe(store.Length)} of data (zeros in its first 64 KiB)";
    }

    private static string DescribeCbd(ReadOnlySpan<byte> probe)
    {
        try
        {
            if (Header.TryRead(probe, out var header))
            {
                var physical = (long)(header.NrPhysicalSectors * Layout.SectorSize);
                var logical = (long)(header.NrLogicalSectors * Layout.SectorSize);
                return $"a cbd image (physical {SizeParser.FormatApproximate(physical)}, logical {SizeParser.FormatApproximate(logical)})";
            }
        }
        catch (InvalidDataException)
        {
            // A damaged header still means the file was a cbd image.
        }
        return "a cbd image (its header does not validate)";
    }
}
