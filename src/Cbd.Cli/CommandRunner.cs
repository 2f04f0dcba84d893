using System.CommandLine;
using Cbd.Core.Engine;
using Cbd.Core.Maintenance;

namespace Cbd.Cli;

/// <summary>
/// Runs a command's body and turns every failure into one line on stderr and an exit code: a user
/// should learn what went wrong with which file, not read a stack trace.
/// </summary>
public static class CommandRunner
{
    public static void SetAction(Command command, Func<ParseResult, CancellationToken, Task<int>> body, int failureCode = ExitCodes.Failed)
    {
        command.SetAction((parse, cancellationToken) => RunAsync(() => body(parse, cancellationToken), failureCode));
    }

    public static async Task<int> RunAsync(Func<Task<int>> body, int failureCode)
    {
        try
        {
            return await body().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Error(Describe(ex));
            return failureCode;
        }
    }

    /// <summary>Writes "cbd: MESSAGE" on stderr, on one line.</summary>
    public static void Error(string message)
    {
        Console.Out.Flush();
        Console.Error.WriteLine($"cbd: {OneLine(message)}");
    }

    public static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    /// <summary>The library's message, without the " (Parameter 'name')" that names a C# parameter the user never saw.</summary>
    private static string WithoutParameterName(ArgumentException ex)
    {
        string suffix = $" (Parameter '{ex.ParamName}')";
        return ex.ParamName is not null && ex.Message.EndsWith(suffix, StringComparison.Ordinal) ? ex.Message[..^suffix.Length] : ex.Message;
    }

    private static string Describe(Exception ex) => ex switch
    {
        CliException => ex.Message,
        MaintenanceRefusedException => $"refused: {ex.Message}",
        LblkCorruptException => $"{ex.Message}; run cbd check --data to find every damaged lblk",
        OutOfSpaceException => $"{ex.Message}; the image is full: grow it with cbd resize",
        UnauthorizedAccessException => $"permission denied: {ex.Message}",
        OperationCanceledException => "interrupted",
        ArgumentException argument => WithoutParameterName(argument),
        IOException or InvalidDataException or InvalidOperationException => ex.Message,
        _ => $"unexpected error ({ex.GetType().Name}): {ex.Message}",
    };
}
