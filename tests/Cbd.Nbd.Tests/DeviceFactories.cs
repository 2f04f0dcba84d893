using Cbd.Core.Engine;
using Cbd.Core.Format;
using Cbd.Core.Storage;

namespace Cbd.Nbd.Tests;

/// <summary>
/// The devices the real-client tests run against, by name, so that each test is a theory over all of them.
/// A new implementation joins every such test by adding its name to <see cref="Names"/> and a case to
/// <see cref="CreateAsync"/>.
/// </summary>
public static class DeviceFactories
{
    public const string Memory = "memory";
    public const string Compressed = "compressed";

    public static TheoryData<string> Names => new() { Memory, Compressed };

    /// <summary>Creates an empty writable device of <paramref name="size"/> bytes, owned by the caller.</summary>
    public static async ValueTask<IBlockDevice> CreateAsync(string name, long size)
    {
        switch (name)
        {
            case Memory:
                return new MemoryBlockDevice(size, blockSize: 65536);
            case Compressed:
                // The backing store is as large as the logical size, so even incompressible test data fits.
                var store = new MemoryBackingStore(size + (size >> 2));
                await ImageFormatter.FormatAsync(store, new FormatOptions { LogicalSize = size });
                return await CompressedDevice.OpenAsync(store, new DeviceOptions { FlushDelay = TimeSpan.FromMilliseconds(100) });
            default:
                throw new ArgumentOutOfRangeException(nameof(name), name, "unknown device factory");
        }
    }
}
