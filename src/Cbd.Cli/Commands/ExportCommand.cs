using System.CommandLine;
using Cbd.Cli.Output;
using Cbd.Core.Engine;
using Cbd.Core.Maintenance;

namespace Cbd.Cli.Commands;

/// <summary><c>cbd export IMAGE RAW</c>: writes a cbd image's device out as a sparse raw disk image.</summary>
/// <remarks>
/// RAW is written under a temporary name beside it and renamed over RAW only when complete and durable: an
/// export that fails or is interrupted leaves RAW as it was (or absent), never a full-length file with a hole
/// where the rest should be.
/// </remarks>
public static class ExportCommand
{
    public static Command Create()
    {
        var image = CliOptions.Image("The cbd image to read; it is opened read-only.");
        var raw = new Argument<string>("RAW")
        {
            Description = "The raw image to write: a regular file, left sparse where the device reads as zeros; or - for stdout (every byte written). " +
                "An existing non-empty RAW is replaced only with --force.",
        };
        var force = new Option<bool>("--force", "-f")
        {
            Description = "Replace RAW even when it exists and is not empty (a cbd image, a file system, any data). What it held is lost.",
        };
        var quiet = CliOptions.Quiet("and no summary");
        var command = new Command("export", "Copy a cbd image's device, its whole logical size, to a raw disk image. " + ExitCodes.GeneralHelp)
        {
            image, raw, force, quiet,
        };
        CliOptions.SetAction(command, (parse, cancellationToken) =>
            RunAsync(parse.GetRequiredValue(image), parse.GetRequiredValue(raw), parse.GetValue(force), parse.GetValue(quiet), cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string path, string rawPath, bool force, bool quiet, CancellationToken cancellationToken)
    {
        ImageFiles.RequireExisting(path);
        bool stdout = rawPath == "-";
        if (!stdout)
        {
            await RequireReplaceableAsync(rawPath, path, force, cancellationToken).ConfigureAwait(false);
        }

        await using var device = await ImageFiles.OpenDeviceAsync(path, new DeviceOptions { ReadOnly = true }, cancellationToken)
            .ConfigureAwait(false);
        using var interruption = Interruption.Catch(cancellationToken);
        var counted = new ProgressCounter();
        if (stdout)
        {
            try
            {
                await using var output = Console.OpenStandardOutput();
                await Terminal.WithProgressAsync(quiet, $"exporting {Path.GetFileName(path)}", device.Size,
                    progress => ImageCopier.ExportAsync(device, output, counted.With(progress), interruption.Token)).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (interruption.Signalled)
            {
                throw new CliException($"exporting {path} to stdout interrupted: stdout got about {SizeParser.Describe(counted.Done)} " +
                    $"of {SizeParser.Describe(device.Size)}, and is incomplete");
            }
            return ExitCodes.Success;
        }

        string partial = PartialName(rawPath);
        try
        {
            using (var handle = File.OpenHandle(partial, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous))
            {
                await Terminal.WithProgressAsync(quiet, $"exporting {Path.GetFileName(path)}", device.Size,
                    progress => ImageCopier.ExportAsync(device, handle, progress, interruption.Token)).ConfigureAwait(false);
                RandomAccess.FlushToDisk(handle);
            }
            File.Move(partial, rawPath, overwrite: true);
        }
        catch (Exception e) when (e is not CliException)
        {
            TryDelete(partial);
            string state = File.Exists(rawPath) ? $"{rawPath} is left as it was" : $"{rawPath} was not created";
            if (e is OperationCanceledException && interruption.Signalled)
            {
                throw new CliException($"exporting {path} to {rawPath} interrupted; {state}");
            }
            string reason = e is LblkCorruptException ? $"{e.Message}; run cbd check --data to find every damaged lblk" : e.Message;
            throw new CliException($"exporting {path} to {rawPath} failed: {reason}; {state}");
        }
        if (!quiet)
        {
            Console.Out.WriteLine($"exported {device.Size} bytes ({SizeParser.FormatApproximate(device.Size)}) from {path} to {rawPath}");
        }
        return ExitCodes.Success;
    }

    /// <summary>A hidden name beside RAW, so that the rename over RAW stays within one file system.</summary>
    private static string PartialName(string rawPath)
    {
        string full = Path.GetFullPath(rawPath);
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.cbd-export-{Environment.ProcessId}");
    }

    /// <summary>
    /// RAW is replaced: never the image itself, never a block device (whose size cannot change), and never a file that
    /// holds anything unless forced. A directory that does not exist is named as such.
    /// </summary>
    private static async Task RequireReplaceableAsync(string rawPath, string path, bool force, CancellationToken cancellationToken)
    {
        if (Directory.Exists(rawPath))
        {
            throw new CliException($"{rawPath}: is a directory");
        }
        string? directory = Path.GetDirectoryName(Path.GetFullPath(rawPath));
        if (directory is not null && !Directory.Exists(directory))
        {
            throw new CliException($"{rawPath}: cannot create: no such directory {directory}");
        }
        if (!File.Exists(rawPath))
        {
            return;
        }
        if (ImageFiles.SameFile(rawPath, path))
        {
            throw new CliException($"{rawPath}: is the image itself ({path}, the same file by another name or link); export writes to another file");
        }
        await using (var probe = ImageFiles.Open(rawPath, writable: false))
        {
            if (probe.IsBlockDevice)
            {
                throw new CliException($"{rawPath}: is a block device; export writes a regular file (or stdout: -, e.g. piped into dd)");
            }
        }
        if (!force && await ExistingContent.DescribeFileAsync(rawPath, cancellationToken).ConfigureAwait(false) is { } content)
        {
            throw new CliException($"{rawPath} holds {content}; exporting would replace it. Check the path, or give --force to replace it");
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
            // Nothing more can be done; the error that brought us here is the one to report.
        }
    }
}
