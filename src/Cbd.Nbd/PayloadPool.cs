using System.Buffers;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Cbd.Nbd;

/// <summary>
/// The payload buffers (WRITE data received, READ data to send) of every connection of a server, within one
/// byte budget. No request allocates more than one piece of <see cref="PieceSize"/>: larger ones are received
/// and sent piece by piece, so a buffer can always be had once others are returned.
/// </summary>
/// <remarks>
/// Invariant: bytes rented plus bytes kept mapped for reuse never exceed the budget. Buffers up to
/// <see cref="SmallLimit"/> come from <see cref="ArrayPool{T}.Shared"/>: they are cheap to keep and are
/// counted while rented. Larger ones are anonymous memory maps of a power-of-two size, kept for reuse and
/// unmapped when no large buffer was rented for a whole <see cref="TrimInterval"/>: munmap gives the memory
/// back to the system at once, whereas a managed array would stay in the process until a full collection
/// that an idle server never triggers, and glibc's malloc keeps freed large blocks once it has raised its
/// mmap threshold.
/// </remarks>
internal sealed class PayloadPool : IDisposable
{
    /// <summary>Largest buffer taken from <see cref="ArrayPool{T}.Shared"/>: one lblk of the default size.</summary>
    public const int SmallLimit = 64 << 10;

    /// <summary>Smallest and largest piece a server may choose.</summary>
    public const int MinPieceSize = 64 << 10, MaxPieceSize = 1 << 20;

    private static readonly TimeSpan s_defaultTrimInterval = TimeSpan.FromSeconds(5);

    private readonly long _budget;
    private readonly Lock _lock = new();
    private readonly Stack<NativeBuffer>[] _free;
    private readonly Timer _trimTimer;
    private long _rented;
    private long _retained;
    private long _peakRented;
    private bool _trimScheduled;
    private bool _rentedSinceTrimCheck;
    private bool _disposed;
    private int _waiting;
    private TaskCompletionSource? _waiter;

    /// <param name="budget">Bytes that may be rented and kept at once.</param>
    /// <param name="pieceSize">The largest buffer handed out: a power of two from <see cref="MinPieceSize"/>
    /// to <see cref="MaxPieceSize"/>, no larger than <paramref name="budget"/>.</param>
    public PayloadPool(long budget, int pieceSize, TimeSpan? trimInterval = null)
    {
        if (!BitOperations.IsPow2(pieceSize) || pieceSize is < MinPieceSize or > MaxPieceSize || pieceSize > budget)
        {
            ThrowHelper.ThrowArgument(nameof(pieceSize), $"A piece must be a power of two from {MinPieceSize} to {MaxPieceSize} bytes and within the budget {budget}; got {pieceSize}.");
        }
        _budget = budget;
        PieceSize = pieceSize;
        TrimInterval = trimInterval ?? s_defaultTrimInterval;
        _free = new Stack<NativeBuffer>[BitOperations.Log2((uint)pieceSize) + 1];
        for (int i = 0; i < _free.Length; i++)
        {
            _free[i] = new Stack<NativeBuffer>();
        }
        _trimTimer = new Timer(static state => ((PayloadPool)state!).TrimIfIdle(), this, Timeout.Infinite, Timeout.Infinite);
    }

    /// <summary>The largest buffer <see cref="RentAsync"/> hands out.</summary>
    public int PieceSize { get; }

    /// <summary>How long large buffers stay mapped without being rented before they are unmapped.</summary>
    public TimeSpan TrimInterval { get; }

    /// <summary>Bytes rented now (buffer sizes, not request lengths).</summary>
    public long RentedBytes
    {
        get
        {
            lock (_lock)
            {
                return _rented;
            }
        }
    }

    /// <summary>The most bytes ever rented at once.</summary>
    public long PeakRentedBytes
    {
        get
        {
            lock (_lock)
            {
                return _peakRented;
            }
        }
    }

    /// <summary>Bytes of large buffers kept mapped for reuse.</summary>
    public long RetainedBytes
    {
        get
        {
            lock (_lock)
            {
                return _retained;
            }
        }
    }

    /// <summary>Calls of <see cref="RentAsync"/> waiting for budget now.</summary>
    public int Waiting => Volatile.Read(ref _waiting);

