namespace Cbd.Cli;

/// <summary>Library messages as a user should read them.</summary>
public static class CommandText
{
    /// <summary>The message without the " (Parameter 'name')" that names a C# parameter the user never saw.</summary>
    public static string WithoutParameter(Exception ex)
    {
        if (ex is ArgumentException { ParamName: { } name } argument)
        {
            string suffix = $" (Parameter '{name}')";
            if (argument.Message.EndsWith(suffix, StringComparison.Ordinal))
            {
                return argument.Message[..^suffix.Length];
            }
        }
        return ex.Message;
    }
}
