using System.Buffers.Binary;
using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>
/// What the server promises about space over the wire, with the real compressed device: base:allocation's
/// "a write to an extent with NBD_STATE_HOLE clear MUST NOT fail with ENOSPC", and NO_HOLE zeroing, which
/// must leave the range fully provisioned or be refused.
/// </summary>
public sealed class SpacePromiseTests
{
    private const int Lblk = 64 * 1024;
    private const long MiB = 1 << 20;
    private const ushort FlagSendFastZero = 1 << 11, FlagSendWriteZeroes = 1 << 6;

    /// <summary>A device on an 8 MiB store: thin (three times that) unless <paramref name="logical"/> says less.</summary>
    private static async Task<CompressedDevice> CreateDeviceAsync(long? logical = null)
    {
        var store = new MemoryBackingStore(8 * MiB);
        await ImageFormatter.FormatAsync(store, new FormatOptions { LogicalSize = logical });
        return await CompressedDevice.OpenAsync(store, new DeviceOptions { CacheBytes = MiB, WriteBackParallelism = 1 });
    }

    private static async Task<byte[]> ReadAsync(RawNbdClient client, ulong offset, int length)
    {
        await client.SendRequestAsync(CmdRead, 7, offset, (uint)length);
        return AssembleRead(await client.ReadStructuredReplyAsync(7), offset, length);
    }

    private static byte[] Random(int length, int seed)
    {
        byte[] data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>About 2-3:1 for LZ4: words of a small vocabulary, differing with the seed.</summary>
    private static byte[] Compressible(int length, int seed)
    {
        var random = new Random(seed);
        byte[][] words = [.. Enumerable.Range(0, 64).Select(_ => Random(3 + random.Next(8), random.Next()))];
        byte[] data = new byte[length];
        for (int i = 0; i < length;)
        {
            byte[] word = words[random.Next(words.Length)];
            int n = Math.Min(word.Length, length - i);
            word.AsSpan(0, n).CopyTo(data.AsSpan(i));
            i += n;
        }
        return data;
    }

    [Fact]
    public async Task ThinDevice_RefusesNoHoleWithEnotsup_AndDoesNotAdvertiseFastZero()
    {
        ServerHarness harness = await ServerHarness.StartAsync(await CreateDeviceAsync());
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        var (_, flags) = await client.HandshakeAsync(structured: true);
        Assert.Equal(FlagSendWriteZeroes, flags & FlagSendWriteZeroes);
        // Refusing NO_HOLE with NBD_ENOTSUP is forbidden to a server that advertises FAST_ZERO.
        Assert.Equal(0, flags & FlagSendFastZero);

        byte[] data = Compressible(4 * Lblk, 1);
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 0, 4 * Lblk, 0, data));
        Assert.Equal(ENotSup, await client.RoundTripAsync(CmdWriteZeroes, 0, 4 * Lblk, FlagNoHole));
        Assert.Equal(data, await ReadAsync(client, 0, 4 * Lblk));
        // FAST_ZERO was not advertised: the spec asks for NBD_EINVAL.
        Assert.Equal(EInval, await client.RoundTripAsync(CmdWriteZeroes, 0, 4 * Lblk, FlagFastZero));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 0, 4 * Lblk));
        Assert.Equal(new byte[4 * Lblk], await ReadAsync(client, 0, 4 * Lblk));
    }

    [Fact]
    public async Task FullyBackedDevice_ProvisionsNoHole_AndAdvertisesFastZero()
    {
        ServerHarness harness = await ServerHarness.StartAsync(await CreateDeviceAsync(logical: 7 * MiB));
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        var (size, flags) = await client.HandshakeAsync(structured: true);
        Assert.Equal(FlagSendFastZero, flags & FlagSendFastZero);

        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 0, 4 * Lblk, 0, Random(4 * Lblk, 2)));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 0, 4 * Lblk, FlagNoHole));
        // The rest filled with incompressible data, then the provisioned range written: no ENOSPC anywhere.
        for (ulong offset = 4 * Lblk; offset < size; offset += Lblk)
        {
            Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, offset, Lblk, 0, Random(Lblk, (int)(offset / Lblk))));
        }
        byte[] data = Random(4 * Lblk, 3);
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 0, 4 * Lblk, FlagFua, data));
        Assert.Equal(data, await ReadAsync(client, 0, 4 * Lblk));
    }

    [Fact]
    public async Task BlockStatus_OfAnOvercommittedDevice_ReportsDataAsHoleNotZero_AndNoExtentWithHoleClearFailsForSpace()
    {
        ServerHarness harness = await ServerHarness.StartAsync(await CreateDeviceAsync());
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        var (size, _) = await client.HandshakeAsync(structured: true);

        // Compressible data, lblk after lblk, until the device is full.
        ulong filled = 0;
        while (filled < size && await client.RoundTripAsync(CmdWrite, filled, Lblk, 0, Compressible(Lblk, (int)(filled / Lblk))) == 0)
        {
            filled += Lblk;
        }
        Assert.True(filled > 8 * MiB, $"only {filled} bytes of compressible data fit");
        Assert.Equal(0u, await client.RoundTripAsync(CmdFlush, 0, 0));

        await client.SendRequestAsync(CmdBlockStatus, 8, 0, (uint)size);
        Reply status = Assert.Single(await client.ReadStructuredReplyAsync(8));
        List<(uint Length, uint Flags)> descriptors = Descriptors(status.Payload);
        ulong at = 0;
        foreach (var (length, flags) in descriptors)
        {
            for (ulong offset = at; (flags & 1) == 0 && offset < at + length; offset += Lblk)
            {
                Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, offset, Lblk, 0, Random(Lblk, (int)(offset / Lblk))));
            }
            at += length;
        }
        // NBD_STATE_HOLE without NBD_STATE_ZERO for the data, both for the rest.
        Assert.Equal([((uint)filled, 1u), ((uint)(size - filled), 3u)], descriptors);
    }

    private static List<(uint Length, uint Flags)> Descriptors(byte[] payload)
    {
        var list = new List<(uint, uint)>();
        for (int i = 4; i < payload.Length; i += 8)
        {
            list.Add((BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i)), BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 4))));
        }
        return list;
    }
}
