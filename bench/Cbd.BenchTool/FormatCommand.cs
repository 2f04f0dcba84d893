using Cbd.Core.Engine;
using Cbd.Core.Storage;

namespace Cbd.BenchTool;

/// <summary>
/// <c>format IMAGE --size BYTES --logical-size BYTES [--compression ALG[:LEVEL]]</c>: a new sparse image with
/// every other setting at the engine's default. bench/run uses it only while <c>cbd format</c>, which takes
/// the same options, is missing from the cbd it built.
/// </summary>
internal static class FormatCommand
{
    public static async Task<int> RunAsync(string[] args)
    {
        var (positional, named) = Options.Parse(args, "--size", "--logical-size", "--compression");
        if (positional.Count != 1 || !named.TryGetValue("--size", out string? size))
            throw new ArgumentException("format takes one IMAGE and --size");
        var options = new FormatOptions();
        if (named.TryGetValue("--logical-size", out string? logical))
            options = options with { LogicalSize = Options.Size(logical) };
        if (named.TryGetValue("--compression", out string? compression))
        {
            var (algorithm, level) = Options.Compression(compression);
            options = options with { Algorithm = algorithm, Level = level };
        }
        string image = positional[0];
        await using (var store = FileBackingStore.Create(image, Options.Size(size)))
        {
            await CompressedDevice.FormatAsync(store, options).ConfigureAwait(false);
        }
        Console.WriteLine($"formatted {image}: {options.Algorithm} level {options.Level?.ToString() ?? "default"}, logical {options.LogicalSize?.ToString() ?? "default"} bytes");
        return 0;
    }
}
