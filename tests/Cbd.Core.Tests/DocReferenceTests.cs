using System.Text.RegularExpressions;

namespace Cbd.Core.Tests;

/// <summary>Every section of docs/*.md that a comment in src/ names (<c>docs/FORMAT.md, "Geometry"</c>) exists.</summary>
public partial class DocReferenceTests
{
    [GeneratedRegex("""(?<doc>FORMAT|NBD|CLI)\.md,? (?<names>"[^"\n]+"(?:(?:,| and) "[^"\n]+")*)""")]
    private static partial Regex Reference();

    [GeneratedRegex("\"(?<name>[^\"]+)\"")]
    private static partial Regex Quoted();

    private static string RepositoryRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "cbd.slnx")))
                return directory.FullName;
        }
        throw new DirectoryNotFoundException($"no cbd.slnx above {AppContext.BaseDirectory}");
    }

    /// <summary>A heading's name, and its name before " (" or ":" ("Header (pblk 0)" is referred to as "Header").</summary>
    private static IEnumerable<string> Names(string heading)
    {
        yield return heading;
        int cut = heading.IndexOfAny(['(', ':']);
        if (cut > 0)
            yield return heading[..cut].TrimEnd();
    }

    [Fact]
    public void Every_section_named_in_src_is_a_heading_of_its_document()
    {
        string root = RepositoryRoot();
        var headings = new Dictionary<string, HashSet<string>>();
        foreach (string doc in new[] { "FORMAT", "NBD", "CLI" })
        {
            string path = Path.Combine(root, "docs", doc + ".md");
            headings[doc] = File.Exists(path)
                ? [.. File.ReadLines(path).Where(l => l.StartsWith('#')).SelectMany(l => Names(l.TrimStart('#').Trim()))]
                : [];
        }
        var wrong = new List<string>();
        int found = 0;
        foreach (string file in Directory.EnumerateFiles(Path.Combine(root, "src"), "*.cs", SearchOption.AllDirectories))
        {
            if (file.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") || file.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
                continue;
            foreach (Match reference in Reference().Matches(File.ReadAllText(file)))
            {
                string doc = reference.Groups["doc"].Value;
                foreach (Match quoted in Quoted().Matches(reference.Groups["names"].Value))
                {
                    found++;
                    string name = quoted.Groups["name"].Value;
                    if (!headings[doc].Contains(name))
                        wrong.Add($"{Path.GetRelativePath(root, file)}: {doc}.md has no section \"{name}\"");
                }
            }
        }
        Assert.True(found > 10, $"only {found} references found: the pattern no longer matches how src/ cites the docs");
        Assert.Empty(wrong);
    }
}
