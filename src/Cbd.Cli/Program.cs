using System.CommandLine;
using System.CommandLine.Invocation;
using Cbd.Cli.Commands;

namespace Cbd.Cli;

public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        var root = new RootCommand("cbd: a compressed block device served over NBD.")
        {
            ServeCommand.Create(),
        };
        ParseResult parse = root.Parse(args);
        if (parse.Action is ParseErrorAction errorAction)
        {
            // A mistyped option should produce its error, not a screenful of help burying it.
            errorAction.ShowHelp = false;
        }
        // Commands install their own signal handling (serve shuts down gracefully on SIGINT/SIGTERM), so the
        // library's, which would cancel and then kill the process after a timeout, is switched off.
        var configuration = new InvocationConfiguration { ProcessTerminationTimeout = null };
        return await parse.InvokeAsync(configuration).ConfigureAwait(false);
    }
}
