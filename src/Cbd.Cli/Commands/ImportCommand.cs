using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Engine;
using Cbd.Core.Maintenance;
using Spectre.Console;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd import RAW IMAGE</c>: copies a raw disk image into an existing cbd image.</summary>
public static class ImportCommand
{
    /// <summary>What is looked at at once when zeroing what lies past the raw image's end.</summary>
    private const long TailChunk = 256L << 20;

    public static Command Create()
    {
        var raw = new Argument<string>("RAW") { Description = "The raw disk image to read: a file, a block device, or - for stdin." };
        var image = CliOptions.Image("The cbd image to write; format it first (cbd format). Its logical size must hold RAW.");
        var quiet = CliOptions.Quiet();
        var command = new Command("import",
            "Copy a raw disk image into a cbd image: afterwards the device reads as RAW followed by zeros. " +
            "All-zero lblks stay unallocated. " + ExitCodes.GeneralHelp)
        {
            raw, image, quiet,
        };
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(raw), parse.GetRequiredValue(image), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string rawPath, string path, bool quiet, CancellationToken cancellationToken)
    {
        bool stdin = rawPath == "-";
        if (!stdin)
        {
            ImageFiles.RequireExisting(rawPath);
            if (ImageFiles.SameFile(rawPath, path))
            {
                throw new CliException($"{rawPath}: RAW and IMAGE are the same file");
            }
        }
        ImageFiles.RequireExisting(path);

        await using var device = await ImageFiles.OpenDeviceAsync(path, new DeviceOptions(), cancellationToken).ConfigureAwait(false);
        bool wasEmpty = device.GetStats().LblksUsed == 0;
        long imported;
        if (stdin)
        {
            await using var input = Console.OpenStandardInput();
            var counting = new CountingReadStream(input);
            await Terminal.WithProgressAsync(quiet, $"importing stdin into {Path.GetFileName(path)}", device.Size,
                progress => ImageCopier.ImportAsync(counting, device, progress, cancellationToken)).ConfigureAwait(false);
            imported = counting.BytesRead;
        }
        else
        {
            await using var source = ImageFiles.Open(rawPath, writable: false);
            imported = source.Length;
            if (imported > device.Size)
            {
                throw new CliException($"{rawPath} holds {imported} bytes, more than the {device.Size}-byte logical size of {path}; " +
                    "grow it first (cbd tune --logical-size, or cbd resize --logical-size)");
            }
            await Terminal.WithProgressAsync(quiet, $"importing {Path.GetFileName(rawPath)}", imported,
                progress => ImageCopier.ImportAsync(source, device, progress, cancellationToken)).ConfigureAwait(false);
        }

        // An image that held nothing reads as zeros past RAW already; otherwise old data there is discarded.
        if (!wasEmpty && imported < device.Size)
        {
            await ZeroFromAsync(device, imported, cancellationToken).ConfigureAwait(false);
        }
        await device.FlushAsync(cancellationToken).ConfigureAwait(false);
        var stats = device.GetStats();
        Console.Out.WriteLine($"imported {imported} bytes ({SizeParser.FormatApproximate(imported)}) into {path}: " +
            $"{stats.LblksUsed} lblks in use, {SizeParser.FormatApproximate(stats.PhysicalBytesUsed)} stored, compression ratio {stats.CompressionRatio:0.000}");
        return ExitCodes.Success;
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

    /// <summary>Counts what is read through it: a pipe's length is known only at its end.</summary>
    private sealed class CountingReadStream(Stream inner) : Stream
    {
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
            int n = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
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
