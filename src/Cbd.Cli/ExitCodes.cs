namespace Cbd.Cli;

/// <summary>
/// Exit codes, as docs/CLI.md lists them. <c>cbd check</c> uses fsck's codes instead, so that scripts
/// written for fsck read it the same way.
/// </summary>
public static class ExitCodes
{
    public const int Success = 0;

    /// <summary>The operation failed or was refused: a missing file, a bad image, an I/O error, a size the image cannot take.</summary>
    public const int Failed = 1;

    /// <summary>The command line was not understood: an unknown option, a bad size, a missing argument.</summary>
    public const int Usage = 2;

    /// <summary>check: errors were found and corrected.</summary>
    public const int CheckCorrected = 1;

    /// <summary>check: errors were found and are still there (or the header is unreadable and cannot be repaired).</summary>
    public const int CheckErrorsLeft = 4;

    /// <summary>check: the check could not be done (no such file, not a cbd image, an I/O error).</summary>
    public const int CheckOperational = 8;

    /// <summary>check: the command line was not understood.</summary>
    public const int CheckUsage = 16;

    public const string GeneralHelp = "Exit codes: 0 done; 1 failed or refused (a message on stderr says why); 2 the command line was not understood.";
}
