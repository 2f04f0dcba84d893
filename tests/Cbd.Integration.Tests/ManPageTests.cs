using System.Text.RegularExpressions;

namespace Cbd.Integration.Tests;

/// <summary>
/// contrib/man/cbd.1 is written by hand; these tests hold it to the command tree of the real executable, so that
/// it cannot go stale: every command and option <c>--help</c> lists has an entry, and every entry still exists.
/// </summary>
public sealed partial class ManPageTests
{
    private static readonly string[] s_helpOptions = ["-?", "-h", "--help"];

    [Fact]
    public async Task EveryCommandOfTheHelp_HasASection_AndNoSectionIsForACommandThatIsGone()
    {
        string help = await HelpAsync([]);
        List<string> commands = [.. Section(help, "Commands:").Select(line => CommandName().Match(line)).Where(m => m.Success).Select(m => m.Groups[1].Value)];
        Assert.Contains("serve", commands);

        Assert.Equal(commands.Order(StringComparer.Ordinal), ManPage().Keys.Where(k => k.Length > 0).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task TopLevelOptions_AreTheManPagesOptions()
    {
        string help = await HelpAsync([]);
        AssertSame(HelpOptions(help, includeHelp: true), ManPage()[""], "cbd");
    }

    [Theory]
    [InlineData("format")]
    [InlineData("info")]
    [InlineData("check")]
    [InlineData("resize")]
    [InlineData("trim")]
    [InlineData("tune")]
    [InlineData("import")]
    [InlineData("export")]
    [InlineData("serve")]
    public async Task EveryOptionOfACommand_HasAnEntryInItsSection_AndEveryEntryIsAnOption(string command)
    {
        string help = await HelpAsync([command]);
        Assert.True(ManPage().TryGetValue(command, out SortedSet<string>? documented), $"contrib/man/cbd.1 has no section .SS \"cbd {command} ...\"");
        AssertSame(HelpOptions(help, includeHelp: false), documented, $"cbd {command}");
    }

    private static void AssertSame(SortedSet<string> inHelp, SortedSet<string> inManPage, string command)
    {
        string[] undocumented = [.. inHelp.Except(inManPage)];
        string[] gone = [.. inManPage.Except(inHelp)];
        Assert.True(undocumented.Length == 0 && gone.Length == 0,
            $"{command}: options of --help missing from contrib/man/cbd.1: [{string.Join(' ', undocumented)}]; " +
            $"options in contrib/man/cbd.1 that --help does not list: [{string.Join(' ', gone)}]");
    }

    private static async Task<string> HelpAsync(string[] command)
    {
        await using ToolProcess process = ToolProcess.Start(CbdServer.Executable, [.. command, "--help"]);
        Assert.True(await process.WaitForExitAsync(TimeSpan.FromSeconds(30)) && process.ExitCode == 0, $"cbd --help failed: {process}");
        return process.StandardOutput;
    }

    /// <summary>The lines of one block of System.CommandLine's help ("Options:", "Commands:"), up to the blank line.</summary>
    private static IEnumerable<string> Section(string help, string heading)
        => help.Split('\n').SkipWhile(line => line.TrimEnd() != heading).Skip(1).TakeWhile(line => line.Trim().Length > 0);

    /// <summary>Every name and alias in the first column of the options block: "  -f, --force   Format ..." gives -f and --force.</summary>
    private static SortedSet<string> HelpOptions(string help, bool includeHelp)
    {
        var options = new SortedSet<string>(StringComparer.Ordinal);
        foreach (string line in Section(help, "Options:"))
        {
            Match names = HelpOptionNames().Match(line);
            Assert.True(names.Success, $"an options line of the help that is not understood: '{line}'");
            foreach (string name in names.Groups[1].Value.Split(", "))
            {
                if (includeHelp || !s_helpOptions.Contains(name))
                {
                    options.Add(name);
                }
            }
        }
        return options;
    }

    /// <summary>
    /// The options documented per command, keyed by command name ("" for the top-level OPTIONS): the names on the line
    /// after each .TP of that section.
    /// </summary>
    private static Dictionary<string, SortedSet<string>> ManPage()
    {
        var sections = new Dictionary<string, SortedSet<string>>();
        SortedSet<string>? current = null;
        string[] lines = File.ReadAllLines(Repository.File("contrib/man/cbd.1"));
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i];
            if (line.StartsWith(".SH ", StringComparison.Ordinal))
            {
                current = line == ".SH OPTIONS" ? sections[""] = new SortedSet<string>(StringComparer.Ordinal) : null;
            }
            else if (ManCommandHeading().Match(line) is { Success: true } heading)
            {
                Assert.False(sections.ContainsKey(heading.Groups[1].Value), $"two sections for cbd {heading.Groups[1].Value}");
                current = sections[heading.Groups[1].Value] = new SortedSet<string>(StringComparer.Ordinal);
            }
            else if (line == ".TP" && current is not null && i + 1 < lines.Length)
            {
                // Roff writes a minus as \- and switches fonts with \fB, \fR, \fI, \fP.
                string entry = FontEscape().Replace(lines[i + 1].Replace("\\-", "-", StringComparison.Ordinal), "");
                foreach (Match option in ManOptionName().Matches(entry))
                {
                    current.Add(option.Value);
                }
            }
        }
        return sections;
    }

    [GeneratedRegex(@"^  ([a-z][a-z-]*)\s")]
    private static partial Regex CommandName();

    [GeneratedRegex(@"^  (-[^\s,]+(?:, -[^\s,]+)*)")]
    private static partial Regex HelpOptionNames();

    [GeneratedRegex(@"^\.SS ""cbd ([a-z][a-z-]*)\b")]
    private static partial Regex ManCommandHeading();

    [GeneratedRegex(@"\\f[BIRP]")]
    private static partial Regex FontEscape();

    [GeneratedRegex(@"(?<![\w-])(?:--[a-z][a-z-]*|-[a-zA-Z?](?![\w-]))")]
    private static partial Regex ManOptionName();
}
