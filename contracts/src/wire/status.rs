//! [`ScriptStatus`]: what every script request is answered with.

use crate::wire::ticket::Ticket;
use serde::{Deserialize, Serialize};

/// Where a script is in its life. Unknown states from newer agents read as [`ScriptState::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScriptState {
    /// Claimed, waiting to start (for instance for its isolation mutex).
    Pending,
    Running,
    /// Ended; `exit_code` says how.
    Complete,
    #[serde(other)]
    Unknown,
}

/// Which output a log line came from. `Agent` lines are the agent's own notes in the script's log
/// (for instance "waiting for mutex").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
    Agent,
    #[serde(other)]
    Unknown,
}

impl LogStream {
    /// Its name, as `--json` and the service's events spell it.
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Agent => "agent",
            LogStream::Unknown => "unknown",
        }
    }
}

/// How the agent's notes about output it did not keep (past its `--max-output`) begin, so a
/// dispatcher can tell the user the output was truncated.
pub const OUTPUT_TRUNCATED: &str = "output truncated";

/// One line of output. Sequence numbers start at 1 and never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub stream: LogStream,
    pub text: String,
    /// Unix milliseconds when the agent read the line.
    pub at: u64,
}

/// The answer to start, status, cancel and complete requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptStatus {
    pub ticket: Ticket,
    pub state: ScriptState,
    /// Set once `state` is `Complete`: the script's own code, or one of [`crate::wire::exit_code`].
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Lines after the request's `last_log_sequence`, in order.
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// The sequence number the next unseen line will have; ask with `last_log_sequence` one less.
    pub next_log_sequence: u64,
    /// Set once `state` is `Complete`, by agents that record it: how many lines the script wrote
    /// (its last sequence number). Lines up to it that no reply brings were lost by the agent's
    /// ticket store after it stored them (a failover, a restart without persistence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines_written: Option<u64>,
}

impl ScriptStatus {
    /// A completed status with no logs, for outcomes decided without running anything.
    pub fn completed(ticket: Ticket, exit_code: i32, next_log_sequence: u64) -> Self {
        ScriptStatus {
            ticket,
            state: ScriptState::Complete,
            exit_code: Some(exit_code),
            logs: Vec::new(),
            next_log_sequence,
            lines_written: None,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.state == ScriptState::Complete
    }

    /// The highest sequence number the receiver has now seen.
    pub fn last_log_sequence(&self) -> u64 {
        self.next_log_sequence.saturating_sub(1)
    }
}
