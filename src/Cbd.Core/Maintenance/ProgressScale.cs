namespace Cbd.Core.Maintenance;

internal static class ProgressScale
{
    /// <summary>Maps a sub-task's 0..1 onto <paramref name="from"/>..<paramref name="to"/> of the caller's progress.</summary>
    public static IProgress<double>? Scaled(IProgress<double>? progress, double from, double to) =>
        progress is null ? null : new ScaledProgress(progress, from, to);

    private sealed class ScaledProgress(IProgress<double> inner, double from, double to) : IProgress<double>
    {
        public void Report(double value) => inner.Report(from + (to - from) * Math.Clamp(value, 0, 1));
    }
}
