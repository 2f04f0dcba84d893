using Cbd.BenchTool;

// Helpers for bench/run; not a user-facing tool.
//   cbd-bench-tool floor CORPUS [--lblk-size BYTES]
//   cbd-bench-tool format IMAGE --size BYTES --logical-size BYTES [--compression lz4|zstd|zlib[:LEVEL]]
try
{
    return args switch
    {
        ["floor", .. var rest] => FloorCommand.Run(rest),
        ["format", .. var rest] => await FormatCommand.RunAsync(rest).ConfigureAwait(false),
        _ => Usage(),
    };
}
catch (Exception ex) when (ex is ArgumentException or FormatException or IOException)
{
    Console.Error.WriteLine($"cbd-bench-tool: {ex.Message}");
    return 2;
}

static int Usage()
{
    Console.Error.WriteLine("usage: cbd-bench-tool floor CORPUS [--lblk-size BYTES]");
    Console.Error.WriteLine("       cbd-bench-tool format IMAGE --size BYTES --logical-size BYTES [--compression ALG[:LEVEL]]");
    return 2;
}
