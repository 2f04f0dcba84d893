namespace Cbd.Cli;

/// <summary>A failure to report as one line on stderr, without a stack trace; the message names the file and the problem.</summary>
public sealed class CliException(string message) : Exception(message);
