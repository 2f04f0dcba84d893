using System.Numerics;
using System.Text;
using Cbd.Core.Engine;
using Cbd.Nbd.Protocol;

namespace Cbd.Nbd;

/// <summary>The one export a server offers: a device, its name and what clients are told about it.</summary>
internal sealed class NbdExport
{
    /// <summary>Advertised minimum block size: the device accepts any byte offset and length.</summary>
    public const uint MinimumBlockSize = 1;

    /// <summary>Preferred block size announced for a device whose lblk size is not one the spec allows there.</summary>
    private const uint FallbackPreferredBlockSize = 4096;

    public NbdExport(IBlockDevice device, string name, bool readOnly, string? description)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(name);
        Device = device;
        Name = name;
        NameUtf8 = CheckedUtf8(name, nameof(name));
        Description = description ?? "";
        DescriptionUtf8 = CheckedUtf8(Description, nameof(description));
        IsReadOnly = readOnly || device.IsReadOnly;
        Size = (ulong)device.Size;

        // The spec wants a power of two no smaller than 512 and no larger than the maximum block size;
        // a device whose lblk size falls outside that still works, it just cannot say what it prefers.
        int blockSize = device.BlockSize;
        uint preferred = blockSize is >= 512 and <= NbdLimits.MaxRequestLength && BitOperations.IsPow2(blockSize)
            ? (uint)blockSize
            : FallbackPreferredBlockSize;
        BlockSize = new BlockSizeConstraints(MinimumBlockSize, preferred, NbdLimits.MaxRequestLength);
    }

    public IBlockDevice Device { get; }
    public string Name { get; }
    public byte[] NameUtf8 { get; }
    public string Description { get; }
    public byte[] DescriptionUtf8 { get; }
    public bool IsReadOnly { get; }
    public ulong Size { get; }
    /// <summary>Announced with NBD_INFO_BLOCK_SIZE: the maximum is also the largest READ or WRITE accepted.</summary>
    public BlockSizeConstraints BlockSize { get; }

    /// <summary>True for this export's name and for the empty name, which the spec reserves for the default export.</summary>
    public bool Matches(ReadOnlySpan<byte> requestedName) => requestedName.IsEmpty || requestedName.SequenceEqual(NameUtf8);

    /// <summary>
    /// Transmission flags. Each is set only where the server really implements the feature: nothing that
    /// writes is offered on a read-only export, and DF only once structured replies are on, as the spec requires.
    /// CAN_MULTI_CONN holds because every connection shares the one device, whose flush covers every
    /// completed write whichever connection made it.
    /// </summary>
    public NbdTransmissionFlags GetTransmissionFlags(bool structuredReplies)
    {
        var flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendCache
            | NbdTransmissionFlags.CanMultiConn;
        if (IsReadOnly)
        {
            flags |= NbdTransmissionFlags.ReadOnly;
        }
        else
        {
            flags |= NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes;
            // A device that cannot provision refuses NO_HOLE with NBD_ENOTSUP, which the spec forbids to a
            // server advertising FAST_ZERO for requests without that flag.
            if (Device.CanProvision)
            {
                flags |= NbdTransmissionFlags.SendFastZero;
            }
        }
        if (structuredReplies)
        {
            flags |= NbdTransmissionFlags.SendDf;
        }
        return flags;
    }

    private static byte[] CheckedUtf8(string value, string paramName)
    {
        if (value.Contains('\0'))
        {
            ThrowHelper.ThrowArgument(paramName, "NBD strings must not contain NUL characters.");
        }
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        if (bytes.Length > NbdLimits.MaxStringLength)
        {
            ThrowHelper.ThrowArgument(paramName, $"NBD strings are at most {NbdLimits.MaxStringLength} bytes of UTF-8; this one is {bytes.Length}.");
        }
        return bytes;
    }
}
