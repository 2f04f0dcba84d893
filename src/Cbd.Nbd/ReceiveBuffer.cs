namespace Cbd.Nbd;

/// <summary>
/// The read side of the transmission phase: requests come through a buffer, so that small requests cost one receive
/// call for many, and the reader can tell whether another request is already in hand (<see cref="Buffered"/>).
/// Read by the connection's reader alone; only the asynchronous reads are supported.
/// </summary>
internal sealed class ReceiveBuffer(Stream inner, int size) : Stream
{
    private readonly byte[] _buffer = new byte[size];
    private int _start;
    private int _end;

    /// <summary>Bytes received and not yet read.</summary>
    public int Buffered => _end - _start;

    public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        if (destination.IsEmpty)
        {
            return ValueTask.FromResult(0);
        }
        if (_start < _end)
        {
            return ValueTask.FromResult(TakeBuffered(destination.Span));
        }
        // A payload at least as large as the buffer goes straight to its destination: copying it through would gain nothing.
        return destination.Length >= _buffer.Length ? inner.ReadAsync(destination, cancellationToken) : FillAsync(destination, cancellationToken);
    }

    private async ValueTask<int> FillAsync(Memory<byte> destination, CancellationToken cancellationToken)
    {
        int received = await inner.ReadAsync(_buffer, cancellationToken).ConfigureAwait(false);
        (_start, _end) = (0, received);
        return received == 0 ? 0 : TakeBuffered(destination.Span);
    }

    private int TakeBuffered(Span<byte> destination)
    {
        int n = Math.Min(destination.Length, _end - _start);
        _buffer.AsSpan(_start, n).CopyTo(destination);
        _start += n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("requests are read asynchronously");

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
