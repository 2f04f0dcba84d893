using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;

namespace Cbd.Core.Tests.Storage;

/// <summary>
/// A real sparse file on the filesystem under the temporary directory (ext4 here; xfs, btrfs and tmpfs answer
/// SEEK_DATA alike): the lbat scan skips its holes without reading them, and finds every entry all the same.
/// </summary>
public sealed class SparseFileTests : IDisposable
{
    private const int MiB = 1 << 20;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"cbd-sparse-{Guid.NewGuid():N}.img");

    public void Dispose() => File.Delete(_path);

    [Fact]
    public async Task Next_data_offset_skips_holes_and_is_the_length_past_the_last_data()
    {
        await using var store = FileBackingStore.Create(_path, 64 * MiB);
        Assert.Equal(64L * MiB, store.NextDataOffset(0));

        await store.WriteAsync(40L * MiB, new byte[4096].Select(_ => (byte)1).ToArray());
        Assert.Equal(40L * MiB, store.NextDataOffset(0));
        Assert.Equal(40L * MiB + 100, store.NextDataOffset(40L * MiB + 100));
        Assert.Equal(64L * MiB, store.NextDataOffset(40L * MiB + 4096));
    }

    [Fact]
    public async Task Lbat_scan_of_a_sparse_image_finds_exactly_the_entries_written()
    {
        // 64 MiB holding 64 GiB: one zone whose lbat of tens of MiB is nearly all holes.
        long logical = 64L << 30;
        await using (var store = FileBackingStore.Create(_path, 64 * MiB))
        {
            await ImageFormatter.FormatAsync(store, new FormatOptions { LogicalSize = logical, MaxLogicalSize = logical });
        }
        const int LblkSize = 64 * 1024;
        ulong[] written = [0, 1, 70_000, 500_000, (ulong)(logical / LblkSize) - 1];
        await using (var device = await CompressedDevice.OpenAsync(FileBackingStore.Open(_path, writable: true)))
        {
            foreach (ulong lblk in written)
            {
                await device.WriteAsync((long)lblk * LblkSize, DeviceTestKit.Compressible(LblkSize, (int)lblk));
            }
        }

        await using var image = FileBackingStore.Open(_path, writable: false);
        var geometry = await Geometry.ReadAsync(image);
        Assert.True((long)geometry.LbatPblks * Layout.PblkSize > 4 * LbatReader.ChunkBytes, "the lbat must span several chunks");
        var found = new List<ulong>();
        for (uint zone = 0; zone < geometry.NrZones; zone++)
        {
            await LbatReader.ForEachEntryAsync(image, geometry, zone, (lblk, _, _, _) => found.Add(lblk));
        }
        Assert.Equal(written, found);
    }
}
