namespace Cbd.Integration.Tests;

/// <summary>Files of the source tree the tests run from: the scripts and contrib/ that ship with cbd.</summary>
public static class Repository
{
    /// <summary>The directory holding cbd.slnx, found upwards from the test assembly.</summary>
    public static string Root
    {
        get
        {
            for (DirectoryInfo? directory = new(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
            {
                if (System.IO.File.Exists(Path.Combine(directory.FullName, "cbd.slnx")))
                {
                    return directory.FullName;
                }
            }
            Assert.Fail($"no cbd.slnx above {AppContext.BaseDirectory}: the tests run from a build inside the source tree");
            return "";
        }
    }

    public static string File(string relativePath) => Path.Combine(Root, relativePath);
}
