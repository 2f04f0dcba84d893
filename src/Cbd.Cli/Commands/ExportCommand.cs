using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Engine;
using Cbd.Core.Maintenance;
using Spectre.Console;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd export IMAGE RAW</c>: writes a cbd image's device out as a sparse raw disk image.</summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image to read; it is opened read-only.");
        var raw = new Argument<string>("RAW")
        {
            Description = "The raw image to write: a regular file, replaced if it exists and left sparse where the device reads as zeros; or - for stdout (every byte written).",
        };
        var quiet = CliOptions.Quiet();
        var command = new Command("export", "Copy a cbd image's device, its whole logical size, to a raw disk image. " + ExitCodes.GeneralHelp)
        {
            image, raw, quiet,
        };
        CommandRunner.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetRequiredValue(raw), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string path, string rawPath, bool quiet, CancellationToken cancellationToken)
    {
        ImageFiles.RequireExisting(path);
        bool stdout = rawPath == "-";
        if (!stdout)
        {
            await RequireRegularFileAsync(rawPath, path).ConfigureAwait(false);
        }

        await using var device = await ImageFiles.OpenDeviceAsync(path, new DeviceOptions { ReadOnly = true }, cancellationToken)
            .ConfigureAwait(false);
        if (stdout)
        {
            await using var output = Console.OpenStandardOutput();
            await Terminal.WithProgressAsync(quiet, $"exporting {Path.GetFileName(path)}", device.Size,
                progress => ImageCopier.ExportAsync(device, output, progress, cancellationToken)).ConfigureAwait(false);
            return ExitCodes.Success;
        }

        bool existed = File.Exists(rawPath);
        try
        {
            using var handle = File.OpenHandle(rawPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
            await Terminal.WithProgressAsync(quiet, $"exporting {Path.GetFileName(path)}", device.Size,
                progress => ImageCopier.ExportAsync(device, handle, progress, cancellationToken)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not CliException)
        {
            string reason = e is LblkCorruptException ? $"{e.Message}; run cbd check --data to find every damaged lblk" : e.Message;
            if (existed)
            {
                throw new CliException($"exporting {path} to {rawPath} failed, and {rawPath} is incomplete: {reason}");
            }
            // The new file was sized to the whole device before the copy: left behind, it would look complete.
            TryDelete(rawPath);
            throw new CliException($"exporting {path} to {rawPath} failed, and {rawPath} was removed: {reason}");
        }
        Console.Out.WriteLine($"exported {device.Size} bytes ({SizeParser.FormatApproximate(device.Size)}) from {path} to {rawPath}");
        return ExitCodes.Success;
    }

    /// <summary>RAW is replaced by truncating it: never the image itself, and never a block device, whose size cannot change.</summary>
    private static async Task RequireRegularFileAsync(string rawPath, string path)
    {
        if (Directory.Exists(rawPath))
        {
            throw new CliException($"{rawPath}: is a directory");
        }
        if (!File.Exists(rawPath))
        {
            return;
        }
        if (ImageFiles.SameFile(rawPath, path))
        {
            throw new CliException($"{rawPath}: IMAGE and RAW are the same file");
        }
        await using var probe = ImageFiles.Open(rawPath, writable: false);
        if (probe.IsBlockDevice)
        {
            throw new CliException($"{rawPath}: is a block device; export writes a regular file (or stdout: -, e.g. piped into dd)");
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
