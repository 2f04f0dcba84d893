using System.CommandLine;
using System.CommandLine.Help;

namespace Cbd.Cli.Tests;

/// <summary>
/// Every option of every command, read from the tool's own command tree so that a new option is covered too, given
/// values it cannot take: the tool must answer with one line per error and exit 2 (16 for check), never a stack trace.
/// </summary>
public class MalformedValueTests
{
    /// <summary>Values no option that takes a number, a size, an address, a mode or a choice accepts.</summary>
    private static readonly string[] s_malformed = ["abc", "-1", "99999999999999999999999", "1.5.7", ""];

    public static TheoryData<string, string, string> Cases
    {
        get
        {
            var cases = new TheoryData<string, string, string>();
            foreach (Command command in Program.CreateRootCommand().Subcommands)
            {
                foreach (Option option in command.Options)
                {
                    if (option is HelpOption)
                    {
                        continue;
                    }
                    foreach (string value in s_malformed)
                    {
                        cases.Add(command.Name, option.Name, value);
                    }
                    // The option last on the line with no value at all.
                    cases.Add(command.Name, option.Name, "<none>");
                }
            }
            return cases;
        }
    }

    [Fact]
    public void The_table_covers_every_command()
    {
        var covered = new HashSet<string>();
        foreach (object?[] row in Cases)
        {
            covered.Add((string)row[0]!);
        }
        var listed = new HashSet<string>(CommandLineTests.Commands);
        Assert.Equal(listed.Order(), covered.Order());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_malformed_value_is_a_usage_error_never_a_stack_trace(string commandName, string optionName, string value)
    {
        using var scratch = new Scratch();
        Command command = Program.CreateRootCommand().Subcommands.Single(c => c.Name == commandName);
        Option option = command.Options.Single(o => o.Name == optionName);
        // Arguments name files that do not exist: a value that is accepted after all leads to "no such file", never to
        // a command that runs (or a server that starts).
        List<string> arguments = [commandName, .. command.Arguments.Select((_, i) => scratch.File($"missing-{i}.cbd"))];
        if (value == "<none>")
        {
            arguments.Add(optionName);
        }
        else
        {
            arguments.Add($"{optionName}={value}");
        }

        var result = await CbdTool.TryRunAsync([.. arguments], timeout: TimeSpan.FromSeconds(30));
        CbdTool.AssertNoStackTrace(result);
        Assert.DoesNotContain("Aborted", result.StandardError);
        Assert.All(result.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries),
            line => Assert.True(line.StartsWith("cbd: ", StringComparison.Ordinal) || line.StartsWith("Try 'cbd", StringComparison.Ordinal),
                $"not a one-line error: {line}\n{result}"));

        bool check = commandName == "check";
        int usage = check ? 16 : 2;
        int failed = check ? 8 : 1;
        bool freeText = option.ValueType == typeof(string);
        // "-1" is a size relative to the current one where an option takes [+|-]SIZE: valid, so the command goes on.
        bool relative = value == "-1" && option.HelpName?.StartsWith("[+|-]", StringComparison.Ordinal) == true;
        if ((freeText && value != "<none>") || relative)
        {
            // A path or a name takes any text: the command goes on and fails on the missing file instead.
            Assert.True(result.ExitCode == failed || result.ExitCode == usage, $"expected exit {failed} or {usage}: {result}");
        }
        else if (option.ValueType == typeof(bool) && value is "" or "<none>")
        {
            // A flag alone is its normal use, and so is a flag with an empty value.
            Assert.True(result.ExitCode == failed || result.ExitCode == usage, $"expected exit {failed} or {usage}: {result}");
        }
        else
        {
            Assert.True(result.ExitCode == usage, $"expected exit {usage}: {result}");
        }
    }

    /// <summary>--metrics takes what --listen takes, and says so under its own name.</summary>
    [Theory]
    [InlineData("abc", "cbd: --metrics: 'abc': expected PORT, HOST:PORT or [IPv6]:PORT with PORT from 0 to 65535")]
    [InlineData("70000", "cbd: --metrics: '70000': port 70000 is out of range; expected PORT, HOST:PORT or [IPv6]:PORT with PORT from 0 to 65535")]
    [InlineData("::1:9100", "cbd: --metrics: '::1:9100': an IPv6 address goes in brackets, e.g. [::1]:10809")]
    [InlineData(":9100", "cbd: --metrics: ':9100': no host before the ':'; expected PORT, HOST:PORT or [IPv6]:PORT with PORT from 0 to 65535")]
    [InlineData("[nope]:9100", "cbd: --metrics: '[nope]:9100': 'nope' in brackets is not an IPv6 address")]
    public async Task A_malformed_metrics_address_names_the_option_and_what_was_expected(string value, string expected)
    {
        using var scratch = new Scratch();
        var result = await CbdTool.TryRunAsync(["serve", scratch.File("missing.cbd"), "--metrics", value], timeout: TimeSpan.FromSeconds(30));
        Assert.True(result.ExitCode == 2, $"expected exit 2: {result}");
        Assert.Equal(expected, result.StandardError.Split('\n')[0]);
    }
}
