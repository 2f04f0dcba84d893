using System.Collections.Concurrent;

namespace Cbd.Core.Engine;

/// <summary>
/// The engine's findings about damaged metadata, one line each to <see cref="DeviceOptions.Log"/> (the
/// server's log): each damaged lblk is named once per session, and at most <see cref="MaxDamageLines"/> of
/// them (docs/FORMAT.md, "Damage").
/// </summary>
internal sealed class DamageLog(Action<string>? log)
{
    private const int MaxDamageLines = 100;

    /// <summary>lblks already named in the log as damaged, so that each is named once.</summary>
    private readonly ConcurrentDictionary<ulong, byte> _damaged = new();

    /// <summary>Names a damaged lblk in the log, once per session, and returns the error its reads get.</summary>
    public LblkCorruptException Damaged(ulong lblk, string message)
    {
        ReportDamaged(lblk, $"lblk {lblk}: {message}");
        return new LblkCorruptException((long)lblk, message);
    }

    /// <summary>Names a damaged lblk in the log, once per session.</summary>
    public void ReportDamaged(ulong lblk, string line)
    {
        if (!_damaged.TryAdd(lblk, 0))
            return;
        int count = _damaged.Count;
        if (count <= MaxDamageLines)
            Log(line.StartsWith($"lblk {lblk}:", StringComparison.Ordinal) ? line : $"lblk {lblk}: {line}");
        else if (count == MaxDamageLines + 1)
            Log($"more than {MaxDamageLines} damaged lblks; no more are named (cbd check lists them all)");
    }

    /// <summary>A validation message without its leading "lblk N: ", for a line that names the lblk already.</summary>
    public static string WithoutLblk(string message)
    {
        int colon = message.IndexOf(": ", StringComparison.Ordinal);
        return message.StartsWith("lblk ", StringComparison.Ordinal) && colon > 0 ? message[(colon + 2)..] : message;
    }

    /// <summary>Writes one line to <see cref="DeviceOptions.Log"/>; a failing log is ignored.</summary>
    public void Log(string line)
    {
        try
        {
            log?.Invoke(line);
        }
        catch (Exception)
        {
            // A failing log must not turn damage to one lblk into a failure of the device.
        }
    }
}
