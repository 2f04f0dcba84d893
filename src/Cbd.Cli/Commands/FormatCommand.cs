using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Cli.Storage;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using Spectre.Console;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary>
/// <c>cbd format IMAGE</c>: writes a new, empty cbd image on a new sparse file, an existing file or a
/// block device, refusing to overwrite anything that looks like data unless forced.
/// </summary>
public static class FormatCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The image: a file, created when it does not exist, or a block device.");
        var size = CliOptions.Size("--size",
            "Physical size of the image. Needed to create a file; an existing regular file is cut or extended to it. Default: the size of the existing file or block device.");
        var logicalSize = CliOptions.Size("--logical-size", "Size of the virtual device, rounded down to whole lblks. Default: 3 x the physical size.");
        var lblkSize = CliOptions.Size("--lblk-size",
            "Logical block (lblk) size, the unit of compression: a power of two from 4K. Default 64K. Larger lblks compress better and cost more per small write; the largest allowed depends on the physical size.",
            validate: bytes => bytes >= Layout.PblkSize && bytes <= 1 << 30 && long.IsPow2(bytes) ? null : "must be a power of two from 4K, e.g. 16K, 64K or 128K");
        var compression = CliOptions.Compression(
            "Compression of lblks written from now on, with an optional level. Default lz4 (level 0; default levels: zlib 6, zstd 3). " +
            "deflate is another name for zlib: lblks are stored as zlib streams (RFC 1950, deflate with a header and checksum).");
        var noZeroDetect = new Option<bool>("--no-zero-detect") { Description = "Store all-zero lblks like any others instead of leaving them unallocated." };
        var noChecksums = new Option<bool>("--no-checksums")
        {
            Description = "Keep no CRC32C of each lblk in its lblk_alloc entry: 4 bytes less per entry, but damaged data is then found only if it fails to decompress.",
        };
        var force = new Option<bool>("--force", "-f")
        {
            Description = "Format even when IMAGE holds a cbd image, a file system or any non-zero byte in its first 64 KiB. Everything on it is lost.",
        };
        var quiet = CliOptions.Quiet();

        var command = new Command("format", "Create an empty cbd image. " + ExitCodes.GeneralHelp)
        {
            image, size, logicalSize, lblkSize, compression, noZeroDetect, noChecksums, force, quiet,
        };
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
        {
            var choice = parse.GetValue(compression);
            var options = new FormatOptions
            {
                LogicalSize = parse.GetValue(logicalSize),
                LblkSize = (int)(parse.GetValue(lblkSize) ?? new FormatOptions().LblkSize),
                Algorithm = choice?.Algorithm ?? new FormatOptions().Algorithm,
                Level = choice?.Level,
                ZeroDetect = !parse.GetValue(noZeroDetect),
                LblkChecksums = !parse.GetValue(noChecksums),
            };
            return RunAsync(parse.GetRequiredValue(image), parse.GetValue(size), options, parse.GetValue(force), parse.GetValue(quiet), cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(string path, long? size, FormatOptions options, bool force, bool quiet, CancellationToken cancellationToken)
    {
        if (Directory.Exists(path))
        {
            throw new CliException($"{path}: is a directory");
        }
        Header header;
        if (!File.Exists(path))
        {
            if (size is null)
            {
                throw new CliException($"{path}: no such file; give --size SIZE to create it");
            }
            await PlanAsync(path, size.Value, options, cancellationToken).ConfigureAwait(false);
            header = await CreateAsync(path, size.Value, options, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await using var store = ImageFiles.Open(path, writable: true);
            header = await OverwriteAsync(path, store, size, options, force, quiet, cancellationToken).ConfigureAwait(false);
        }

        var geometry = Geometry.FromHeader(header, (long)header.NrPhysicalSectors * Layout.SectorSize);
        var fields = new Fields();
        GeometryText.AddGeometry(fields, geometry);
        fields.Write($"formatted {path}");
        return ExitCodes.Success;
    }

    private static async Task<Header> CreateAsync(string path, long size, FormatOptions options, CancellationToken cancellationToken)
    {
        FileBackingStore store;
        try
        {
            store = FileBackingStore.Create(path, size);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{path}: cannot create: {e.Message}");
        }
        Header header;
        try
        {
            // A new sparse file: only the header and the metadata pblks are written, at once.
            header = await CompressedDevice.FormatAsync(store, options, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await store.DisposeAsync().ConfigureAwait(false);
            File.Delete(path);
            throw;
        }
        await store.DisposeAsync().ConfigureAwait(false);
        return header;
    }

    private static async Task<Header> OverwriteAsync(string path, FileBackingStore store, long? size, FormatOptions options, bool force, bool quiet,
        CancellationToken cancellationToken)
    {
        if (store.IsBlockDevice && size is { } asked && asked != store.Length)
        {
            throw new CliException($"--size: {path} is a block device of {store.Length} bytes, and is formatted whole; leave --size out");
        }
        long physical = size ?? store.Length;
        if (physical == 0)
        {
            throw new CliException($"{path}: the file is empty; give --size SIZE");
        }

        byte[] probe = new byte[(int)Math.Min(ExistingContent.ProbeBytes, store.Length)];
        await store.ReadAsync(0, probe, cancellationToken).ConfigureAwait(false);
        if (ExistingContent.Describe(probe) is { } content && !force)
        {
            throw new CliException($"{path} holds {content}; formatting would destroy it. Check the path, or give --force to format it anyway");
        }

        var plan = await PlanAsync(path, physical, options, cancellationToken).ConfigureAwait(false);
        if (!store.IsBlockDevice)
        {
            // Cutting the file to nothing first returns every block it held: the image starts as sparse as a new one.
            await store.SetLengthAsync(0, cancellationToken).ConfigureAwait(false);
            await store.SetLengthAsync(physical, cancellationToken).ConfigureAwait(false);
            return await CompressedDevice.FormatAsync(store, options, cancellationToken).ConfigureAwait(false);
        }

        // A block device has zeros written over every zone's metadata, which takes a while on a large one.
        var geometry = Geometry.FromHeader(plan, physical);
        long total = ((long)GeometryText.MetadataPblks(geometry) + 1) * Layout.PblkSize;
        return await Terminal.WithProgressAsync(quiet, $"formatting {Path.GetFileName(path)}", total, async progress =>
        {
            await using var counting = new CountingStore(store, progress);
            return await CompressedDevice.FormatAsync(counting, options, cancellationToken).ConfigureAwait(false);
        }).ConfigureAwait(false);
    }

    /// <summary>Formats a store that discards writes: refuses sizes or options that cannot be formatted before anything is touched.</summary>
    private static async Task<Header> PlanAsync(string path, long physical, FormatOptions options, CancellationToken cancellationToken)
    {
        try
        {
            return await CompressedDevice.FormatAsync(new DiscardingStore(physical), options, cancellationToken).ConfigureAwait(false);
        }
        catch (ArgumentException e)
        {
            throw new CliException($"{path}: cannot format: {e.Message}");
        }
    }
}
