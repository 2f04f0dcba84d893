namespace Cbd.Cli.Output;

/// <summary>Lines of "name  value", names aligned, written as plain text: easy to read, and to grep when redirected.</summary>
public sealed class Fields
{
    private readonly List<(string Name, string Value)> _rows = [];

    public void Add(string name, string value) => _rows.Add((name, value));

    public void Write(string? title = null)
    {
        var output = Console.Out;
        if (title is not null)
        {
            output.WriteLine(title);
        }
        int width = _rows.Count == 0 ? 0 : _rows.Max(r => r.Name.Length) + 2;
        foreach (var (name, value) in _rows)
        {
            output.WriteLine($"  {name.PadRight(width)}{value}");
        }
        output.Flush();
    }
}
