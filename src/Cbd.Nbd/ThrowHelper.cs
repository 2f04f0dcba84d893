using System.Diagnostics.CodeAnalysis;

namespace Cbd.Nbd;

/// <summary>Throws kept out of line so the methods calling them stay small.</summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void ThrowArgument(string paramName, string message) => throw new ArgumentException(message, paramName);

    [DoesNotReturn]
    public static void ThrowInvalidOperation(string message) => throw new InvalidOperationException(message);

    [DoesNotReturn]
    public static void ThrowIO(string message) => throw new IOException(message);
}
