using System.CommandLine.Parsing;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Cbd.Cli.Serve;

/// <summary>A group, by name and id, as <c>--socket-group</c> names it.</summary>
public sealed record UnixGroup(string Name, int Id);

/// <summary>Parsers of <c>--socket-mode</c> and <c>--socket-group</c>: who may connect to the Unix socket, and so use the device.</summary>
public static partial class SocketAccess
{
    /// <summary>Owner only: anyone who can connect can read and write the whole device.</summary>
    public const UnixFileMode DefaultMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>The default with <c>--socket-group</c>: the owner and that group.</summary>
    public const UnixFileMode GroupMode = DefaultMode | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;

    /// <summary>Parses an octal mode, 3 or 4 digits (660, 0660), with no set-id or sticky bits.</summary>
    public static bool TryParseMode(string text, out UnixFileMode mode, out string error)
    {
        mode = 0;
        error = "";
        string digits = text.Length == 4 && text[0] == '0' ? text[1..] : text;
        if (digits.Length != 3 || !digits.All(c => c is >= '0' and <= '7'))
        {
            error = $"invalid mode '{text}': expected 3 octal digits, e.g. 600 (owner only) or 660 (owner and group)";
            return false;
        }
        mode = (UnixFileMode)Convert.ToInt32(digits, 8);
        return true;
    }

    public static UnixFileMode? ParseModeArgument(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (TryParseMode(text, out UnixFileMode mode, out string error))
        {
            return mode;
        }
        result.AddError($"--socket-mode: {error}");
        return null;
    }

    /// <summary>A group name known to the system (its group database, through NSS) or a numeric group id.</summary>
    public static UnixGroup? ParseGroupArgument(ArgumentResult result)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (text.Length > 0 && text.All(char.IsAsciiDigit))
        {
            if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int id))
            {
                return new UnixGroup(text, id);
            }
            result.AddError($"--socket-group: group id {text} is out of range");
            return null;
        }
        if (text.Length > 0 && !text.Contains('\0') && GetGroupId(text) is { } found)
        {
            return new UnixGroup(text, found);
        }
        result.AddError($"--socket-group: no group named '{text}' (give a group name from /etc/group or a numeric group id)");
        return null;
    }

    /// <summary>The id of a group by name, from getgrnam(3) so that groups from LDAP or other NSS sources count too.</summary>
    private static int? GetGroupId(string name)
    {
        IntPtr group = GetGroupByName(name);
        // struct group { char *gr_name; char *gr_passwd; gid_t gr_gid; char **gr_mem; }: gr_gid follows two pointers.
        return group == IntPtr.Zero ? null : Marshal.ReadInt32(group, 2 * IntPtr.Size);
    }

    [LibraryImport("libc", EntryPoint = "getgrnam", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr GetGroupByName(string name);
}
