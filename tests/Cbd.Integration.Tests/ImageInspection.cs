using Cbd.Core.Engine;
using Cbd.Core.Storage;

namespace Cbd.Integration.Tests;

/// <summary>Looks at a closed image through Cbd.Core, read-only, the way <c>cbd serve</c> opens it.</summary>
public static class ImageInspection
{
    /// <summary>
    /// True when opening finds the image not closed clean and rebuilds its allocation state (the server's recovery
    /// path, which <c>cbd serve</c> does not report). Nothing is written to the image.
    /// </summary>
    public static async Task<bool> NeedsRecoveryAsync(string image)
    {
        await using CompressedDevice device = await CompressedDevice.OpenAsync(
            FileBackingStore.Open(image, writable: false), new DeviceOptions { ReadOnly = true });
        return device.Recovered;
    }
}
