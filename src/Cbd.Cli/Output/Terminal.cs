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

    /// <summary>
    /// Whether the locale says UTF-8 (LC_ALL, else LC_CTYPE, else LANG, as the C library decides): without it, box
    /// lines and bar blocks would show as mojibake, so tables and progress bars are drawn in plain ASCII.
    /// </summary>
    public static bool Utf8Locale { get; } = IsUtf8Locale();

    private static bool IsUtf8Locale()
    {
        string? locale = new[] { "LC_ALL", "LC_CTYPE", "LANG" }.Select(Environment.GetEnvironmentVariable).FirstOrDefault(v => !string.IsNullOrEmpty(v));
        return locale is not null && (locale.Contains("UTF-8", StringComparison.OrdinalIgnoreCase) || locale.Contains("utf8", StringComparison.OrdinalIgnoreCase));
    }

    private static IAnsiConsole Create(TextWriter writer, bool redirected)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = redirected ? AnsiSupport.No : AnsiSupport.Detect,
            Interactive = redirected ? InteractionSupport.No : InteractionSupport.Detect,
        });
        console.Profile.Capabilities.Unicode = Utf8Locale;
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

    /// <summary>
    /// Writes rows under column names on stdout. On a terminal: a table with borders (ASCII ones unless the locale is
    /// UTF-8). Redirected: plain lines, columns separated by two spaces and only the last left unpadded, so that a log
    /// or grep gets one line per row without box characters or cells wrapped over lines.
    /// </summary>
    public static void WriteRows(string[] columns, IReadOnlyList<string[]> rows, ISet<int>? rightAligned = null)
    {
        if (!Console.IsOutputRedirected)
        {
            var table = new Table().Border(Utf8Locale ? TableBorder.Rounded : TableBorder.Ascii);
            for (int c = 0; c < columns.Length; c++)
            {
                var column = new TableColumn(new Text(columns[c]));
                table.AddColumn(rightAligned?.Contains(c) == true ? column.RightAligned() : column);
            }
            foreach (string[] row in rows)
            {
                table.AddRow(row.Select(cell => (IRenderable)new Text(cell)).ToArray());
            }
            Out.Write(table);
            return;
        }
        int[] widths = new int[columns.Length];
        foreach (string[] row in rows.Prepend(columns))
        {
            for (int c = 0; c < row.Length; c++)
            {
                widths[c] = Math.Max(widths[c], row[c].Length);
            }
        }
        var output = Console.Out;
        foreach (string[] row in rows.Prepend(columns))
        {
            var line = new System.Text.StringBuilder();
            for (int c = 0; c < row.Length; c++)
            {
                bool last = c == row.Length - 1;
                string cell = rightAligned?.Contains(c) == true ? row[c].PadLeft(widths[c]) : last ? row[c] : row[c].PadRight(widths[c]);
                line.Append(cell);
                if (!last)
                {
                    line.Append("  ");
                }
            }
            output.WriteLine(line.ToString().TrimEnd());
        }
        output.Flush();
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
