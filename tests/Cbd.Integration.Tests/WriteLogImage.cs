using System.Text.Json;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Integration.Tests;

/// <summary>What an image's write log holds, as a reader finds it on disk (docs/FORMAT.md, "Reading the log").</summary>
/// <param name="LogBytes">Size of the log; 0 for an image without one.</param>
/// <param name="Records">Records (pads included) a scan from the header's log_tail takes.</param>
/// <param name="RecordBytes">Bytes of those records.</param>
/// <param name="LogSeq">The header's log_seq: records appended (and retired) before log_tail since format.</param>
/// <param name="Dirty">The header's DIRTY flag.</param>
public readonly record struct WriteLogState(long LogBytes, long Records, long RecordBytes, ulong LogSeq, bool Dirty)
{
    public override string ToString() => $"log of {LogBytes} bytes: {Records} records ({RecordBytes} bytes) from the tail, log_seq {LogSeq}, {(Dirty ? "dirty" : "clean")}";
}

/// <summary>
/// Reads an image's write log with <see cref="LogReader"/>, the scan the engine replays at open, without the lock a
/// server holds: a served image's log is read as the server last wrote it (records still in the page cache included).
/// And compares what a recovered image reads before and after a clean close.
/// </summary>
public static class WriteLogImage
{
    public static async Task<WriteLogState> ReadAsync(string image)
    {
        await using FileBackingStore store = FileBackingStore.OpenShared(image);
        // A server may rewrite the header (its tail) while it is read: a read that finds it changing is tried again.
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                Geometry geometry = await Geometry.ReadAsync(store);
                LogEnd end = await LogReader.ScanAsync(store, geometry, onRecord: null);
                return new WriteLogState(geometry.LogBytes, end.Records, end.Bytes, geometry.Header.LogSeq,
                    geometry.Header.Flags.HasFlag(HeaderFlags.Dirty));
            }
            catch (InvalidDataException) when (attempt < 3)
            {
            }
        }
    }

    /// <summary>
    /// Fails unless <c>cbd info --json</c> calls the image format version 1.1 or 1.2 and its header gives it a log of
    /// <paramref name="expectedBytes"/> bytes (any size when null): a test of the log must not pass on a 1.0 image.
    /// </summary>
    public static async Task<WriteLogState> AssertHasLogAsync(string image, long? expectedBytes = null)
    {
        ExternalTool.Result info = await ExternalTool.RunAsync(CbdServer.Executable, ["info", "--json", "--quiet", image]);
        using JsonDocument json = JsonDocument.Parse(info.StandardOutput);
        JsonElement header = json.RootElement.GetProperty("header");
        Assert.True(header.GetProperty("version_major").GetInt32() == 1 && header.GetProperty("version_minor").GetInt32() is 1 or 2,
            $"not a format 1.1 or 1.2 image (one with a write log): {info}");
        WriteLogState state = await ReadAsync(image);
        Assert.True(state.LogBytes > 0, $"{image}: the header has no log: {state}");
        if (expectedBytes is { } bytes)
        {
            Assert.True(state.LogBytes == bytes, $"{image}: expected a log of {bytes} bytes: {state}");
        }
        return state;
    }

    /// <summary>
    /// A server recovers the image and a copy of the whole device is taken; a clean stop, a new server, a second
    /// copy: a clean close and reopen must not change what the device reads.
    /// </summary>
    public static async Task AssertReadsSameAcrossCleanRestartAsync(string image, string socket, ScratchDirectory scratch, string context)
    {
        string recovered = scratch.File("recovered.raw");
        string reopened = scratch.File("reopened.raw");
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await ExternalTool.RunAsync("nbdcopy", [server.Uri, recovered], TimeSpan.FromSeconds(120));
            await server.StopAsync();
        }
        await using (CbdServer server = await CbdServer.StartAsync(image, socket))
        {
            await ExternalTool.RunAsync("nbdcopy", [server.Uri, reopened], TimeSpan.FromSeconds(120));
            await server.StopAsync();
        }
        long differs = FirstDifference(recovered, reopened);
        Assert.True(differs < 0, $"{context}: byte {differs} of the device (lblk {differs / 65536} of 64 KiB) reads differently after a clean close of the recovered image and a reopen");
        File.Delete(recovered);
        File.Delete(reopened);
    }

    private static long FirstDifference(string a, string b)
    {
        using FileStream first = File.OpenRead(a);
        using FileStream second = File.OpenRead(b);
        Assert.Equal(first.Length, second.Length);
        byte[] x = new byte[1 << 20];
        byte[] y = new byte[1 << 20];
        for (long offset = 0; offset < first.Length; offset += x.Length)
        {
            int length = (int)Math.Min(x.Length, first.Length - offset);
            first.ReadExactly(x, 0, length);
            second.ReadExactly(y, 0, length);
            int mismatch = x.AsSpan(0, length).CommonPrefixLength(y.AsSpan(0, length));
            if (mismatch < length)
            {
                return offset + mismatch;
            }
        }
        return -1;
    }
}
