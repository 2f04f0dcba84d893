using System.Diagnostics;

namespace Cbd.Cli.Tests;

/// <summary>
/// How scripts/serve splits its command line. The real script runs, in a copy of the repository's scripts directory
/// where build-cbd is replaced by a stand-in that names an executable recording its arguments: building cbd takes
/// minutes, and only the arguments scripts/serve passes are under test here (scripts/test runs the real build).
/// </summary>
public class ServeScriptTests
{
    [Theory]
    [InlineData("-- --listen 10809", "serve cbd.img --create --size 10G --listen 10809")]
    [InlineData("", "serve cbd.img --create --size 10G")]
    [InlineData("disk.img", "serve disk.img --create --size 10G")]
    [InlineData("disk.img 1G", "serve disk.img --create --size 1G")]
    [InlineData("disk.img 1G -- -r --cache 256M", "serve disk.img --create --size 1G -r --cache 256M")]
    [InlineData("disk.img --read-only", "serve disk.img --create --size 10G --read-only")]
    [InlineData("existing.img -- -p 0", "serve existing.img -p 0")]
    public async Task Passes_images_sizes_and_options_where_they_belong(string arguments, string expected)
    {
        using var scratch = new Scratch();
        string recorded = await RunAsync(scratch, arguments.Split(' ', StringSplitOptions.RemoveEmptyEntries), expectedExit: 0);
        Assert.Equal(expected, recorded);
    }

    [Fact]
    public async Task Three_positional_arguments_are_refused()
    {
        using var scratch = new Scratch();
        await RunAsync(scratch, ["a.img", "1G", "extra"], expectedExit: 2);
    }

    private static async Task<string> RunAsync(Scratch scratch, string[] arguments, int expectedExit)
    {
        string scripts = Directory.CreateDirectory(scratch.File("root/scripts")).FullName;
        File.Copy(Path.Combine(RepositoryRoot(), "scripts", "serve"), Path.Combine(scripts, "serve"));
        string record = scratch.File("arguments");
        string fakeCbd = scratch.File("cbd");
        File.WriteAllText(fakeCbd, $"#!/bin/sh\necho \"$*\" > '{record}'\n");
        File.WriteAllText(Path.Combine(scripts, "build-cbd"), $"#!/bin/sh\necho '{fakeCbd}'\n");
        File.WriteAllText(scratch.File("existing.img"), "");
        const UnixFileMode Executable = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(fakeCbd, Executable);
            File.SetUnixFileMode(Path.Combine(scripts, "build-cbd"), Executable);
        }

        var start = new ProcessStartInfo("bash") { WorkingDirectory = scratch.Path, RedirectStandardError = true, RedirectStandardOutput = true };
        start.ArgumentList.Add(Path.Combine(scripts, "serve"));
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = Process.Start(start)!;
        string stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == expectedExit, $"scripts/serve {string.Join(' ', arguments)}: exit {process.ExitCode}: {stderr}");
        return File.Exists(record) ? File.ReadAllText(record).Trim() : "";
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
        throw new InvalidOperationException($"no cbd.slnx above {AppContext.BaseDirectory}");
    }
}
