using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Maintenance;
using Spectre.Console;
using Layout = Cbd.Core.Format.Layout;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd import RAW IMAGE</c>: copies a raw disk image into an existing cbd image.</summary>
public static class ImportCommand
{
    /// <summary>What is looked at at once when zeroing what lies past the raw image's end.</summary>
    private const long TailChunk = 256L << 20;

    public static Command Create()
    {
        var raw = new Argument<string>("RAW") { Description = "The raw disk image to read: a file, a block device, or - for stdin." };
        var image = CliOptions.Image(
            "The cbd image to write. When it does not exist it is created, sized to RAW (as qemu-img convert does): its logical size is RAW's " +
            "size, its physical size holds all of RAW even if nothing compresses besides the default write log (a sparse file). An existing image's logical size must hold RAW.");
        var quiet = CliOptions.Quiet("and no summary");
        var command = new Command("import",
            "Copy a raw disk image into a cbd image: afterwards the device reads as RAW followed by zeros. " +
            "All-zero lblks stay unallocated. " + ExitCodes.GeneralHelp)
        {
            raw, image, quiet,
        };
        CliOptions.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(raw), parse.GetRequiredValue(image), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string rawPath, string path, bool quiet, CancellationToken cancellationToken)
    {
        bool stdin = rawPath == "-";
        if (!stdin)
        {
            ImageFiles.RequireExisting(rawPath);
            if (File.Exists(path) && ImageFiles.SameFile(rawPath, path))
            {
                throw new CliException($"{rawPath}: RAW and IMAGE are the same file");
            }
        }
        bool created = false;
        if (!File.Exists(path) && !Directory.Exists(path))
        {
            if (stdin)
            {
                throw new CliException($"{path}: no such file; importing from stdin needs an existing image, as the size is not known before the end: " +
                    "create it with cbd format first");
            }
            await CreateForAsync(rawPath, path, quiet, cancellationToken).ConfigureAwait(false);
            created = true;
        }
        ImageFiles.RequireExisting(path);

        var device = await ImageFiles.OpenDeviceAsync(path, new DeviceOptions(), cancellationToken).ConfigureAwait(false);
        long imported = 0;
        long total = 0;
        var counted = new ProgressCounter();
        using var interruption = Interruption.Catch(cancellationToken);
        try
        {
            bool wasEmpty = device.GetStats().LblksUsed == 0;
            if (stdin)
            {
                await using var input = Console.OpenStandardInput();
                var counting = new CountingReadStream(input);
                total = device.Size;
                await Terminal.WithProgressAsync(quiet, $"importing stdin into {Path.GetFileName(path)}", device.Size,
                    progress => ImageCopier.ImportAsync(counting, device, counted.With(progress), interruption.Token)).ConfigureAwait(false);
                imported = counting.BytesRead;
            }
            else
            {
                await using var source = ImageFiles.Open(rawPath, writable: false);
                imported = total = source.Length;
                if (imported > device.Size)
                {
                    throw new CliException($"{rawPath} holds {SizeParser.Describe(imported)}, more than the logical size of {path}, " +
                        $"{SizeParser.Describe(device.Size)}; grow it first (cbd tune --logical-size {SizeParser.Format(imported).Replace(" ", "", StringComparison.Ordinal)}, " +
                        "or cbd resize), or import into a new image (a path that does not exist yet)");
                }
                await Terminal.WithProgressAsync(quiet, $"importing {Path.GetFileName(rawPath)}", imported,
                    progress => ImageCopier.ImportAsync(source, device, counted.With(progress), interruption.Token)).ConfigureAwait(false);
            }

            // An image that held nothing reads as zeros past RAW already; otherwise old data there is discarded.
            if (!wasEmpty && imported < device.Size)
            {
                await ZeroFromAsync(device, imported, interruption.Token).ConfigureAwait(false);
            }
            await device.FlushAsync(interruption.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (interruption.Signalled)
        {
            // What was written is kept: closing writes it back and marks the image clean, so it opens as it now is.
            await device.DisposeAsync().ConfigureAwait(false);
            string held = created ? "zeros" : "what it held before";
            throw new CliException($"import into {path} interrupted after about {SizeParser.Describe(counted.Done)} of " +
                $"{(stdin ? "stdin" : SizeParser.Describe(total))}; {path} is consistent and closed clean, and holds that part of {(stdin ? "stdin" : rawPath)} " +
                $"(the lblks written so far), with {held} elsewhere. Run the import again to finish it");
        }
        catch
        {
            await device.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        var stats = device.GetStats();
        await device.DisposeAsync().ConfigureAwait(false);
        if (!quiet)
        {
            Console.Out.WriteLine($"imported {imported} bytes ({SizeParser.FormatApproximate(imported)}) into {path}: " +
                $"{stats.LblksUsed} lblks in use, {SizeParser.FormatApproximate(stats.PhysicalBytesUsed)} stored, compression ratio {stats.CompressionRatio:0.000}");
        }
        return ExitCodes.Success;
    }

    /// <summary>
    /// Creates the image for RAW: logical size RAW's size, in lblks of 64 KiB or, when RAW's size is not a whole number of them,
    /// the largest power of two from 4 KiB that divides it; physical size the least that stores every lblk uncompressed.
    /// </summary>
    private static async Task CreateForAsync(string rawPath, string path, bool quiet, CancellationToken cancellationToken)
    {
        long size;
        await using (var source = ImageFiles.Open(rawPath, writable: false))
        {
            size = source.Length;
        }
        if (size == 0)
        {
            throw new CliException($"{rawPath}: is empty; there is nothing to size {path} by");
        }
        int lblk = new FormatOptions().LblkSize;
        while (lblk > Layout.PblkSize && size % lblk != 0)
        {
            lblk /= 2;
        }
        if (size % lblk != 0)
        {
            throw new CliException($"{rawPath}: {size} bytes, not a whole number of 4 KiB, the smallest lblk: a cbd image's logical size is whole lblks. " +
                $"Pad RAW to a multiple of 4 KiB (truncate -s %4K {rawPath}), or make the image with cbd format and import into it (it then reads as RAW followed by zeros)");
        }
        var (physical, options) = PhysicalFor(size, new FormatOptions { LogicalSize = size, LblkSize = lblk });
        await FormatCommand.CreateAsync(path, physical, options, cancellationToken).ConfigureAwait(false);
        if (!quiet)
        {
            string why = lblk == new FormatOptions().LblkSize ? "" : $" ({SizeParser.Describe(lblk)} lblks: {rawPath}'s size is not a whole number of 64 KiB)";
            Console.Out.WriteLine($"created {path}: logical size {SizeParser.Describe(size)}, physical size {SizeParser.Describe(physical)} (a sparse file){why}");
        }
    }

    /// <summary>
    /// The least physical size whose data pblks hold every lblk of <paramref name="logical"/> bytes uncompressed, and two more,
    /// besides the default write log of that size; and the options with that log.
    /// </summary>
    private static (long Physical, FormatOptions Options) PhysicalFor(long logical, FormatOptions options)
    {
        ulong need = (ulong)(logical / Layout.PblkSize) + 2UL * (ulong)(options.LblkSize / Layout.PblkSize);
        long physical = (long)need * Layout.PblkSize;
        // The metadata and the log grow with the device (the pblk width may too), so settle on a size that holds them beside
        // the data. Each round's shortfall is at most an eighth of the one before (the log's share), so few rounds do.
        for (int round = 0; round < 16; round++)
        {
            var withLog = FormatCommand.WithLog(options, physical, null);
            var header = FormatCommand.Plan("", physical, withLog);
            var geometry = Geometry.FromHeader(header, physical);
            if (geometry.TotalDataPblks >= need)
            {
                return (physical, withLog);
            }
            physical += (long)(need - geometry.TotalDataPblks) * Layout.PblkSize;
        }
        throw new CliException($"no physical size found for a logical size of {SizeParser.Describe(logical)}");
    }

    /// <summary>Makes everything from <paramref name="offset"/> to the end read as zeros, touching only what does not already.</summary>
    private static async Task ZeroFromAsync(CompressedDevice device, long offset, CancellationToken cancellationToken)
    {
        for (long at = offset; at < device.Size;)
        {
            long length = Math.Min(TailChunk - at % TailChunk, device.Size - at);
            foreach (var extent in await device.GetBlockStatusAsync(at, length, cancellationToken).ConfigureAwait(false))
            {
                if (!extent.IsZero)
                {
                    await device.WriteZeroesAsync(at, extent.Length, mayDeallocate: true, cancellationToken: cancellationToken).ConfigureAwait(false);
                }
                at += extent.Length;
            }
        }
    }

    /// <summary>
    /// Counts what is read through it (a pipe's length is known only at its end), and lets a read that waits for
    /// input be cancelled: reads from stdin do not heed a token, so an interrupted import would otherwise wait for
    /// the writer of the pipe. A read left behind fills a buffer of this stream's own, never the caller's.
    /// </summary>
    private sealed class CountingReadStream(Stream inner) : Stream
    {
        private byte[] _own = [];

        public long BytesRead { get; private set; }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => BytesRead; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = inner.Read(buffer, offset, count);
            BytesRead += n;
            return n;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (_own.Length < buffer.Length)
            {
                _own = new byte[buffer.Length];
            }
            byte[] own = _own;
            int n = await inner.ReadAsync(own.AsMemory(0, buffer.Length), CancellationToken.None).AsTask().WaitAsync(cancellationToken).ConfigureAwait(false);
            own.AsSpan(0, n).CopyTo(buffer.Span);
            BytesRead += n;
            return n;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
