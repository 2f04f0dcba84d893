namespace Cbd.Cli.Serve;

/// <summary>
/// What <c>cbd serve</c> prints once it accepts connections: the export, its URIs and commands to attach it. The
/// commands are meant to be pasted, so none of them destroys data: mkfs is suggested only for a device that holds
/// nothing, and nothing that writes for a read-only one.
/// </summary>
public static class AttachHints
{
    /// <param name="lblksUsed">Lblks of the device that hold data; 0 for an empty device.</param>
    public static IReadOnlyList<string> Lines(string image, string exportName, long size, int lblkSize, bool readOnly, long lblksUsed,
        IReadOnlyList<string> uris, string? socketPath)
    {
        var lines = new List<string>
        {
            $"cbd: serving {image} as export \"{exportName}\": {SizeParser.Format(size)}, lblk {SizeParser.Format(lblkSize)}" +
                $"{(readOnly ? ", read-only" : "")}, {(lblksUsed == 0 ? "empty" : $"{lblksUsed} lblks in use")}",
        };
        lines.AddRange(uris.Select(uri => $"  {uri}"));
        string first = uris[0];
        string fuse = $"/tmp/{exportName}-fuse";
        string mount = $"/mnt/{exportName}";
        lines.Add("Attach with:");
        lines.Add($"  nbdinfo '{first}'                      # size, block sizes, capabilities");
        lines.Add($"  qemu-img info '{first}'                # or -drive file={first},format=raw");
        if (socketPath is not null)
        {
            lines.Add($"  modprobe nbd && nbd-client -unix {socketPath} -N {exportName} /dev/nbd0");
        }
        else
        {
            var uri = new Uri(first);
            lines.Add($"  modprobe nbd && nbd-client {uri.Host.Trim('[', ']')} {uri.Port} -N {exportName} /dev/nbd0");
        }
        lines.Add($"  mkdir -p {fuse} {mount} && nbdfuse {(readOnly ? "-r " : "")}{fuse} '{first}' &");
        string loop = $"loop=$(losetup -f --show {(readOnly ? "-r " : "")}{fuse}/nbd)";
        if (readOnly)
        {
            lines.Add($"  {loop} && mount -o ro $loop {mount}");
        }
        else if (lblksUsed == 0)
        {
            lines.Add($"  {loop} && mkfs.ext4 $loop && mount $loop {mount}      # the device is empty");
        }
        else
        {
            // A device with data most likely holds a filesystem already: mkfs here would wipe it.
            lines.Add($"  {loop} && mount $loop {mount}      # holds data already: mount only");
        }
        return lines;
    }
}
