using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Cbd.Core.Engine;

/// <summary>Always-on checks of internal invariants: a broken one is a bug, never a user error.</summary>
internal static class Invariant
{
    public static void Check([DoesNotReturnIf(false)] bool condition, string message)
    {
        if (!condition)
            Fail(message);
    }

    /// <summary>
    /// The same with an interpolated message, formatted only when the check fails: several run per pblk allocated, where
    /// formatting each message cost more than the check.
    /// </summary>
    public static void Check([DoesNotReturnIf(false)] bool condition, [InterpolatedStringHandlerArgument(nameof(condition))] ref FailureMessage message)
    {
        if (!condition)
            Fail(message.ToStringAndClear());
    }

    /// <summary>An interpolated message built only when its condition is false.</summary>
    [InterpolatedStringHandler]
    public ref struct FailureMessage
    {
        private DefaultInterpolatedStringHandler _inner;

        public FailureMessage(int literalLength, int formattedCount, bool condition, out bool shouldAppend)
        {
            shouldAppend = !condition;
            _inner = shouldAppend ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        }

        public void AppendLiteral(string value) => _inner.AppendLiteral(value);

        public void AppendFormatted<T>(T value) => _inner.AppendFormatted(value);

        public void AppendFormatted<T>(T value, string? format) => _inner.AppendFormatted(value, format);

        public string ToStringAndClear() => _inner.ToStringAndClear();
    }

    [DoesNotReturn]
    private static void Fail(string message) => throw new InvalidOperationException($"internal invariant broken: {message}");
}

internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void OutOfRange(long offset, long length, long size) =>
        throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + length}) is outside the device of {size} bytes");

    [DoesNotReturn]
    public static void ReadOnly() => throw new ReadOnlyDeviceException();

    [DoesNotReturn]
    public static void Failed(Exception cause) =>
        throw new IOException($"the device stopped accepting writes after a backing store error: {cause.Message}", cause);

    [DoesNotReturn]
    public static void CannotProvision(long offset, long length, SpacePromise space) =>
        throw new ProvisioningNotSupportedException(
            $"cannot provision [{offset}, {offset + length}): the data pblks could store {space.MaxBackedLblks} of the device's {space.TotalLblks} lblks uncompressed, " +
            "so a write elsewhere or a restart could take the space back");
}
