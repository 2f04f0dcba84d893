using System.Text.Json;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;

namespace Cbd.Cli.Tests;

public class CheckCommandTests
{
    [Fact]
    public async Task A_clean_image_checks_clean_with_and_without_data()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        var text = await CbdTool.RunAsync(0, "check", image);
        Assert.Contains("no errors", text.StandardOutput);

        var json = await CheckJsonAsync(0, image, "--data");
        Assert.Equal("clean", json.GetProperty("result").GetString());
        Assert.Equal(0, json.GetProperty("exit_code").GetInt32());
        Assert.True(json.GetProperty("data_checked").GetBoolean());
        Assert.Equal(0, json.GetProperty("errors").GetInt64());
        Assert.Equal(0, json.GetProperty("problems").GetArrayLength());
        Assert.Equal(JsonValueKind.Null, json.GetProperty("repair").ValueKind);

        // Nothing to repair: exit 0, nothing written.
        var repair = await CheckJsonAsync(0, image, "--repair", "--data");
        Assert.False(repair.GetProperty("repair").GetProperty("wrote").GetBoolean());
    }

    /// <summary>A way to damage an image on disk, what check then reports, and the lblks repair may lose.</summary>
    public sealed record Damage(string Name, bool NeedsData, string Kind, Func<string, Geometry, ulong[]> Apply)
    {
        public override string ToString() => Name;
    }

    public static TheoryData<string> Damages => [.. s_damages.Keys];

    private static readonly Dictionary<string, Damage> s_damages = new Damage[]
    {
        // A bit of a stored lblk flips: only reading the data finds it (its CRC32C fails), and the lblk is lost.
        new("bit flip in stored data", true, "lblk_checksum_mismatch", (image, g) =>
        {
            var entry = ImageFile.ReadEntry(image, g, 3);
            Assert.NotEqual(0u, entry.Length);
            ImageFile.FlipBit(image, (long)entry.Slots[0] * Layout.PblkSize + 1000, 5);
            return [3];
        }),
        // A pbat marks a free pblk in use: space leaks, no data is lost.
        new("stray pbat bit", false, "pbat_marks_unused", (image, g) =>
        {
            byte[] pbat = ImageFile.Read(image, (long)g.ZoneStart(0) * Layout.PblkSize, Layout.PblkSize);
            int free = Enumerable.Range(0, g.DataPblks(0)).Last(bit => (pbat[bit / 8] & (1 << (bit % 8))) == 0);
            ImageFile.SetPbatBit(image, g, 0, free);
            return [];
        }),
        // An entry points past the end of the device: its lblk is lost.
        new("entry pointing outside the device", false, "pblk_outside_device", (image, g) =>
        {
            var entry = ImageFile.ReadEntry(image, g, 7);
            Assert.NotEqual(0u, entry.Length);
            entry.Slots[0] = g.NrPblks + 5;
            ImageFile.WriteEntry(image, g, 7, entry);
            return [7];
        }),
        // An entry points into an lbat: its lblk is lost.
        new("entry pointing at metadata", false, "pblk_in_metadata", (image, g) =>
        {
            var entry = ImageFile.ReadEntry(image, g, 200);
            Assert.NotEqual(0u, entry.Length);
            entry.Slots[0] = g.LbatStart(0);
            ImageFile.WriteEntry(image, g, 200, entry);
            return [200];
        }),
    }.ToDictionary(d => d.Name);

    [Theory]
    [MemberData(nameof(Damages))]
    public async Task Damage_is_found_repaired_and_intact_data_still_exports_identically(string name)
    {
        var damage = s_damages[name];
        using var scratch = new Scratch();
        var (_, image, bytes) = await TestData.CopyAsync(scratch);
        var g = ImageFile.ReadGeometry(image);
        ulong[] hit = damage.Apply(image, g);
        string[] data = damage.NeedsData ? ["--data"] : [];

        var found = await CheckJsonAsync(4, image, data);
        Assert.Equal("errors_left", found.GetProperty("result").GetString());
        var problem = found.GetProperty("problems").EnumerateArray().First(p => p.GetProperty("kind").GetString() == damage.Kind);
        Assert.Equal("error", problem.GetProperty("severity").GetString());
        if (hit.Length > 0)
        {
            Assert.Equal(hit[0], problem.GetProperty("lblk").GetUInt64());
        }
        var table = await CbdTool.RunAsync(4, ["check", image, .. data]);
        Assert.Contains(damage.Kind, table.StandardOutput);
        Assert.Contains("cbd check --repair", table.StandardOutput);

        var repaired = await CheckJsonAsync(1, image, ["--repair", .. data]);
        Assert.Equal("corrected", repaired.GetProperty("result").GetString());
        var repair = repaired.GetProperty("repair");
        Assert.True(repair.GetProperty("repaired").GetBoolean());
        ulong[] lost = [.. repair.GetProperty("lost_lblks").EnumerateArray().Select(l => l.GetUInt64())];
        Assert.Equal(hit, lost);

        await CheckJsonAsync(0, image, "--data");

        // Every lblk but the lost ones exports as it was imported; the lost ones read as zeros.
        byte[] expected = (byte[])bytes.Clone();
        foreach (ulong lblk in lost)
        {
            Array.Clear(expected, (int)lblk * TestData.LblkSize, TestData.LblkSize);
        }
        string exported = scratch.File("exported.img");
        await CbdTool.RunAsync(0, "export", image, exported);
        Assert.True(expected.AsSpan().SequenceEqual(File.ReadAllBytes(exported)), "the export differs from the import beyond the lost lblks");
    }

    [Fact]
    public async Task A_dirty_image_is_no_error_and_repair_closes_it_clean()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        ImageFile.MarkDirty(image);

        var dirty = await CheckJsonAsync(0, image);
        Assert.True(dirty.GetProperty("dirty").GetBoolean());
        Assert.Equal(1, dirty.GetProperty("notes").GetInt64());
        Assert.Equal("image_dirty", dirty.GetProperty("problems")[0].GetProperty("kind").GetString());
        Assert.Equal("info", dirty.GetProperty("problems")[0].GetProperty("severity").GetString());

        var repaired = await CheckJsonAsync(1, image, "--repair");
        Assert.Contains(repaired.GetProperty("repair").GetProperty("actions").EnumerateArray(), a => a.GetString()!.Contains("dirty flag"));
        var after = await CheckJsonAsync(0, image);
        Assert.False(after.GetProperty("dirty").GetBoolean());
    }

    [Fact]
    public async Task A_header_that_fails_its_checksum_cannot_be_repaired()
    {
        using var scratch = new Scratch();
        var (_, image, _) = await TestData.CopyAsync(scratch);
        ImageFile.FlipBit(image, 0x10, 0); // nr_logical_sectors, under the header's CRC32C

        var found = await CheckJsonAsync(4, image);
        Assert.False(found.GetProperty("header_valid").GetBoolean());
        Assert.Equal("header_corrupt", found.GetProperty("problems")[0].GetProperty("kind").GetString());
        var repair = await CheckJsonAsync(4, image, "--repair");
        Assert.False(repair.GetProperty("repair").GetProperty("repaired").GetBoolean());
        Assert.Contains("header", repair.GetProperty("repair").GetProperty("cannot_repair_reason").GetString());
        await CbdTool.FailsAsync(1, "header checksum", "info", image);
    }

    [Fact]
    public void Every_problem_kind_is_documented_under_its_json_name()
    {
        string doc = File.ReadAllText(Path.Combine(RepositoryRoot(), "docs", "CLI.md"));
        foreach (var kind in Enum.GetValues<CheckProblemKind>())
        {
            string name = JsonNamingPolicy.SnakeCaseLower.ConvertName(kind.ToString());
            Assert.True(doc.Contains($"`{name}`"), $"docs/CLI.md does not document the problem kind `{name}`");
        }
    }

    private static async Task<JsonElement> CheckJsonAsync(int exitCode, string image, params string[] options)
    {
        var result = await CbdTool.RunAsync(exitCode, ["check", image, "--json", .. options]);
        using var document = JsonDocument.Parse(result.StandardOutput);
        var root = document.RootElement.Clone();
        Assert.Equal(exitCode, root.GetProperty("exit_code").GetInt32());
        return root;
    }

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "cbd.slnx")))
            {
                return directory.FullName;
            }
        }
        throw new InvalidOperationException("cbd.slnx not found above the test directory");
    }
}
