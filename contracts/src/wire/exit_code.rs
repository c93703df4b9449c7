//! Exit codes on the wire for outcomes that are not the script's own. They are negative, as in
//! Tentacle, so they can never be mistaken for a script's exit status (0 to 255).

/// The agent failed in a way it could not attribute to the script.
pub const FATAL: i32 = -41;
/// The shell (or the script file) could not be started.
pub const SHELL_NOT_STARTED: i32 = -42;
/// The script was cancelled; its whole process group was killed.
pub const CANCELLED: i32 = -43;
/// The script waited past its isolation mutex timeout and never ran.
pub const MUTEX_TIMEOUT: i32 = -44;
/// The agent does not know the ticket (never started, or forgotten).
pub const UNKNOWN_TICKET: i32 = -45;
/// The agent that ran the script was lost, so nobody knows how it ended.
pub const UNKNOWN_RESULT: i32 = -46;
/// The script ran past its execution timeout; its whole process group was killed.
pub const EXECUTION_TIMEOUT: i32 = -47;
/// The script passed its memory limit and was killed.
pub const MEMORY_LIMIT: i32 = -48;

/// A short description of a non-script exit code, or `None` for a script's own code.
pub fn describe(code: i32) -> Option<&'static str> {
    Some(match code {
        FATAL => "the agent failed to run the script",
        SHELL_NOT_STARTED => "the shell could not be started",
        CANCELLED => "the script was cancelled",
        MUTEX_TIMEOUT => "the script timed out waiting for its isolation mutex",
        UNKNOWN_TICKET => "the agent does not know this ticket",
        UNKNOWN_RESULT => "the agent running the script was lost; its result is unknown",
        EXECUTION_TIMEOUT => "the script ran past its execution timeout and was killed",
        MEMORY_LIMIT => "the script passed its memory limit and was killed",
        _ => return None,
    })
}
