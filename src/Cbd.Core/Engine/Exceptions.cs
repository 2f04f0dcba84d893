namespace Cbd.Core.Engine;

/// <summary>The backing store has no room for the data being written (ENOSPC).</summary>
public sealed class OutOfSpaceException(string message) : IOException(message);

/// <summary>A stored lblk failed its checksum or did not decompress to exactly one lblk (EIO).</summary>
public sealed class LblkCorruptException(long lblk, string message)
    : IOException($"lblk {lblk}: {message}")
{
    public long Lblk { get; } = lblk;
}

/// <summary>A write, trim or zeroing was sent to a device opened read-only (EPERM).</summary>
public sealed class ReadOnlyDeviceException() : IOException("the device is open read-only");

/// <summary>
/// Zeroing that must leave the range fully provisioned (NBD_CMD_FLAG_NO_HOLE) was asked of a device that cannot
/// promise it (ENOTSUP); nothing was changed.
/// </summary>
public sealed class ProvisioningNotSupportedException(string message) : NotSupportedException(message);
