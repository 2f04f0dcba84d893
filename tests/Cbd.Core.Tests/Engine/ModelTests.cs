using System.Text;
using Cbd.Core.Engine;
using CsCheck;

namespace Cbd.Core.Tests.Engine;

/// <summary>
/// Random sequences of operations against the device and against a plain byte array; every read must
/// agree. CsCheck shrinks a failure to a minimal sequence.
/// </summary>
public class ModelTests
{
    public enum Kind { Write, Read, Trim, WriteZeroes, Flush, Reopen }

    public sealed record Op(Kind Kind, int Offset, int Length, int Seed, bool Flag)
    {
        public override string ToString() => $"{Kind}({Offset}, {Length}{(Kind is Kind.Write ? $", seed {Seed}" : "")}{(Flag ? ", flag" : "")})";
    }

    private const int LblkSize = 16 * 1024;
    private const int LogicalSize = 64 * LblkSize;

    private static readonly Gen<int> s_offset = Gen.OneOf(
        Gen.Int[0, LogicalSize - 1],
        Gen.Int[0, LogicalSize / LblkSize - 1].Select(i => i * LblkSize),
        Gen.Int[0, LogicalSize / 512 - 1].Select(i => i * 512));

    private static readonly Gen<int> s_length = Gen.OneOf(Gen.Int[1, 3 * LblkSize], Gen.Const(LblkSize), Gen.Int[1, 64].Select(i => i * 512));

    private static readonly Gen<Op> s_op = Gen.Frequency(
        (6, Gen.Select(s_offset, s_length, Gen.Int[0, 1000], Gen.Bool, (o, l, s, f) => new Op(Kind.Write, o, l, s, f))),
        (4, Gen.Select(s_offset, s_length, (o, l) => new Op(Kind.Read, o, l, 0, false))),
        (1, Gen.Select(s_offset, s_length, (o, l) => new Op(Kind.Trim, o, l, 0, false))),
        (1, Gen.Select(s_offset, s_length, Gen.Bool, (o, l, f) => new Op(Kind.WriteZeroes, o, l, 0, f))),
        (1, Gen.Const(new Op(Kind.Flush, 0, 0, 0, false))),
        (1, Gen.Const(new Op(Kind.Reopen, 0, 0, 0, false))));

    private static readonly Gen<(Op[] Ops, bool ZeroDetect, int Cache)> s_case =
        Gen.Select(s_op.Array[1, 40], Gen.Bool, Gen.OneOf(Gen.Const(1), Gen.Const(64)), (ops, z, c) => (ops, z, c));

    [Fact]
    public async Task Device_agrees_with_a_byte_array_model()
    {
        await s_case.SampleAsync(async c => await RunAsync(c.Ops, c.ZeroDetect, c.Cache), iter: 300, threads: 1,
            print: c => $"zeroDetect={c.ZeroDetect} cacheLblks={c.Cache}: " + string.Join(", ", c.Ops.Select(o => o.ToString())));
    }

    private static async Task RunAsync(Op[] ops, bool zeroDetect, int cacheLblks)
    {
        var store = await DeviceTestKit.FormatAsync(2 << 20, new FormatOptions { LblkSize = LblkSize, LogicalSize = LogicalSize, ZeroDetect = zeroDetect });
        var options = new DeviceOptions { CacheBytes = (long)cacheLblks * LblkSize, FlushDelay = TimeSpan.FromHours(1), WriteBackParallelism = 2 };
        var model = new byte[LogicalSize];
        var device = await DeviceTestKit.OpenAsync(store, options);
        try
        {
            foreach (var op in ops)
            {
                int length = Math.Min(op.Length, LogicalSize - op.Offset);
                switch (op.Kind)
                {
                    case Kind.Write:
                        var data = op.Flag ? DeviceTestKit.Random(length, op.Seed) : DeviceTestKit.Compressible(length, op.Seed);
                        await device.WriteAsync(op.Offset, data, fua: op.Seed % 7 == 0);
                        data.CopyTo(model, op.Offset);
                        break;
                    case Kind.Read:
                        var back = new byte[length];
                        await device.ReadAsync(op.Offset, back);
                        if (!back.AsSpan().SequenceEqual(model.AsSpan(op.Offset, length)))
                            throw new Xunit.Sdk.XunitException($"read {op} differs from the model at byte {op.Offset + FirstDifference(back, model.AsSpan(op.Offset, length))}");
                        break;
                    case Kind.Trim:
                        await device.TrimAsync(op.Offset, length);
                        Array.Clear(model, op.Offset, length);
                        break;
                    case Kind.WriteZeroes:
                        await device.WriteZeroesAsync(op.Offset, length, mayDeallocate: op.Flag);
                        Array.Clear(model, op.Offset, length);
                        break;
                    case Kind.Flush:
                        await device.FlushAsync();
                        break;
                    case Kind.Reopen:
                        await device.DisposeAsync();
                        device = await DeviceTestKit.OpenAsync(store, options);
                        break;
                }
            }
            // Everything, after one more clean close and open.
            await device.DisposeAsync();
            device = await DeviceTestKit.OpenAsync(store, options);
            var all = new byte[LogicalSize];
            await device.ReadAsync(0, all);
            if (!all.AsSpan().SequenceEqual(model))
                throw new Xunit.Sdk.XunitException($"final contents differ from the model at byte {FirstDifference(all, model)}");
            // Stats agree with what block status reports.
            var stats = device.GetStats();
            var extents = await device.GetBlockStatusAsync(0, LogicalSize);
            long holes = extents.Where(e => e.IsHole).Sum(e => e.Length);
            Assert.Equal(LogicalSize - holes, stats.LblksUsed * LblkSize);
        }
        finally
        {
            await device.DisposeAsync();
        }
    }

    private static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b) => a.CommonPrefixLength(b);
}
