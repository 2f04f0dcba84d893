using System.Security.Cryptography;
using Xunit.Abstractions;

namespace Cbd.Integration.Tests;

/// <summary>ext4 through nbdfuse and a loop device on an image with a write log, the server SIGKILLed while records are pending.</summary>
public sealed class WriteLogCrashTests(ITestOutputHelper output)
{
    private const int Rounds = 3;
    private const int KiB = 1024;
    private const int LargeFileBytes = 8 << 20;

    /// <summary>
    /// Each round: many small files written and parts of large files overwritten (the last round's large file among
    /// them), then <c>sync -f</c>; more of the same written and fsynced in the background, and the server SIGKILLed
    /// while they go on and the image's log holds records. The next server recovers it, and the device reads the same
    /// after a clean stop and a new server; then the mount replays ext4's journal, as after a power cut,
    /// <c>e2fsck -fn</c> is clean, and every file synced in any round reads back exactly as it was synced.
    /// </summary>
    [Fact]
    public async Task Ext4_SyncedFilesReadBack_AfterSigkillWithRecordsInTheLog()
    {
        using var scratch = new ScratchDirectory();
        string image = scratch.File("disk.cbd");
        string mountPoint = scratch.Directory("mnt");
        // Every file synced so far, by path below the mount point, and its SHA-256 as synced.
        var synced = new SortedDictionary<string, string>(StringComparer.Ordinal);

        for (int round = 0; round <= Rounds; round++)
        {
            // A socket per round: nothing of the killed server's connections can reach the next one.
            string socket = scratch.File($"nbd{round}.sock");
            if (round > 0)
            {
                await WriteLogImage.AssertReadsSameAcrossCleanRestartAsync(image, socket, scratch, $"round {round}");
                output.WriteLine($"round {round}: the recovered device reads the same after a clean close and reopen");
            }
            // The default log of a 512 MiB image is 64 MiB: a round writes less than the half of it that would start merges
            // (each round starts with an empty log, after the clean stop above), so the kill finds records pending.
            await using CbdServer server = round == 0
                ? await CbdServer.CreateAsync(image, socket, "512M")
                : await CbdServer.StartAsync(image, socket);
            if (round == 0)
            {
                await WriteLogImage.AssertHasLogAsync(image);
            }
            await using NbdFuseLoop disk = await NbdFuseLoop.AttachAsync(server.Uri, scratch.File($"fuse{round}"));
            if (round == 0)
            {
                await disk.MakeExt4Async();
            }
            else
            {
                // e2fsck -n does not replay the journal: the mount does, as it would after a power cut.
                await disk.MountAsync(mountPoint);
                await disk.UnmountAsync();
                await disk.CheckExt4Async();
            }
            await disk.MountAsync(mountPoint);
            AssertSynced(mountPoint, synced, round);
            if (round == Rounds)
            {
                await disk.UnmountAsync();
                await disk.CheckExt4Async();
                await disk.DetachAsync();
                await server.StopAsync();
                break;
            }

            var random = new Random(1130 + round);
            string directory = Path.Combine(mountPoint, $"synced-{round}");
            WriteSmallFiles(directory, random, count: 300);
            string large = Path.Combine(directory, "large");
            WriteLargeFile(large, random);
            OverwriteParts(large, random, parts: 200);
            if (round > 0)
            {
                OverwriteParts(Path.Combine(mountPoint, $"synced-{round - 1}", "large"), random, parts: 200);
            }
            await ExternalTool.RunAsync("sync", ["-f", mountPoint]);
            foreach (string file in Directory.EnumerateFiles(mountPoint, "*", SearchOption.AllDirectories).Where(f => f.Contains("/synced-", StringComparison.Ordinal)))
            {
                synced[Path.GetRelativePath(mountPoint, file)] = Hash(file);
            }

            using var stop = new CancellationTokenSource();
            int fsyncs = 0;
            Task writer = Task.Run(() => KeepWriting(Path.Combine(mountPoint, $"unsynced-{round}"), new Random(2260 + round), () => Interlocked.Increment(ref fsyncs), stop.Token));
            WriteLogState before = default;
            await Poll.UntilAsync(async () =>
            {
                Assert.False(writer.IsFaulted, $"the writer failed before the kill: {writer.Exception}");
                before = await WriteLogImage.ReadAsync(image);
                return Volatile.Read(ref fsyncs) >= 10 * (round + 1) && before.Records > 0;
            }, TimeSpan.FromSeconds(120), () => $"{10 * (round + 1)} fsyncs after the sync with records in the log: {fsyncs} fsyncs, {before}");
            await server.KillAsync();
            WriteLogState killed = await WriteLogImage.ReadAsync(image);
            output.WriteLine($"round {round}: killed after {fsyncs} fsyncs; {killed}");
            Assert.True(killed is { Dirty: true, Records: > 0 }, $"the kill should leave a dirty image with records in its log: {killed}");
            stop.Cancel();
            // The writer meets I/O errors once the server is gone; all that matters is that it stops.
            await writer.ContinueWith(_ => { }, TaskScheduler.Default).WaitAsync(TimeSpan.FromSeconds(60));
        }

        WriteLogState closed = await WriteLogImage.ReadAsync(image);
        Assert.True(closed is { Records: 0, Dirty: false }, $"after the last clean stop: {closed}");
    }

