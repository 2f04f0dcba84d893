namespace Cbd.Core.Maintenance;

/// <summary>
/// A maintenance operation declined to start, before writing anything, because it cannot be done on
/// this image as asked; the message says why and what limit or what amount of data is in the way.
/// </summary>
public sealed class MaintenanceRefusedException(string message) : InvalidOperationException(message);
