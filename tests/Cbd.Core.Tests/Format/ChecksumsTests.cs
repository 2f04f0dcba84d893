using Cbd.Core.Compression;
using CsCheck;

namespace Cbd.Core.Tests.Format;

public class ChecksumsTests
{
    [Fact]
    public void Crc32C_matches_the_standard_check_value()
    {
        Assert.Equal(0xE3069283u, Checksums.Crc32C("123456789"u8));
        Assert.Equal(0u, Checksums.Crc32C([]));
        Assert.Equal(0x8A9136AAu, Checksums.Crc32C(new byte[32])); // RFC 3720 B.4: 32 bytes of zeros
        Assert.Equal(0x62A8AB43u, Checksums.Crc32C(Enumerable.Repeat((byte)0xFF, 32).ToArray())); // and of ones
    }

    [Fact]
    public void Lblk_crc_is_the_crc32c_of_the_lblk_number_then_the_stored_bytes()
    {
        var stored = "stored bytes"u8.ToArray();
        byte[] prefixed = [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, .. stored];
        Assert.Equal(Checksums.Crc32C(prefixed), Checksums.LblkCrc(0x1122334455667788, stored));
    }

    [Fact]
    public void Lblk_crc_differs_for_different_lblk_numbers_with_the_same_bytes()
    {
        Gen.Select(Gen.ULong, Gen.ULong, Gen.Byte.Array[0, 600]).Sample((a, b, stored) =>
        {
            if (a != b)
                Assert.NotEqual(Checksums.LblkCrc(a, stored), Checksums.LblkCrc(b, stored));
        }, iter: 2000);
        var zeros = new byte[4096];
        Assert.NotEqual(Checksums.LblkCrc(0, zeros), Checksums.LblkCrc(1, zeros));
        Assert.NotEqual(Checksums.LblkCrc(0, zeros), Checksums.LblkCrc(1UL << 40, zeros));
    }

    [Fact]
    public void Lblk_crc_does_not_depend_on_earlier_calls_on_the_thread()
    {
        var stored = new byte[] { 1, 2, 3 };
        uint first = Checksums.LblkCrc(7, stored);
        Checksums.LblkCrc(8, new byte[5000]);
        Assert.Equal(first, Checksums.LblkCrc(7, stored));
    }
}
