using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Cbd.Core.Tests.Engine;

namespace Cbd.Core.Tests.Format;

/// <summary>
/// Opening a damaged image fails with an <see cref="InvalidDataException"/> that names the field and its
/// value, and leaves every byte of the store as it was.
/// </summary>
public class BadImageTests
{
    private const long Physical = 8 << 20;
    private const int LblkSize = 65536;

    /// <summary>A formatted image with some data and a clean close, so pbat and lbat pblks are not all zero.</summary>
    private static async Task<MemoryBackingStore> ImageAsync()
    {
        var store = await DeviceTestKit.FormatAsync(Physical, new FormatOptions { LblkSize = LblkSize });
        await using (var device = await DeviceTestKit.OpenAsync(store))
        {
            await device.WriteAsync(0, DeviceTestKit.Compressible(3 * LblkSize, 1));
            await device.WriteAsync(device.Size - LblkSize, DeviceTestKit.Random(LblkSize, 2));
        }
        return store;
    }

    private static byte[] AllBytes(MemoryBackingStore store)
    {
        var bytes = new byte[store.Length];
        store.Read(0, bytes);
        return bytes;
    }

    /// <summary>Opens the damaged store, expecting a refusal that changes nothing; returns the message.</summary>
    private static async Task<string> AssertRefusedAsync(MemoryBackingStore store, params string[] mentions)
    {
        var before = store.Clone();
        var e = await Assert.ThrowsAsync<InvalidDataException>(async () =>
        {
            await using var device = await DeviceTestKit.OpenAsync(store);
        });
        foreach (string mention in mentions)
            Assert.Contains(mention, e.Message);
        Assert.Equal(before.Length, store.Length);
        Assert.True(AllBytes(before).AsSpan().SequenceEqual(AllBytes(store)), "a refused open changed the store");
        return e.Message;
    }

    [Fact]
    public async Task Undamaged_image_opens()
    {
        var store = await ImageAsync();
        await using var device = await DeviceTestKit.OpenAsync(store);
        Assert.False(device.Recovered);
        Assert.Equal(4, device.GetStats().LblksUsed);
    }

    [Fact]
    public async Task Wrong_magic_is_not_a_cbd_image()
    {
        var store = await ImageAsync();
        store.Write(0, "XBD\x1A"u8);
        await AssertRefusedAsync(store, "magic", "5842441A", "4342441A");
    }

    [Fact]
    public async Task Never_formatted_store_is_not_a_cbd_image()
    {
        var store = new MemoryBackingStore(Physical);
        await AssertRefusedAsync(store, "magic", "00000000");
    }

    [Fact]
    public async Task Bad_header_checksum_is_refused()
    {
        var store = await ImageAsync();
        var sector = HeaderImage.ReadSector(store);
        sector[HeaderField.NrZones.Offset] ^= 0x01; // no checksum fix-up
        store.Write(0, sector);
        await AssertRefusedAsync(store, "checksum", "stored 0x", "computed 0x");
    }

