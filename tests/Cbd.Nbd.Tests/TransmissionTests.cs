using System.Buffers.Binary;
using Cbd.Core.Engine;
using static Cbd.Nbd.Tests.RawNbdClient;

namespace Cbd.Nbd.Tests;

/// <summary>Requests and replies of the transmission phase, byte by byte, against a raw client.</summary>
public sealed class TransmissionTests
{
    private const int BlockSize = 4096;
    private const long DeviceSize = 64 * BlockSize;

    private static byte[] Pattern(int length, byte seed)
    {
        byte[] data = new byte[length];
        for (int i = 0; i < length; i++)
        {
            data[i] = (byte)(seed + i * 7 + (i >> 8));
        }
        data[0] = seed == 0 ? (byte)1 : seed;
        return data;
    }

    private static async Task<(ServerHarness, RawNbdClient)> OpenAsync(bool structured, bool readOnly = false, MemoryBlockDevice? device = null)
    {
        ServerHarness harness = await ServerHarness.StartAsync(device ?? new MemoryBlockDevice(DeviceSize, BlockSize), readOnly: readOnly);
        RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured);
        return (harness, client);
    }

    [Fact]
    public async Task WriteThenRead_WithSimpleReplies_ReturnsTheData()
    {
        var (harness, client) = await OpenAsync(structured: false);
        await using var _ = harness;
        await using var __ = client;
        byte[] data = Pattern(10_000, 3);
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 1000, (uint)data.Length, FlagFua, data));

        await client.SendRequestAsync(CmdRead, 9, 1000, (uint)data.Length);
        Reply read = await client.ReadReplyAsync(_ => data.Length);
        Assert.True(read.IsSimple);
        Assert.Equal((9ul, 0u), (read.Handle, read.Error));
        Assert.Equal(data, read.Payload);
        Assert.Equal(data, ((MemoryBlockDevice)harness.Device).Snapshot().AsSpan(1000, data.Length).ToArray());
    }

    [Fact]
    public async Task StructuredRead_SendsHolesAsHoleChunksAndDataAsDataChunks_LastOneDone()
    {
        var (harness, client) = await OpenAsync(structured: true);
        await using var _ = harness;
        await using var __ = client;
        byte[] data = Pattern(BlockSize, 9);
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 2 * BlockSize, BlockSize, 0, data));

        await client.SendRequestAsync(CmdRead, 5, BlockSize, 3 * BlockSize);
        List<Reply> chunks = await client.ReadStructuredReplyAsync(5);
        Assert.Equal([ReplyOffsetHole, ReplyOffsetData, ReplyOffsetHole], chunks.Select(c => c.Type));
        Assert.Equal([false, false, true], chunks.Select(c => c.IsDone));
        byte[] assembled = AssembleRead(chunks, BlockSize, 3 * BlockSize);
        Assert.Equal(new byte[BlockSize], assembled[..BlockSize]);
        Assert.Equal(data, assembled[BlockSize..(2 * BlockSize)]);
        Assert.Equal(new byte[BlockSize], assembled[(2 * BlockSize)..]);
    }

    [Fact]
    public async Task StructuredRead_WithDontFragment_SendsOneDataChunkWithTheZeroesInIt()
    {
        var (harness, client) = await OpenAsync(structured: true);
        await using var _ = harness;
        await using var __ = client;
        byte[] data = Pattern(100, 1);
        await client.RoundTripAsync(CmdWrite, 5000, 100, 0, data);
        await client.SendRequestAsync(CmdRead, 6, 0, 3 * BlockSize, FlagDf);
        List<Reply> chunks = await client.ReadStructuredReplyAsync(6);
        Reply chunk = Assert.Single(chunks);
        Assert.Equal(ReplyOffsetData, chunk.Type);
        Assert.Equal(data, AssembleRead(chunks, 0, 3 * BlockSize)[5000..5100]);
    }

    [Fact]
    public async Task StructuredRead_OfAllHoles_IsOneHoleChunk()
    {
        var (harness, client) = await OpenAsync(structured: true);
        await using var _ = harness;
        await using var __ = client;
        await client.SendRequestAsync(CmdRead, 6, 100, 50_000);
        Reply chunk = Assert.Single(await client.ReadStructuredReplyAsync(6));
        Assert.Equal(ReplyOffsetHole, chunk.Type);
        Assert.Equal(100ul, BinaryPrimitives.ReadUInt64BigEndian(chunk.Payload));
        Assert.Equal(50_000u, BinaryPrimitives.ReadUInt32BigEndian(chunk.Payload.AsSpan(8)));
    }

    [Theory]
    [InlineData(CmdRead, (ulong)DeviceSize - 10, 11u, EInval)]
    [InlineData(CmdRead, (ulong)DeviceSize + 1, 0u, EInval)]
    [InlineData(CmdRead, 0ul, (32u << 20) + 1, EInval)]
    [InlineData(CmdWrite, (ulong)DeviceSize - 512, 1024u, ENoSpc)]
    [InlineData(CmdWriteZeroes, (ulong)DeviceSize, 1u, ENoSpc)]
    [InlineData(CmdTrim, (ulong)DeviceSize - 512, 1024u, EInval)]
    [InlineData(CmdCache, ulong.MaxValue, 1u, EInval)]
    [InlineData(CmdBlockStatus, (ulong)DeviceSize - 1, 2u, EInval)]
    [InlineData(CmdBlockStatus, 0ul, 0u, EInval)]
    [InlineData((ushort)9, 0ul, 0u, EInval)]
    [InlineData((ushort)0xffff, 0ul, 0u, EInval)]
    public async Task InvalidRequests_GetTheSpecsErrno_AndTheConnectionGoesOn(ushort command, ulong offset, uint length, uint errno)
    {
        foreach (bool structured in new[] { false, true })
        {
            var (harness, client) = await OpenAsync(structured);
            await using var _ = harness;
            await using var __ = client;
            byte[]? payload = command == CmdWrite ? new byte[length] : null;
            if (!structured && command == CmdBlockStatus)
            {
                continue;
            }
            await client.SendRequestAsync(command, 77, offset, length, 0, payload);
            Reply reply = await client.ReadReplyAsync();
            Assert.Equal(77ul, reply.Handle);
            Assert.Equal(errno, reply.ErrorCode);
            Assert.Equal(!structured, reply.IsSimple);
            if (structured)
            {
                Assert.Equal(ReplyError, reply.Type);
                Assert.True(reply.IsDone);
                Assert.NotEmpty(reply.ErrorMessage);
            }
            Assert.Equal(0u, await client.RoundTripAsync(CmdFlush, 0, 0));
        }
    }

    [Fact]
    public async Task OversizedWrite_IsEinval_AndItsPayloadIsSkipped()
    {
        var (harness, client) = await OpenAsync(structured: false);
        await using var _ = harness;
        await using var __ = client;
        uint length = (32u << 20) + 4096;
        await client.SendRequestAsync(CmdWrite, 1, 0, length, 0, new byte[length]);
        Reply reply = await client.ReadReplyAsync();
        Assert.Equal((1ul, EInval), (reply.Handle, reply.Error));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, 0, 4, 0, [1, 2, 3, 4]));
    }

    [Theory]
    [InlineData(CmdRead, FlagReqOne)]
    [InlineData(CmdRead, 0x40)]
    [InlineData(CmdWrite, FlagNoHole)]
    [InlineData(CmdTrim, FlagFastZero)]
    [InlineData(CmdBlockStatus, FlagDf)]
    [InlineData(CmdCache, FlagDf)]
    public async Task FlagNotValidForTheCommand_IsEinval(ushort command, ushort flags)
    {
        var (harness, client) = await OpenAsync(structured: true);
        await using var _ = harness;
        await using var __ = client;
        byte[]? payload = command == CmdWrite ? new byte[512] : null;
        Assert.Equal(EInval, await client.RoundTripAsync(command, 0, 512, flags, payload));
    }

    [Fact]
    public async Task DontFragment_WithoutStructuredReplies_IsEinval()
    {
        var (harness, client) = await OpenAsync(structured: false);
        await using var _ = harness;
        await using var __ = client;
        Assert.Equal(EInval, await client.RoundTripAsync(CmdRead, 0, 512, FlagDf));
    }

    [Fact]
    public async Task ReadOnlyExport_RefusesWritesWithEperm_AndServesReads()
    {
        var (harness, client) = await OpenAsync(structured: false, readOnly: true);
        await using var _ = harness;
        await using var __ = client;
        Assert.Equal(EPerm, await client.RoundTripAsync(CmdWrite, 0, 512, 0, new byte[512]));
        Assert.Equal(EPerm, await client.RoundTripAsync(CmdTrim, 0, 512));
        Assert.Equal(EPerm, await client.RoundTripAsync(CmdWriteZeroes, 0, 512));
        Assert.Equal(0u, await client.RoundTripAsync(CmdFlush, 0, 0));
        await client.SendRequestAsync(CmdRead, 3, 0, 512);
        Assert.Equal(0u, (await client.ReadReplyAsync(_ => 512)).Error);
    }

    public static TheoryData<string, uint> DeviceFailures => new()
    {
        { "nospace", ENoSpc },
        { "corrupt", EIO },
        { "io", EIO },
        { "readonly", EPerm },
        { "bug", EIO },
    };

    [Theory]
    [MemberData(nameof(DeviceFailures))]
    public async Task DeviceExceptions_MapToErrno(string failure, uint errno)
    {
        var device = new MemoryBlockDevice(DeviceSize, BlockSize)
        {
            BeforeOperation = (op, _, _) => op == "write"
                ? throw failure switch
                {
                    "nospace" => new OutOfSpaceException("full"),
                    "corrupt" => new LblkCorruptException(3, "bad checksum"),
                    "io" => new IOException("disk gone"),
                    "readonly" => new ReadOnlyDeviceException(),
                    _ => new InvalidOperationException("bug"),
                }
                : ValueTask.CompletedTask,
        };
        var (harness, client) = await OpenAsync(structured: true, device: device);
        await using var _ = harness;
        await using var __ = client;
        Assert.Equal(errno, await client.RoundTripAsync(CmdWrite, 0, 512, 0, new byte[512]));
        Assert.Equal(0u, await client.RoundTripAsync(CmdRead, 0, 1));
    }

    [Fact]
    public async Task FailedRead_WithSimpleReplies_SendsTheErrorAndNoData()
    {
        var device = new MemoryBlockDevice(DeviceSize, BlockSize)
        {
            BeforeOperation = (op, offset, _) => op == "read" && offset == 0 ? throw new LblkCorruptException(0, "bad") : ValueTask.CompletedTask,
        };
        var (harness, client) = await OpenAsync(structured: false, device: device);
        await using var _ = harness;
        await using var __ = client;
        await client.SendRequestAsync(CmdRead, 1, 0, 4096);
        Assert.Equal(EIO, (await client.ReadReplyAsync(_ => throw new InvalidOperationException("no data expected"))).Error);
        await client.SendRequestAsync(CmdRead, 2, 4096, 16);
        Assert.Equal(new byte[16], (await client.ReadReplyAsync(_ => 16)).Payload);
    }

    [Fact]
    public async Task BlockStatus_DescribesHolesAndData_AndHonoursRequestOne()
    {
        var (harness, client) = await OpenAsync(structured: true);
        await using var _ = harness;
        await using var __ = client;
        await client.RoundTripAsync(CmdWrite, 2 * BlockSize, 2 * BlockSize, 0, Pattern(2 * BlockSize, 5));
        await client.RoundTripAsync(CmdWriteZeroes, 3 * BlockSize, BlockSize, FlagNoHole);

        await client.SendRequestAsync(CmdBlockStatus, 8, 0, 6 * BlockSize);
        Reply status = Assert.Single(await client.ReadStructuredReplyAsync(8));
        Assert.Equal(ReplyBlockStatus, status.Type);
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(status.Payload));
        Assert.Equal(
            [(2u * BlockSize, 3u), (BlockSize, 0u), (BlockSize, 2u), (2u * BlockSize, 3u)],
            Descriptors(status.Payload));

        await client.SendRequestAsync(CmdBlockStatus, 9, BlockSize, 6 * BlockSize, FlagReqOne);
        status = Assert.Single(await client.ReadStructuredReplyAsync(9));
        Assert.Equal([(BlockSize, 3u)], Descriptors(status.Payload));
    }

    private static List<(uint, uint)> Descriptors(byte[] payload)
    {
        var list = new List<(uint, uint)>();
        for (int i = 4; i < payload.Length; i += 8)
        {
            list.Add((BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i)), BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 4))));
        }
        return list;
    }

    [Fact]
    public async Task BlockStatus_WithoutAMetaContext_IsEinval()
    {
        ServerHarness harness = await ServerHarness.StartAsync(new MemoryBlockDevice(DeviceSize, BlockSize));
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: true, allocationContext: false);
        Assert.Equal(EInval, await client.RoundTripAsync(CmdBlockStatus, 0, 4096));
    }

    [Fact]
    public async Task WriteZeroes_DeallocatesUnlessNoHole_AndFastZeroIsRefusedOnlyWithNoHole()
    {
        var device = new MemoryBlockDevice(DeviceSize, BlockSize);
        var (harness, client) = await OpenAsync(structured: false, device: device);
        await using var _ = harness;
        await using var __ = client;
        await client.RoundTripAsync(CmdWrite, 0, 4 * BlockSize, 0, Pattern(4 * BlockSize, 2));

        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 0, BlockSize));
        Assert.False(device.IsAllocated(0));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, BlockSize, BlockSize, FlagNoHole));
        Assert.True(device.IsAllocated(1));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 2 * BlockSize, BlockSize, FlagFastZero | FlagFua));
        Assert.False(device.IsAllocated(2));
        Assert.Equal(ENotSup, await client.RoundTripAsync(CmdWriteZeroes, 3 * BlockSize, BlockSize, FlagFastZero | FlagNoHole));
        Assert.True(device.IsAllocated(3));
        Assert.Equal(new byte[3 * BlockSize], device.Snapshot()[..(3 * BlockSize)]);
        Assert.NotEqual(new byte[BlockSize], device.Snapshot()[(3 * BlockSize)..(4 * BlockSize)]);
    }

    [Fact]
    public async Task WriteZeroes_OfTheWholeExport_IsNotBoundByTheMaximumBlockSize()
    {
        var device = new MemoryBlockDevice(48L << 20, 65536);
        var (harness, client) = await OpenAsync(structured: false, device: device);
        await using var _ = harness;
        await using var __ = client;
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 0, 48u << 20, FlagFastZero));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 0, 48u << 20));
        Assert.Equal(0u, await client.RoundTripAsync(CmdWriteZeroes, 0, 48u << 20, FlagNoHole));
        Assert.Equal(0u, await client.RoundTripAsync(CmdTrim, 0, 48u << 20));
    }

    [Fact]
    public async Task TrimCacheAndFlush_ReachTheDevice()
    {
        var device = new MemoryBlockDevice(DeviceSize, BlockSize);
        var operations = new List<string>();
        device.BeforeOperation = (op, _, _) =>
        {
            lock (operations)
            {
                operations.Add(op);
            }
            return ValueTask.CompletedTask;
        };
        var (harness, client) = await OpenAsync(structured: false, device: device);
        await using var _ = harness;
        await using var __ = client;
        await client.RoundTripAsync(CmdWrite, 0, BlockSize, 0, Pattern(BlockSize, 4));
        Assert.Equal(0u, await client.RoundTripAsync(CmdTrim, 0, BlockSize, FlagFua));
        Assert.False(device.IsAllocated(0));
        Assert.Equal(0u, await client.RoundTripAsync(CmdCache, 0, 2 * BlockSize));
        Assert.Equal(0u, await client.RoundTripAsync(CmdFlush, 0, 0));
        Assert.Equal(["write", "trim", "flush", "prefetch", "flush"], operations);
        Assert.Equal(2, device.FlushCount);
    }

    [Fact]
    public async Task ZeroLengthRequests_SucceedWithoutTouchingTheDevice()
    {
        var (harness, client) = await OpenAsync(structured: true);
        await using var _ = harness;
        await using var __ = client;
        Assert.Equal(0u, await client.RoundTripAsync(CmdWrite, DeviceSize, 0));
        Assert.Equal(0u, await client.RoundTripAsync(CmdTrim, 0, 0));
        await client.SendRequestAsync(CmdRead, 4, 0, 0);
        Reply none = Assert.Single(await client.ReadStructuredReplyAsync(4));
        Assert.Equal(ReplyNone, none.Type);
    }

    [Fact]
    public async Task ConcurrentRequests_AreAnsweredOutOfOrder_AsTheyComplete()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var device = new MemoryBlockDevice(DeviceSize, BlockSize)
        {
            BeforeOperation = async (op, offset, _) =>
            {
                if (op == "read" && offset == 0)
                {
                    await gate.Task;
                }
            },
        };
        var (harness, client) = await OpenAsync(structured: false, device: device);
        await using var _ = harness;
        await using var __ = client;

        await client.SendRequestAsync(CmdRead, 100, 0, 512);
        for (ulong h = 1; h <= 10; h++)
        {
            await client.SendRequestAsync(CmdWrite, h, h * BlockSize, 512, 0, Pattern(512, (byte)h));
        }
        var seen = new List<ulong>();
        for (int i = 0; i < 10; i++)
        {
            Reply reply = await client.ReadReplyAsync();
            Assert.Equal(0u, reply.Error);
            seen.Add(reply.Handle);
        }
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (ulong)i), seen.Order());

        gate.SetResult();
        Reply slow = await client.ReadReplyAsync(_ => 512);
        Assert.Equal(100ul, slow.Handle);
    }

    [Fact]
    public async Task InFlightRequests_AreCappedPerConnection()
    {
        var gate = new WriteGate();
        ServerHarness harness = await ServerHarness.StartAsync(gate.CreateDevice(), options: new NbdServerOptions { MaxInFlightRequests = 3 });
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        for (ulong h = 0; h < 12; h++)
        {
            await client.SendRequestAsync(CmdWrite, h, h * 512, 512, 0, new byte[512]);
        }
        await WaitForPeakAsync(harness, () => gate.Peak, 3, waiting: 1);
        Assert.Equal(3, gate.Peak);
        gate.Open();
        for (int i = 0; i < 12; i++)
        {
            Assert.Equal(0u, (await client.ReadReplyAsync()).Error);
        }
        Assert.Equal(3, gate.Peak);
    }

    [Fact]
    public async Task InFlightBytes_AreCappedPerConnection_ButALoneLargeRequestIsAdmitted()
    {
        int running = 0, peak = 0;
        var large = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var small = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var device = new MemoryBlockDevice(DeviceSize, BlockSize)
        {
            BeforeOperation = async (op, _, length) =>
            {
                if (op != "write")
                {
                    return;
                }
                InterlockedMax(ref peak, Interlocked.Increment(ref running));
                await (length > BlockSize ? large.Task : small.Task);
                Interlocked.Decrement(ref running);
            },
        };
        ServerHarness harness = await ServerHarness.StartAsync(device, options: new NbdServerOptions { MaxInFlightBytes = 2 * BlockSize });
        await using var _ = harness;
        await using RawNbdClient client = await harness.ConnectAsync();
        await client.HandshakeAsync(structured: false);
        // Four times the byte cap, admitted because nothing else is in flight; the small writes wait behind it.
        await client.SendRequestAsync(CmdWrite, 0, 0, 8 * BlockSize, 0, new byte[8 * BlockSize]);
        for (ulong h = 1; h <= 6; h++)
        {
            await client.SendRequestAsync(CmdWrite, h, h * BlockSize, BlockSize, 0, new byte[BlockSize]);
        }
        await WaitForPeakAsync(harness, () => Volatile.Read(ref peak), 1, waiting: 1);
        Assert.Equal(1, Volatile.Read(ref peak));

        large.SetResult();
        Assert.Equal(0ul, (await client.ReadReplyAsync()).Handle);
        await WaitForPeakAsync(harness, () => Volatile.Read(ref peak), 2, waiting: 1);
        Assert.Equal(2, Volatile.Read(ref peak));

        small.SetResult();
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(0u, (await client.ReadReplyAsync()).Error);
        }
    }

    [Fact]
    public async Task InFlightBytes_AreCappedAcrossConnections_AndWaitersGoOnOnceBudgetIsReturned()
    {
        var gate = new WriteGate();
        // Each connection alone could hold 64 writes; the server as a whole holds 16 blocks' worth.
        const int Budget = 16 * BlockSize;
        ServerHarness harness = await ServerHarness.StartAsync(gate.CreateDevice(), options: new NbdServerOptions
        {
            MaxInFlightBytes = 64 * BlockSize,
            MaxServerInFlightBytes = Budget,
        });
        await using var _ = harness;
        await using RawNbdClient first = await harness.ConnectAsync();
        await using RawNbdClient second = await harness.ConnectAsync();
        await first.HandshakeAsync(structured: false);
        await second.HandshakeAsync(structured: false);
        for (ulong h = 0; h < 20; h++)
        {
            await first.SendRequestAsync(CmdWrite, h, h * BlockSize, BlockSize, 0, new byte[BlockSize]);
        }
        await WaitForPeakAsync(harness, () => gate.Peak, 16, waiting: 1);
        // Sent once the first connection holds the whole budget, so that its request must wait too.
        await second.SendRequestAsync(CmdWrite, 99, 40 * BlockSize, BlockSize, 0, new byte[BlockSize]);
        await WaitForPeakAsync(harness, () => gate.Peak, 16, waiting: 2);
        Assert.Equal(16, gate.Peak);
        Assert.Equal(Budget, harness.Server.PayloadPool.PeakRentedBytes);

        gate.Open();
        for (int i = 0; i < 20; i++)
        {
            Assert.Equal(0u, (await first.ReadReplyAsync()).Error);
        }
        RawNbdClient.Reply reply = await second.ReadReplyAsync();
        Assert.Equal((99ul, 0u), (reply.Handle, reply.Error));
        Assert.Equal(Budget, harness.Server.PayloadPool.PeakRentedBytes);
    }

    /// <summary>Makes devices whose writes wait until <see cref="Open"/>, counting the most that waited at once.</summary>
    private sealed class WriteGate
    {
        private readonly TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _running;
        private int _peak;

        public int Peak => Volatile.Read(ref _peak);

        public void Open() => _open.SetResult();

        public MemoryBlockDevice CreateDevice() => new(DeviceSize, BlockSize)
        {
            BeforeOperation = async (op, _, _) =>
            {
                if (op != "write")
                {
                    return;
                }
                InterlockedMax(ref _peak, Interlocked.Increment(ref _running));
                await _open.Task;
                Interlocked.Decrement(ref _running);
            },
        };
    }

    /// <summary>
    /// Waits until <paramref name="peak"/> has reached <paramref name="expected"/> and <paramref name="waiting"/> requests
    /// wait for room (<see cref="NbdServer.WaitingForRoom"/>): with everything sent, the server then admits nothing more
    /// until a request completes, so the peak is final. A limit not kept overshoots and never leaves a request waiting.
    /// </summary>
    private static Task WaitForPeakAsync(ServerHarness harness, Func<int> peak, int expected, int waiting)
        => Poll.UntilAsync(() => peak() >= expected && harness.Server.WaitingForRoom == waiting, TimeSpan.FromSeconds(10),
            () => $"a peak of {expected} requests at the device with {waiting} waiting for room; peak {peak()}, waiting {harness.Server.WaitingForRoom}");

    private static void InterlockedMax(ref int target, int value)
    {
        int current;
        while ((current = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, current) != current)
        {
        }
    }

    [Fact]
    public async Task ManyRequestsInFlight_OnManyConnections_AllComplete()
    {
        var device = new MemoryBlockDevice(DeviceSize, BlockSize);
        ServerHarness harness = await ServerHarness.StartAsync(device);
        await using var _ = harness;
        await Parallel.ForEachAsync(Enumerable.Range(0, 8), async (c, _) =>
        {
            await using RawNbdClient client = await harness.ConnectAsync();
            await client.HandshakeAsync(structured: c % 2 == 0);
            int region = c * 8 * BlockSize;
            for (int i = 0; i < 8; i++)
            {
                await client.SendRequestAsync(CmdWrite, (ulong)i, (ulong)(region + i * BlockSize), BlockSize, 0, Pattern(BlockSize, (byte)(c * 8 + i)));
            }
            for (int i = 0; i < 8; i++)
            {
                Assert.Equal(0u, (await client.ReadReplyAsync()).ErrorCode);
            }
            await client.SendRequestAsync(CmdRead, 99, (ulong)region, 8 * BlockSize, c % 2 == 0 ? FlagDf : (ushort)0);
            byte[] data = c % 2 == 0
                ? AssembleRead(await client.ReadStructuredReplyAsync(99), (ulong)region, 8 * BlockSize)
                : (await client.ReadReplyAsync(_ => 8 * BlockSize)).Payload;
            for (int i = 0; i < 8; i++)
            {
                Assert.Equal(Pattern(BlockSize, (byte)(c * 8 + i)), data[(i * BlockSize)..((i + 1) * BlockSize)]);
            }
            await client.SendRequestAsync(CmdDisc, 0, 0, 0);
            Assert.True(await client.IsClosedByServerAsync());
        });
    }
}
