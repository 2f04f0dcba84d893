using Spectre.Console;
using Spectre.Console.Rendering;

namespace Cbd.Cli.Output;

/// <summary>
/// The two consoles: stdout for results (tables, JSON), stderr for progress and errors, so that
/// <c>cbd check --json IMAGE &gt; report.json</c> still shows progress and the JSON holds nothing else.
/// </summary>
public static class Terminal
{
    private static readonly Lazy<IAnsiConsole> s_out = new(() => Create(Console.Out, Console.IsOutputRedirected));
    private static readonly Lazy<IAnsiConsole> s_err = new(() => Create(Console.Error, Console.IsErrorRedirected));

    /// <summary>Results: tables and text. Without a terminal it writes plain text, lines unwrapped.</summary>
    public static IAnsiConsole Out => s_out.Value;

    private static IAnsiConsole Create(TextWriter writer, bool redirected)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = redirected ? AnsiSupport.No : AnsiSupport.Detect,
            Interactive = redirected ? InteractionSupport.No : InteractionSupport.Detect,
        });
        if (redirected)
        {
            // A log or a pipe has no width; wrapping table cells at 80 columns would split messages over lines that grep then misses.
            console.Profile.Width = 1000;
        }
        return console;
    }

    /// <summary>Progress is drawn on stderr, only when it is an interactive terminal that takes cursor movement, and never with --quiet.</summary>
    public static bool ShowsProgress(bool quiet) =>
        !quiet && !Console.IsErrorRedirected && s_err.Value.Profile.Capabilities is { Interactive: true, Ansi: true };

    /// <summary>
    /// Runs <paramref name="work"/> under a progress bar of <paramref name="total"/> bytes, with rate and time left;
    /// without a bar, <paramref name="work"/> gets a null sink and nothing is drawn.
    /// </summary>
    public static async Task<T> WithProgressAsync<T>(bool quiet, string description, long total, Func<ProgressSink?, Task<T>> work)
    {
        if (!ShowsProgress(quiet))
        {
            return await work(null).ConfigureAwait(false);
        }
        return await s_err.Value.Progress()
            .AutoClear(true)
            .Columns(
                new TaskDescriptionColumn(),
                new ProgressBarColumn(),
                new PercentageColumn(),
                new DownloadedColumn(),
                new TransferSpeedColumn(),
                new RemainingTimeColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask(Markup.Escape(description), maxValue: Math.Max(total, 1));
                T result = await work(new ProgressSink(task, total)).ConfigureAwait(false);
                task.Value = task.MaxValue;
                return result;
            }).ConfigureAwait(false);
    }

    public static Task WithProgressAsync(bool quiet, string description, long total, Func<ProgressSink?, Task> work) =>
        WithProgressAsync(quiet, description, total, async sink =>
        {
            await work(sink).ConfigureAwait(false);
            return true;
        });

    /// <summary>Text that is shown as it is: messages and paths may hold '[' which markup would take for a style.</summary>
    public static IRenderable Cell(string text) => new Text(text);

    public static Table NewTable(params string[] columns)
    {
        var table = new Table().Border(TableBorder.Rounded);
        foreach (string column in columns)
        {
            table.AddColumn(new TableColumn(new Text(column)));
        }
        return table;
    }
}

/// <summary>
/// Feeds a progress bar from the library's progress reports: a fraction of the work, or bytes done of
/// a total. Parallel copies report out of order, so the bar only ever moves forward.
/// </summary>
public sealed class ProgressSink(ProgressTask task, long total) : IProgress<double>, IProgress<(long Done, long Total)>, IProgress<long>
{
    private readonly Lock _lock = new();
    private long _done;

    public void Report(double fraction) => Report((long)(Math.Clamp(fraction, 0, 1) * total));

    public void Report((long Done, long Total) value) => Report(value.Done);

    public void Report(long done)
    {
        lock (_lock)
        {
            if (done > _done)
            {
                _done = done;
                task.Value = done;
            }
        }
    }
}
