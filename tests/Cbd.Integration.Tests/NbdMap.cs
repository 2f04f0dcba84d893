namespace Cbd.Integration.Tests;

/// <summary>The extents <c>nbdinfo --map</c> prints for base:allocation, adjacent ones of the same type merged.</summary>
public static class NbdMap
{
    /// <summary>base:allocation type 0: allocated data.</summary>
    public const int Data = 0;

    /// <summary>base:allocation type 3: NBD_STATE_HOLE | NBD_STATE_ZERO.</summary>
    public const int Hole = 3;

    public static async Task<List<(long Offset, long Length, int Type)>> ReadAsync(string uri)
    {
        ExternalTool.Result result = await ExternalTool.RunAsync("nbdinfo", ["--map", uri]);
        var extents = new List<(long Offset, long Length, int Type)>();
        // Each line: offset, length, type, then the type spelled out ("data", "hole,zero").
        foreach (string line in result.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            (long offset, long length, int type) = (long.Parse(fields[0]), long.Parse(fields[1]), int.Parse(fields[2]));
            if (extents.Count > 0 && extents[^1].Type == type && extents[^1].Offset + extents[^1].Length == offset)
            {
                extents[^1] = (extents[^1].Offset, extents[^1].Length + length, type);
            }
            else
            {
                extents.Add((offset, length, type));
            }
        }
        return extents;
    }
}
