namespace Cbd.Cli.Output;

/// <summary>
/// Keeps the furthest progress reported, and passes every report on to a bar if there is one: what an interrupted
/// copy says of how far it got. Parallel copies report out of order, so only the largest value is kept.
/// </summary>
public sealed class ProgressCounter : IProgress<(long Done, long Total)>
{
    private long _done;
    private IProgress<(long Done, long Total)>? _bar;

    public long Done => Interlocked.Read(ref _done);

    /// <summary>This counter, reporting to <paramref name="bar"/> too (null: no bar).</summary>
    public IProgress<(long Done, long Total)> With(IProgress<(long Done, long Total)>? bar)
    {
        _bar = bar;
        return this;
    }

    public void Report((long Done, long Total) value)
    {
        long seen = Interlocked.Read(ref _done);
        while (value.Done > seen)
        {
            long previous = Interlocked.CompareExchange(ref _done, value.Done, seen);
            if (previous == seen)
            {
                break;
            }
            seen = previous;
        }
        _bar?.Report(value);
    }
}
