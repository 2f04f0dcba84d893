using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Cbd.Nbd;

/// <summary>
/// Where a connection's bytes go: the socket itself in plaintext, or a stream (an <see cref="System.Net.Security.SslStream"/>
/// after NBD_OPT_STARTTLS, a buffer in tests). Used by one sender at a time (under <see cref="ReplyWriter"/>'s lock).
/// </summary>
internal abstract class ReplyTransport
{
    /// <summary>Sends <paramref name="header"/> then <paramref name="payload"/>, in as few writes as the transport allows.</summary>
    public abstract ValueTask SendAsync(ReadOnlyMemory<byte> header, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken);
}

/// <summary>Plaintext: a gather send puts a reply header and its payload in one system call.</summary>
internal sealed class SocketReplyTransport(Socket socket) : ReplyTransport
{
    private readonly List<ArraySegment<byte>> _segments = new(2);

    public override async ValueTask SendAsync(ReadOnlyMemory<byte> header, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.IsEmpty)
        {
            await SendAllAsync(header, cancellationToken).ConfigureAwait(false);
            return;
        }
        if (!MemoryMarshal.TryGetArray(header, out ArraySegment<byte> first) || !MemoryMarshal.TryGetArray(payload, out ArraySegment<byte> second))
        {
            // A mapped piece of at least 128 KiB: one more send call is nothing beside it.
            await SendAllAsync(header, cancellationToken).ConfigureAwait(false);
            await SendAllAsync(payload, cancellationToken).ConfigureAwait(false);
            return;
        }
        _segments.Clear();
        _segments.Add(first);
        _segments.Add(second);
        int sent = await socket.SendAsync(_segments, SocketFlags.None).ConfigureAwait(false);
        if (sent < first.Count)
        {
            await SendAllAsync(header[sent..], cancellationToken).ConfigureAwait(false);
            sent = first.Count;
        }
        await SendAllAsync(payload[(sent - first.Count)..], cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        while (!data.IsEmpty)
        {
            int sent = await socket.SendAsync(data, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            data = data[sent..];
        }
    }
}

/// <summary>
/// A stream, typically TLS. Every write to an <see cref="System.Net.Security.SslStream"/> is at least one TLS record
/// and one send, so a header goes out in the same write as the start of its payload, filling one record.
/// </summary>
internal sealed class StreamReplyTransport(Stream stream) : ReplyTransport
{
    /// <summary>The largest plaintext of one TLS record (RFC 8446 section 5.1): a header and up to this much payload share a write.</summary>
    internal const int CoalesceSize = 16 << 10;

    private readonly byte[] _coalesce = new byte[CoalesceSize];

    public Stream Stream => stream;

    public override async ValueTask SendAsync(ReadOnlyMemory<byte> header, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.IsEmpty || header.Length >= CoalesceSize)
        {
            await stream.WriteAsync(header, cancellationToken).ConfigureAwait(false);
            if (!payload.IsEmpty)
            {
                await stream.WriteAsync(payload, cancellationToken).ConfigureAwait(false);
            }
            return;
        }
        int head = Math.Min(payload.Length, CoalesceSize - header.Length);
        header.Span.CopyTo(_coalesce);
        payload.Span[..head].CopyTo(_coalesce.AsSpan(header.Length));
        await stream.WriteAsync(_coalesce.AsMemory(0, header.Length + head), cancellationToken).ConfigureAwait(false);
        if (head < payload.Length)
        {
            await stream.WriteAsync(payload[head..], cancellationToken).ConfigureAwait(false);
        }
    }
}