    [Theory]
    [InlineData(2, 0, "version: 2.0")]
    [InlineData(1, 3, "version: 1.3")]
    [InlineData(0, 0, "version: 0.0")]
    public async Task Unknown_version_is_refused(int major, int minor, string mention)
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.VersionMajor, (ulong)major);
        HeaderImage.Rewrite(store, HeaderField.VersionMinor, (ulong)minor);
        await AssertRefusedAsync(store, mention);
    }

    [Fact]
    public async Task Unknown_flag_is_refused()
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.Flags, 0x0010 | (ulong)HeaderFlags.LblkCrc);
        await AssertRefusedAsync(store, "flags: 0x0014", "0x0010");
    }

    [Fact]
    public async Task Unknown_algorithm_is_refused()
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.Algorithm, 7);
        await AssertRefusedAsync(store, "algorithm: 7");
    }

    [Fact]
    public async Task Physical_sectors_not_a_whole_number_of_pblks_is_refused()
    {
        var store = await ImageAsync();
        ulong sectors = HeaderImage.Read(store, HeaderField.NrPhysicalSectors);
        HeaderImage.Rewrite(store, HeaderField.NrPhysicalSectors, sectors - 1);
        await AssertRefusedAsync(store, $"nr_physical_sectors: {sectors - 1}", "multiple of 8");
    }

    [Fact]
    public async Task Physical_size_past_2_pow_48_pblks_is_refused()
    {
        var store = await ImageAsync();
        ulong sectors = ((1UL << 48) + 1) * 8;
        HeaderImage.Rewrite(store, HeaderField.NrPhysicalSectors, sectors);
        await AssertRefusedAsync(store, $"nr_physical_sectors: {sectors}", "2^48");
    }

    [Theory]
    [InlineData(8, "expected 0..7")]   // one past the largest for a 16-bit device
    [InlineData(16, "expected 0..15")]
    [InlineData(0xFFFF, "expected 0..15")]
    public async Task Lblk_shift_past_the_maximum_is_refused(int shift, string range)
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.LblkShift, (ulong)shift);
        await AssertRefusedAsync(store, $"lblk_shift: {shift}", range);
    }

    [Fact]
    public async Task Logical_size_not_a_whole_number_of_lblks_is_refused()
    {
        var store = await ImageAsync();
        ulong sectors = HeaderImage.Read(store, HeaderField.NrLogicalSectors);
        HeaderImage.Rewrite(store, HeaderField.NrLogicalSectors, sectors + 8);
        await AssertRefusedAsync(store, $"nr_logical_sectors: {sectors + 8}", "128 sectors");
    }

    [Theory]
    [InlineData(0UL)]
    [InlineData(ulong.MaxValue)]
    [InlineData(ulong.MaxValue / 512 + 1)]
    public async Task Logical_size_of_zero_or_overflowing_is_refused(ulong sectors)
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.NrLogicalSectors, sectors);
        await AssertRefusedAsync(store, $"nr_logical_sectors: {sectors}");
    }

    [Fact]
    public async Task More_zones_than_fit_the_device_is_refused()
    {
        var store = await ImageAsync();
        ulong zones = HeaderImage.Read(store, HeaderField.NrZones);
        HeaderImage.Rewrite(store, HeaderField.NrZones, zones + 1);
        await AssertRefusedAsync(store, $"nr_zones: {zones + 1}", "at most 1 zones");
    }

    [Fact]
    public async Task Huge_zone_count_is_refused()
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.NrZones, uint.MaxValue);
        await AssertRefusedAsync(store, $"nr_zones: {uint.MaxValue}");
    }

    [Theory]
    [InlineData(0u, "lblk_per_zone: 0")]
    [InlineData(1u, "lblk_per_zone: 1 x nr_zones 1 = 1 lblks")]
    public async Task Zones_that_do_not_hold_every_lblk_are_refused(uint perZone, string mention)
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.LblkPerZone, perZone);
        await AssertRefusedAsync(store, mention);
    }

    [Fact]
    public async Task Zero_zones_is_refused()
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.NrZones, 0);
        await AssertRefusedAsync(store, "nr_zones: 0");
    }

    [Fact]
    public async Task Lbat_too_large_for_the_device_is_refused()
    {
        var store = await ImageAsync();
        HeaderImage.Rewrite(store, HeaderField.LblkPerZone, uint.MaxValue);
        await AssertRefusedAsync(store, "nr_zones: 1", "lbat pblks");
    }

    [Fact]
    public async Task Store_shorter_than_the_header_says_is_refused()
    {
        var store = await ImageAsync();
        await store.SetLengthAsync(Physical - 4096);
        await AssertRefusedAsync(store, $"nr_physical_sectors: {Physical / 512}", $"only {Physical - 4096} bytes");
    }

    [Theory]
    [InlineData(4095)]
    [InlineData(512)]
    [InlineData(0)]
    public async Task Store_shorter_than_a_header_is_refused(long length)
    {
        var store = await ImageAsync();
        await store.SetLengthAsync(length);
        await AssertRefusedAsync(store, $"backing store: {length} bytes", "4096-byte header");
    }

    [Fact]
    public async Task Rewrite_helper_leaves_a_header_that_opens()
    {
        // The fix-up itself is sound: rewriting a field to its own value changes nothing.
        var store = await ImageAsync();
        var before = AllBytes(store);
        foreach (var field in HeaderField.All)
            HeaderImage.Rewrite(store, field, HeaderImage.Read(store, field));
        Assert.Equal(before, AllBytes(store));
        await using var device = await DeviceTestKit.OpenAsync(store);
    }
}