    /// <summary>Waits until a buffer of at least <paramref name="length"/> bytes (at most <see cref="PieceSize"/>) fits the budget, and rents it.</summary>
    public async ValueTask<PayloadBuffer> RentAsync(int length, CancellationToken cancellationToken)
    {
        if ((uint)length > (uint)PieceSize)
        {
            ThrowHelper.ThrowArgument(nameof(length), $"A payload buffer is at most {PieceSize} bytes; asked for {length}.");
        }
        while (true)
        {
            Task wait;
            lock (_lock)
            {
                if (TryRentLocked(length, out PayloadBuffer buffer))
                {
                    return buffer;
                }
                _waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _waiter.Task;
                Interlocked.Increment(ref _waiting);
            }
            try
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _waiting);
            }
        }
    }

    public void Return(PayloadBuffer buffer)
    {
        TaskCompletionSource? waiter;
        bool startTimer = false;
        lock (_lock)
        {
            _rented -= buffer.Capacity;
            if (buffer.Native is { } native)
            {
                if (_disposed)
                {
                    native.Unmap();
                }
                else
                {
                    _free[BitOperations.Log2((uint)native.Length)].Push(native);
                    _retained += native.Length;
                    startTimer = !_trimScheduled;
                    _trimScheduled = true;
                }
            }
            waiter = _waiter;
            _waiter = null;
        }
        if (buffer.Array is { } array)
        {
            ArrayPool<byte>.Shared.Return(array);
        }
        if (startTimer)
        {
            _trimTimer.Change(TrimInterval, TrimInterval);
        }
        waiter?.TrySetResult();
    }

    /// <summary>Unmaps the buffers kept for reuse; buffers still rented are unmapped when returned.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            UnmapFreeLocked(long.MaxValue);
        }
        _trimTimer.Dispose();
    }

    private bool TryRentLocked(int length, out PayloadBuffer buffer)
    {
        if (length <= SmallLimit)
        {
            int size = length <= 16 ? 16 : (int)BitOperations.RoundUpToPowerOf2((uint)length);
            if (_rented + size > _budget)
            {
                buffer = default;
                return false;
            }
            _rented += size;
            _peakRented = Math.Max(_peakRented, _rented);
            byte[] array = ArrayPool<byte>.Shared.Rent(length);
            buffer = new PayloadBuffer(array, size);
            return true;
        }

        int classSize = (int)BitOperations.RoundUpToPowerOf2((uint)length);
        if (_rented + classSize > _budget)
        {
            buffer = default;
            return false;
        }
        _rentedSinceTrimCheck = true;
        Stack<NativeBuffer> free = _free[BitOperations.Log2((uint)classSize)];
        if (!free.TryPop(out NativeBuffer? native))
        {
            // Buffers of other sizes kept for reuse make room for this one.
            UnmapFreeLocked(_rented + _retained + classSize - _budget);
            native = NativeBuffer.Map(classSize);
        }
        else
        {
            _retained -= classSize;
        }
        _rented += classSize;
        _peakRented = Math.Max(_peakRented, _rented);
        buffer = new PayloadBuffer(native);
        return true;
    }

    /// <summary>Unmaps free buffers, largest first, until at least <paramref name="bytes"/> are released or none is left.</summary>
    private void UnmapFreeLocked(long bytes)
    {
        for (int i = _free.Length - 1; i >= 0 && bytes > 0; i--)
        {
            while (bytes > 0 && _free[i].TryPop(out NativeBuffer? native))
            {
                native.Unmap();
                _retained -= native.Length;
                bytes -= native.Length;
            }
        }
    }

    private void TrimIfIdle()
    {
        bool stop = false;
        lock (_lock)
        {
            if (!_rentedSinceTrimCheck)
            {
                UnmapFreeLocked(long.MaxValue);
            }
            _rentedSinceTrimCheck = false;
            if (_retained == 0)
            {
                _trimScheduled = false;
                stop = true;
            }
        }
        if (stop)
        {
            try
            {
                _trimTimer.Change(Timeout.Infinite, Timeout.Infinite);
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }
}

/// <summary>A payload buffer rented from a <see cref="PayloadPool"/>: a pooled array or an anonymous memory map.</summary>
internal readonly struct PayloadBuffer
{
    internal PayloadBuffer(byte[] array, int capacity)
    {
        Array = array;
        Capacity = capacity;
    }

    internal PayloadBuffer(NativeBuffer native)
    {
        Native = native;
        Capacity = native.Length;
    }

    internal byte[]? Array { get; }
    internal NativeBuffer? Native { get; }

    /// <summary>Bytes counted against the budget; the usable memory is at least as long.</summary>
    public int Capacity { get; }

    public bool IsEmpty => Array is null && Native is null;

    public Memory<byte> Memory => Array is not null ? Array.AsMemory() : Native is not null ? Native.Memory : Memory<byte>.Empty;
}

/// <summary>
/// Anonymous private memory mapped with mmap and released with munmap. Linux only, as the server is. The
/// memory must not be touched once <see cref="Unmap"/> ran: the pool unmaps only buffers returned to it.
/// </summary>
internal sealed unsafe class NativeBuffer : MemoryManager<byte>
{
    private const int ProtRead = 0x1, ProtWrite = 0x2, MapPrivate = 0x02, MapAnonymous = 0x20;

    private readonly nint _address;

    private NativeBuffer(nint address, int length)
    {
        _address = address;
        Length = length;
    }

    public int Length { get; }

    public static NativeBuffer Map(int length)
    {
        nint address = mmap(0, (nuint)length, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (address == -1)
        {
            throw new OutOfMemoryException($"mmap of a {length}-byte payload buffer failed: errno {Marshal.GetLastPInvokeError()}");
        }
        return new NativeBuffer(address, length);
    }

    public void Unmap() => munmap(_address, (nuint)Length);

    public override Span<byte> GetSpan() => new((void*)_address, Length);

    public override MemoryHandle Pin(int elementIndex = 0) => new((byte*)_address + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }

    [DllImport("libc", SetLastError = true)]
    private static extern nint mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [DllImport("libc", SetLastError = true)]
    private static extern int munmap(nint addr, nuint length);
}
