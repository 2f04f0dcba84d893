using System.Diagnostics;

namespace Cbd.TestTools;

public static class Poll
{
    /// <summary>Polls every 10 ms until <paramref name="condition"/> holds; fails the test on timeout with <paramref name="describe"/>'s text.</summary>
    public static async Task UntilAsync(Func<bool> condition, TimeSpan timeout, Func<string> describe)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout)
            {
                Assert.Fail($"timed out after {timeout.TotalSeconds:0.#} s waiting for {describe()}");
            }
            await Task.Delay(10);
        }
    }

    /// <summary>As <see cref="UntilAsync(Func{bool}, TimeSpan, Func{string})"/>, for a condition that has to wait itself (a scrape, a command).</summary>
    public static async Task UntilAsync(Func<Task<bool>> condition, TimeSpan timeout, Func<string> describe)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > timeout)
            {
                Assert.Fail($"timed out after {timeout.TotalSeconds:0.#} s waiting for {describe()}");
            }
            await Task.Delay(10);
        }
    }
}
