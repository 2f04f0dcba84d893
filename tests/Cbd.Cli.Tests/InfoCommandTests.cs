using System.Text.Json;

namespace Cbd.Cli.Tests;

public class InfoCommandTests
{
    [Fact]
    public async Task Json_of_a_new_image_matches_its_geometry()
    {
        using var scratch = new Scratch();
        string image = scratch.File("fresh.cbd");
        await CbdTool.RunAsync(0, "format", image, "--size", "200M");
        var g = ImageFile.ReadGeometry(image);

        using var info = await FormatCommandTests.InfoAsync(image);
        var root = info.RootElement;
        Assert.Equal(1, root.GetProperty("json_version").GetInt32());
        Assert.Equal(image, root.GetProperty("image").GetString());
        Assert.Equal(200L << 20, root.GetProperty("store_bytes").GetInt64());

        var header = root.GetProperty("header");
        Assert.Equal(1, header.GetProperty("version_major").GetInt32());
        Assert.Equal(g.Header.NrPhysicalSectors, header.GetProperty("nr_physical_sectors").GetUInt64());
        Assert.Equal(g.Header.NrLogicalSectors, header.GetProperty("nr_logical_sectors").GetUInt64());
        Assert.Equal(4, header.GetProperty("lblk_shift").GetInt32());
        Assert.False(header.GetProperty("dirty").GetBoolean());
        Assert.Equal("lz4", header.GetProperty("algorithm").GetString());

        var geometry = root.GetProperty("geometry");
        Assert.Equal(g.NrZones, geometry.GetProperty("nr_zones").GetUInt32());
        Assert.Equal(g.LblkPerZone, geometry.GetProperty("lblk_per_zone").GetUInt32());
        Assert.Equal(g.LbatPblks, geometry.GetProperty("lbat_pblks_per_zone").GetUInt64());
        Assert.Equal(g.TotalDataPblks, geometry.GetProperty("data_pblks").GetUInt64());
        Assert.Equal(1 + g.NrZones * (1 + g.LbatPblks), geometry.GetProperty("metadata_pblks").GetUInt64());
        // The rest of the device is the write log, the last pblks (the zones end exactly at it at this size).
        var log = root.GetProperty("log");
        Assert.Equal(g.LogPblks, log.GetProperty("pblks").GetUInt64());
        Assert.Equal(g.NrPblks, geometry.GetProperty("data_pblks").GetUInt64() + geometry.GetProperty("metadata_pblks").GetUInt64() +
            log.GetProperty("pblks").GetUInt64());

        var usage = root.GetProperty("usage");
        Assert.Equal("header", usage.GetProperty("source").GetString());
        Assert.Equal(0, usage.GetProperty("lblks_used").GetInt64());
        Assert.Equal(0, usage.GetProperty("pblks_used").GetInt64());
        Assert.Equal(1.0, usage.GetProperty("compression_ratio").GetDouble());

        var zones = root.GetProperty("zones");
        Assert.Equal((int)g.NrZones, zones.GetArrayLength());
        for (uint zone = 0; zone < g.NrZones; zone++)
        {
            Assert.Equal(g.ZoneStart(zone), zones[(int)zone].GetProperty("first_pblk").GetUInt64());
            Assert.Equal(g.DataPblks(zone), zones[(int)zone].GetProperty("data_pblks").GetInt32());
        }
    }

    [Fact]
    public async Task Json_after_an_import_counts_what_was_written()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        using var info = await FormatCommandTests.InfoAsync(image);
        var usage = info.RootElement.GetProperty("usage");

        long lblks = usage.GetProperty("lblks_used").GetInt64();
        long pblks = usage.GetProperty("pblks_used").GetInt64();
        Assert.Equal(TestData.NonZeroLblks(bytes), lblks);
        Assert.Equal(lblks * TestData.LblkSize, usage.GetProperty("logical_bytes_used").GetInt64());
        Assert.Equal(pblks * 4096, usage.GetProperty("physical_bytes_used").GetInt64());
        Assert.InRange(pblks, 1, lblks * 16);
        Assert.Equal(Math.Round((double)lblks * TestData.LblkSize / (pblks * 4096), 3), usage.GetProperty("compression_ratio").GetDouble());
        Assert.True(usage.GetProperty("compression_ratio").GetDouble() > 1.0, "tar of text and shared libraries compress");
        Assert.Equal(pblks, info.RootElement.GetProperty("zones").EnumerateArray().Sum(z => z.GetProperty("pblks_used").GetInt64()));
        Assert.Equal(pblks, (long)info.RootElement.GetProperty("header").GetProperty("pblk_used").GetUInt64());

        // The checker counts from the lbats, info from the header and pbats: both the same.
        var check = await CbdTool.RunAsync(0, "check", image, "--json");
        using var report = JsonDocument.Parse(check.StandardOutput);
        Assert.Equal(lblks, report.RootElement.GetProperty("lblks_used").GetInt64());
        Assert.Equal(pblks, report.RootElement.GetProperty("pblks_used").GetInt64());
    }

    [Fact]
    public async Task A_dirty_image_is_counted_from_its_lbats()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        using var clean = await FormatCommandTests.InfoAsync(image);
        ImageFile.MarkDirty(image);

        using var dirty = await FormatCommandTests.InfoAsync(image);
        Assert.True(dirty.RootElement.GetProperty("header").GetProperty("dirty").GetBoolean());
        var usage = dirty.RootElement.GetProperty("usage");
        Assert.Equal("scan", usage.GetProperty("source").GetString());
        Assert.Equal(TestData.NonZeroLblks(bytes), usage.GetProperty("lblks_used").GetInt64());
        Assert.Equal(clean.RootElement.GetProperty("usage").GetProperty("pblks_used").GetInt64(), usage.GetProperty("pblks_used").GetInt64());
        Assert.Equal(0, usage.GetProperty("scan_errors").GetInt64());

        var text = await CbdTool.RunAsync(0, "info", image);
        Assert.Contains("dirty", text.StandardOutput);
        Assert.Contains("counted from the lbats", text.StandardOutput);
    }

    [Fact]
    public async Task Text_shows_geometry_usage_and_zones()
    {
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        var result = await CbdTool.RunAsync(0, "info", image);
        string output = result.StandardOutput;
        Assert.Contains("closed clean", output);
        Assert.Contains("lblk_alloc_16_16", output);
        Assert.Matches($@"lblks used\s+{TestData.NonZeroLblks(bytes)} of 384 ", output);
        Assert.Contains("compression ratio", output);
        Assert.Contains("fill", output);
    }
}
