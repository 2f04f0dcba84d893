using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Cli.Storage;
using Cbd.Core.Compression;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
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
        var maxLogicalSize = CliOptions.Size("--max-logical-size",
            "The largest logical size cbd tune or cbd resize can give the image later without a new format: the lbats get an entry for each of its lblks " +
            "(a few bytes each). Default: the logical size, which is then also the ceiling (more zones, added by cbd resize, raise it).");
        var lblkSize = CliOptions.Size("--lblk-size",
            "Logical block (lblk) size, the unit of compression: a power of two from 4K. Default 64K. Larger lblks compress better and cost more per small write; the largest allowed depends on the physical size.",
            validate: bytes => bytes >= Layout.PblkSize && bytes <= 1 << 30 && long.IsPow2(bytes) ? null : "must be a power of two from 4K, e.g. 16K, 64K or 128K");
        var compression = CliOptions.Compression(
            "Compression of lblks written from now on, with an optional level. Default lz4 (level 0; default levels: zlib 6, zstd 3). " +
            "deflate is another name for zlib: lblks are stored as zlib streams (RFC 1950, deflate with a header and checksum).");
        var logSize = CliOptions.Size("--log-size",
            "Size of the write log at the end of the image, where writes smaller than an lblk go first and are merged into their lblks later. " +
            "Default: an eighth of the physical size, at most 1 GiB; 0 for none (an image of format version 1.0, which every cbd opens).",
            validate: bytes => bytes < 0 ? "must not be negative" : null);
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
            image, size, logicalSize, maxLogicalSize, lblkSize, compression, logSize, noZeroDetect, noChecksums, force, quiet,
        };
        CliOptions.SetAction(command, (parse, cancellationToken) =>
        {
            var choice = parse.GetValue(compression);
            var options = new FormatOptions
            {
                LogicalSize = parse.GetValue(logicalSize),
                MaxLogicalSize = parse.GetValue(maxLogicalSize),
                LblkSize = (int)(parse.GetValue(lblkSize) ?? new FormatOptions().LblkSize),
                Algorithm = choice?.Algorithm ?? new FormatOptions().Algorithm,
                Level = choice?.Level,
                ZeroDetect = !parse.GetValue(noZeroDetect),
                LblkChecksums = !parse.GetValue(noChecksums),
            };
            return RunAsync(parse.GetRequiredValue(image), parse.GetValue(size), parse.GetValue(logSize), options, parse.GetValue(force), parse.GetValue(quiet), cancellationToken);
        });
        return command;
    }

    private static async Task<int> RunAsync(string path, long? size, long? logSize, FormatOptions options, bool force, bool quiet, CancellationToken cancellationToken)
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
            options = WithLog(options, size.Value, logSize);
            Plan(path, size.Value, options);
            header = await CreateAsync(path, size.Value, options, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            await using var store = ImageFiles.Open(path, writable: true);
            options = WithLog(options, store.IsBlockDevice ? store.Length : size ?? store.Length, logSize);
            header = await OverwriteAsync(path, store, size, options, force, quiet, cancellationToken).ConfigureAwait(false);
        }

        if (!quiet)
        {
            PrintGeometry($"formatted {path}", header);
        }
        return ExitCodes.Success;
    }

    public static void PrintGeometry(string title, Header header)
    {
        var geometry = Geometry.FromHeader(header, (long)header.NrPhysicalSectors * Layout.SectorSize);
        var fields = new Fields();
        GeometryText.AddGeometry(fields, geometry);
        fields.Write(title);
    }

    /// <summary>Creates <paramref name="path"/> as a sparse file of <paramref name="size"/> bytes and formats it; removes it again on failure.</summary>
    public static async Task<Header> CreateAsync(string path, long size, FormatOptions options, CancellationToken cancellationToken)
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
            header = await ImageFormatter.FormatAsync(store, options, cancellationToken).ConfigureAwait(false);
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
            throw new CliException($"--size: {path} is a block device of {SizeParser.Describe(store.Length)}, and is formatted whole; leave --size out");
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

        var plan = Plan(path, physical, options);
        if (!store.IsBlockDevice)
        {
            await EmptyAsync(path, store, physical, cancellationToken).ConfigureAwait(false);
            return await ImageFormatter.FormatAsync(store, options, cancellationToken).ConfigureAwait(false);
        }

        // A block device has zeros written over every zone's metadata, which takes a while on a large one.
        var geometry = Geometry.FromHeader(plan, physical);
        long total = ((long)GeometryText.MetadataPblks(geometry) + 1) * Layout.PblkSize;
        return await Terminal.WithProgressAsync(quiet, $"formatting {Path.GetFileName(path)}", total, async progress =>
        {
            await using var counting = new CountingStore(store, progress);
            return await ImageFormatter.FormatAsync(counting, options, cancellationToken).ConfigureAwait(false);
        }).ConfigureAwait(false);
    }

    /// <summary>
    /// Cuts the file to nothing and back to <paramref name="physical"/> bytes, which returns every block it held: the image
    /// starts as sparse as a new one. Some file systems cannot change a file's size (an nbdfuse export, a FUSE file over
    /// a fixed-size disk): a file already of the right size is then formatted as it is, its old blocks left in place.
    /// </summary>
    private static async Task EmptyAsync(string path, FileBackingStore store, long physical, CancellationToken cancellationToken)
    {
        try
        {
            await store.SetLengthAsync(0, cancellationToken).ConfigureAwait(false);
            await store.SetLengthAsync(physical, cancellationToken).ConfigureAwait(false);
        }
        catch (IOException) when (store.Length == physical)
        {
            // ftruncate is not implemented there (ENOSYS): the file keeps its size, which is the one asked for.
        }
        catch (IOException e)
        {
            throw new CliException(
                $"{path}: its size cannot be changed ({e.Message}); it holds {SizeParser.Describe(store.Length)}: leave --size out to format it at that size");
        }
    }

    /// <summary>The write log asked for, or by default <see cref="ImageFormatter.DefaultLogBytes"/> of the physical size.</summary>
    public static FormatOptions WithLog(FormatOptions options, long physical, long? logSize) =>
        options with { LogSize = logSize ?? ImageFormatter.DefaultLogBytes(physical, options.LblkSize) };

    /// <summary>The default logical size: 3 x the physical size, in whole pblks.</summary>
    public static long DefaultLogical(long physical) => physical / Layout.PblkSize * Layout.PblkSize * ImageFormatter.DefaultLogicalFactor;

    /// <summary>
    /// Plans the image before anything is touched. A refusal names the option at fault and the limit in human units:
    /// the smallest --size that works, or the largest --logical-size this --size can map.
    /// </summary>
    public static Header Plan(string path, long physical, FormatOptions options)
    {
        if (TryPlan(physical, options, out var header, out string error))
        {
            return header;
        }
        int lblk = options.LblkSize;
        string lblkText = SizeParser.Describe(lblk);
        bool crc = options.LblkChecksums;
        ulong nrPblks = (ulong)(physical / Layout.PblkSize);
        if (nrPblks > 1UL << 48)
        {
            throw new CliException($"{path}: --size {SizeParser.Describe(physical)}: the format holds at most 2^48 pblks (1 EiB)");
        }
        int maxShift = LblkAllocFormat.MaxLblkShift(Math.Max(nrPblks, 1), crc);
        if (lblk > Layout.PblkSize << maxShift)
        {
            throw new CliException($"{path}: --lblk-size {lblkText}: at most {SizeParser.Describe(Layout.PblkSize << maxShift)} on an image of " +
                $"{SizeParser.Describe(physical)} (an lblk_alloc entry, which lists an lblk's pblks, must fit in one 512-byte sector); give a smaller --lblk-size");
        }
        if (options.LogicalSize is { } logical && logical < lblk)
        {
            throw new CliException($"{path}: --logical-size {SizeParser.Describe(logical)}: less than one lblk of {lblkText}; give at least {lblkText}");
        }
        if (options.MaxLogicalSize is { } ceiling && TryPlan(physical, options with { MaxLogicalSize = null }, out _, out _))
        {
            // Everything but the ceiling fits: the lbats it asks for do not.
            long mostCeiling = Largest(lblk, m => TryPlan(physical, options with { MaxLogicalSize = m }, out _, out _));
            throw new CliException($"{path}: --max-logical-size {SizeParser.Describe(ceiling)}: at most {SizeParser.Describe(mostCeiling)} on a physical size of " +
                $"{SizeParser.Describe(physical)} (the lbats, one entry per lblk, must fit beside two lblks of data); give a smaller --max-logical-size or a larger --size");
        }
        if (options.LogicalSize is null)
        {
            long least = Smallest(p => TryPlan(p, options, out _, out _));
            throw new CliException(least > 0
                ? $"{path}: --size {SizeParser.Describe(physical)}: too small; with {lblkText} lblks an image needs at least {SizeParser.Describe(least)} " +
                  $"(a header, a zone's pbat and lbat, and two lblks of data): give --size {SizeParser.Describe(least)} or more"
                : $"{path}: cannot format: {error}");
        }

        // A logical size was given: either the physical size is too small for any image, or too small to map that much.
        var smallest = options with { LogicalSize = lblk, MaxLogicalSize = null };
        if (!TryPlan(physical, smallest, out _, out _))
        {
            long least = Smallest(p => TryPlan(p, options, out _, out _));
            throw new CliException(least > 0
                ? $"{path}: --size {SizeParser.Describe(physical)}: too small; an image of {lblkText} lblks and a logical size of " +
                  $"{SizeParser.Describe(options.LogicalSize.Value)} needs at least {SizeParser.Describe(least)}: give --size {SizeParser.Describe(least)} or more"
                : $"{path}: cannot format: {error}");
        }
        long most = Largest(lblk, l => TryPlan(physical, options with { LogicalSize = l, MaxLogicalSize = null }, out _, out _));
        throw new CliException($"{path}: --logical-size {SizeParser.Describe(options.LogicalSize.Value)}: at most {SizeParser.Describe(most)} on a physical size of " +
            $"{SizeParser.Describe(physical)} (the lbats, one entry per lblk, must fit beside two lblks of data); give a smaller --logical-size or a larger --size");
    }

    private static bool TryPlan(long physical, FormatOptions options, out Header header, out string error)
    {
        header = null!;
        error = "";
        try
        {
            header = ImageFormatter.Plan(physical, options);
            return true;
        }
        catch (ArgumentException e)
        {
            error = e.Message;
            return false;
        }
    }

    /// <summary>The smallest whole number of pblks, in bytes, that <paramref name="fits"/>; 0 when none up to 2^40 pblks does.</summary>
    private static long Smallest(Func<long, bool> fits)
    {
        long low = 1, high = 1L << 40;
        if (!fits(high * Layout.PblkSize))
        {
            return 0;
        }
        while (low < high)
        {
            long mid = low + (high - low) / 2;
            if (fits(mid * Layout.PblkSize))
            {
                high = mid;
            }
            else
            {
                low = mid + 1;
            }
        }
        return low * Layout.PblkSize;
    }

    /// <summary>The largest whole number of <paramref name="unit"/>s, in bytes, that <paramref name="fits"/> (one unit is known to).</summary>
    private static long Largest(long unit, Func<long, bool> fits)
    {
        long low = 1, high = long.MaxValue / unit;
        while (low < high)
        {
            long mid = low + (high - low + 1) / 2;
            if (fits(mid * unit))
            {
                low = mid;
            }
            else
            {
                high = mid - 1;
            }
        }
        return low * unit;
    }
}
