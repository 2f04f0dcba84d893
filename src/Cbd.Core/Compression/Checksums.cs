using System.Buffers.Binary;
using System.IO.Hashing;

namespace Cbd.Core.Compression;

/// <summary>CRC32C (Castagnoli) as the format uses it.</summary>
public static class Checksums
{
    [ThreadStatic]
    private static Crc32? s_lblkCrc;

    public static uint Crc32C(ReadOnlySpan<byte> data) => Crc32.HashToUInt32(Crc32ParameterSet.Crc32C, data);

    /// <summary>
    /// The checksum kept in an lblk_alloc entry: CRC32C of the lblk number (u64 little-endian) followed by
    /// the stored bytes. Mixing in the number makes data that belongs to another lblk fail the check too.
    /// </summary>
    public static uint LblkCrc(ulong lblk, ReadOnlySpan<byte> stored)
    {
        var crc = s_lblkCrc ??= new Crc32(Crc32ParameterSet.Crc32C);
        crc.Reset();
        Span<byte> number = stackalloc byte[sizeof(ulong)];
        BinaryPrimitives.WriteUInt64LittleEndian(number, lblk);
        crc.Append(number);
        crc.Append(stored);
        return crc.GetCurrentHashAsUInt32();
    }
}