    private static void AssertSynced(string mountPoint, SortedDictionary<string, string> synced, int round)
    {
        foreach ((string file, string hash) in synced)
        {
            string path = Path.Combine(mountPoint, file);
            Assert.True(File.Exists(path), $"round {round}: {file}, synced, is missing");
            Assert.True(Hash(path) == hash, $"round {round}: {file} differs from what was synced");
        }
    }

    /// <summary>Files of 1 to 24 KiB, half of them text-like (their records compress), half random.</summary>
    private static void WriteSmallFiles(string directory, Random random, int count)
    {
        Directory.CreateDirectory(directory);
        for (int i = 0; i < count; i++)
        {
            File.WriteAllBytes(Path.Combine(directory, $"small-{i:D4}"), Content(random, random.Next(KiB, 24 * KiB)));
        }
    }

    private static void WriteLargeFile(string path, Random random)
    {
        using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
        for (int written = 0; written < LargeFileBytes; written += 256 * KiB)
        {
            file.Write(Content(random, 256 * KiB));
        }
    }

    /// <summary>Parts of 100 B to 16 KiB at any offset, as a database or a log file rewrites its pages.</summary>
    private static void OverwriteParts(string path, Random random, int parts)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        for (int i = 0; i < parts; i++)
        {
            byte[] part = Content(random, random.Next(100, 16 * KiB));
            file.Position = random.NextInt64(file.Length - part.Length);
            file.Write(part);
        }
    }

    /// <summary>Small files and overwrites of a large one, each fsynced, until stopped or until the device fails.</summary>
    private static void KeepWriting(string directory, Random random, Action fsynced, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(directory);
        string large = Path.Combine(directory, "large");
        WriteLargeFile(large, random);
        for (int i = 0; !cancellationToken.IsCancellationRequested; i++)
        {
            using (var file = new FileStream(Path.Combine(directory, $"small-{i:D5}"), FileMode.Create, FileAccess.Write))
            {
                file.Write(Content(random, random.Next(KiB, 24 * KiB)));
                file.Flush(flushToDisk: true);
            }
            using (var file = new FileStream(large, FileMode.Open, FileAccess.ReadWrite))
            {
                for (int k = 0; k < 8; k++)
                {
                    byte[] part = Content(random, random.Next(100, 16 * KiB));
                    file.Position = random.NextInt64(file.Length - part.Length);
                    file.Write(part);
                }
                file.Flush(flushToDisk: true);
            }
            fsynced();
        }
    }

    private static byte[] Content(Random random, int length)
    {
        byte[] bytes = new byte[length];
        if (random.Next(2) == 0)
        {
            random.NextBytes(bytes);
            return bytes;
        }
        for (int i = 0; i < length; i++)
        {
            bytes[i] = (byte)"the quick brown fox jumps over the lazy dog "[(i + random.Next(3)) % 44];
        }
        return bytes;
    }

    private static string Hash(string path)
    {
        using FileStream file = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(file));
    }
}
