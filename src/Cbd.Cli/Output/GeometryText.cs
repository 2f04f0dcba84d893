using Cbd.Core.Format;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Output;

/// <summary>Figures derived from a geometry, as format and info print them.</summary>
public static class GeometryText
{
    /// <summary>The header pblk and every zone's pbat and lbat pblks.</summary>
    public static ulong MetadataPblks(Geometry g) => 1 + g.NrZones * (1 + g.LbatPblks);

    public static double MetadataPercent(Geometry g) => Percent(MetadataPblks(g), g.NrPblks);

    public static double Percent(double part, double whole) => whole == 0 ? 0 : Math.Round(100 * part / whole, 3);

    /// <summary>Sizes, zones, the lblk_alloc encoding, metadata overhead and settings.</summary>
    public static void AddGeometry(Fields fields, Geometry g)
    {
        var h = g.Header;
        long physical = (long)g.NrPblks * Layout.PblkSize;
        fields.Add("physical size", $"{SizeParser.FormatApproximate(physical)} ({physical} bytes, {g.NrPblks} pblks of 4 KiB)");
        fields.Add("logical size", $"{SizeParser.FormatApproximate(g.LogicalBytes)} ({g.LogicalBytes} bytes, {g.NrLblks} lblks of {SizeParser.Format(g.LblkSize)})");
        string zone = $"1 pbat pblk, {g.LbatPblks} lbat pblks, ";
        fields.Add("zones", g.NrZones == 1
            ? $"1 zone of {g.LblkPerZone} lblks: {zone}{g.DataPblks(0)} data pblks"
            : $"{g.NrZones} zones of {g.LblkPerZone} lblks; each: {zone}{Layout.PblksPerZoneData} data pblks" +
              (g.DataPblks(g.NrZones - 1) < Layout.PblksPerZoneData ? $" (the last {g.DataPblks(g.NrZones - 1)})" : ""));
        fields.Add("lblk_alloc", $"{g.Alloc.Name}: {g.Alloc.EntrySize}-byte entries, {g.Alloc.EntriesPerSector} per 512-byte sector");
        fields.Add("data pblks", $"{g.TotalDataPblks} ({SizeParser.FormatApproximate((long)g.TotalDataPblks * Layout.PblkSize)})");
        fields.Add("metadata", $"{MetadataPblks(g)} pblks, {MetadataPercent(g):0.###} % of the device (header, pbats, lbats)");
        fields.Add("compression", CliOptions.Describe(h.Algorithm, h.Level));
        fields.Add("zero detection", CliOptions.OnOff(h.Flags.HasFlag(HeaderFlags.ZeroDetect)));
        fields.Add("lblk checksums", CliOptions.OnOff(h.Flags.HasFlag(HeaderFlags.LblkCrc)) + " (CRC32C in each lblk_alloc entry)");
    }
}
