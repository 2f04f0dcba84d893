using Cbd.BenchTool;

// Helpers for bench/run; not a user-facing tool.
//   cbd-bench-tool floor CORPUS [--lblk-size BYTES]
try
{
    return args switch
    {
        ["floor", .. var rest] => FloorCommand.Run(rest),
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
    return 2;
}
