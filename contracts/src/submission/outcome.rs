//! How a submission ended, and the process exit code that says so. A script's own exit code
//! (0 to 255) is passed through; outcomes that are not the script's own use 101 to 110.

use crate::submission::error::{CallError, ErrorClass};
use crate::wire::error::ErrorKind;
use crate::wire::exit_code;
use crate::wire::ticket::Ticket;
use serde::{Deserialize, Serialize};

/// Process exit codes for outcomes that are not the script's own.
pub mod exit {
    /// The broker could not be reached.
    pub const BROKER_UNREACHABLE: u8 = 101;
    /// No queue exists for the target: no such agent (or pool).
    pub const NO_SUCH_AGENT: u8 = 102;
    /// The agent refused the request (conflict, expired, invalid, unsupported).
    pub const REJECTED: u8 = 103;
    /// The agent does not know the ticket.
    pub const UNKNOWN_TICKET: u8 = 104;
    /// Nobody knows how the script ended (its agent was lost, or contact was lost for good).
    pub const OUTCOME_UNKNOWN: u8 = 105;
    /// The script was cancelled.
    pub const CANCELLED: u8 = 106;
    /// The script ran past its `--timeout` and was killed.
    pub const EXECUTION_TIMEOUT: u8 = 107;
    /// The script gave up waiting for its isolation mutex.
    pub const MUTEX_TIMEOUT: u8 = 108;
    /// The agent could not run the script (shell did not start, agent failure).
    pub const AGENT_FAILED: u8 = 109;
    /// The request was sent but no answer came before the retry deadline.
    pub const NO_ANSWER: u8 = 110;
    /// A fan-out stopped by its error budget, when no started target's own code says so.
    pub const NOT_STARTED: u8 = 111;
    /// Interrupted (Ctrl-C) before the script was sent: nothing ran.
    pub const NOT_SENT: u8 = 112;
    /// The script passed its memory limit (`--memory-max`, or the agent's cap) and was killed.
    pub const MEMORY_LIMIT: u8 = 113;
    /// `status --follow` left on Ctrl-C; the script goes on (128 + SIGINT, as shells report).
    pub const DETACHED: u8 = 130;
    /// Standard output was closed (`dispatcher ... --json | head -1`): left quietly, as a
    /// program killed by SIGPIPE (128 + 13).
    pub const STDOUT_CLOSED: u8 = 141;
    /// Bad usage or configuration (clap uses 2 as well).
    pub const USAGE: u8 = 2;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeKind {
    /// The script ran to its own end (whatever its exit code).
    Completed,
    Cancelled,
    /// Nobody knows how the script ended.
    Unknown,
    /// The script did not run, or did not run to its end, for a reason that is not its own.
    Failed,
}

impl OutcomeKind {
    /// Its name, as JSON, the journal's index and metrics labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Unknown => "unknown",
            OutcomeKind::Failed => "failed",
        }
    }
}

/// The end of one submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub ticket: Option<Ticket>,
    pub target: String,
    pub outcome: OutcomeKind,
    /// The script's exit code, or the agent's negative code for other outcomes.
    pub exit_code: Option<i32>,
    /// A one-line reason for anything but a script's own exit.
    pub error: Option<String>,
    #[serde(skip)]
    pub process_exit: u8,
}

impl Outcome {
    /// The outcome of a script that reached `Complete` with `code`.
    pub fn from_exit_code(ticket: Ticket, target: &str, code: i32) -> Outcome {
        let (outcome, process_exit) = match code {
            0..=255 => (OutcomeKind::Completed, code as u8),
            c if c > 255 => (OutcomeKind::Completed, (c & 0xff) as u8),
            exit_code::CANCELLED => (OutcomeKind::Cancelled, exit::CANCELLED),
            exit_code::UNKNOWN_RESULT => (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN),
            exit_code::UNKNOWN_TICKET => (OutcomeKind::Failed, exit::UNKNOWN_TICKET),
            exit_code::EXECUTION_TIMEOUT => (OutcomeKind::Failed, exit::EXECUTION_TIMEOUT),
            exit_code::MUTEX_TIMEOUT => (OutcomeKind::Failed, exit::MUTEX_TIMEOUT),
            exit_code::MEMORY_LIMIT => (OutcomeKind::Failed, exit::MEMORY_LIMIT),
            _ => (OutcomeKind::Failed, exit::AGENT_FAILED),
        };
        let error = exit_code::describe(code).map(str::to_owned);
        Outcome { ticket: Some(ticket), target: target.to_owned(), outcome, exit_code: Some(code), error, process_exit }
    }

    /// The outcome of a request that failed for good. `started` says whether the script may be
    /// running (then its outcome is unknown, not failed).
    pub fn from_error(
        ticket: Option<Ticket>,
        target: &str,
        error: &impl CallError,
        message: String,
        started: bool,
    ) -> Outcome {
        let (outcome, process_exit) = match error.class() {
            _ if started => (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN),
            ErrorClass::Unreachable => (OutcomeKind::Failed, exit::BROKER_UNREACHABLE),
            ErrorClass::NoSuchAgent => (OutcomeKind::Failed, exit::NO_SUCH_AGENT),
            ErrorClass::Cancelled => (OutcomeKind::Cancelled, exit::CANCELLED),
            ErrorClass::Usage => (OutcomeKind::Failed, exit::USAGE),
            ErrorClass::Agent(kind) if !kind.is_transient() || kind == ErrorKind::Unsupported => {
                (OutcomeKind::Failed, exit::REJECTED)
            }
            _ => (OutcomeKind::Failed, exit::NO_ANSWER),
        };
        Outcome { ticket, target: target.to_owned(), outcome, exit_code: None, error: Some(message), process_exit }
    }

    /// A ticket the agent answered for (claimed, running or ended) that its ticket store no
    /// longer knows: the store lost its data since (a restart without persistence, a failover).
    /// The script ran, or may have; how it ended is unknown. Never "unknown ticket", which after
    /// a cancel reads as "nothing ran".
    pub fn lost_by_store(ticket: Ticket, target: &str) -> Outcome {
        let error = format!(
            "the agent's ticket store lost ticket {ticket} after the agent had answered for it (it lost its data); the script's outcome is unknown"
        );
        Outcome {
            ticket: Some(ticket),
            target: target.to_owned(),
            outcome: OutcomeKind::Unknown,
            exit_code: None,
            error: Some(error),
            process_exit: exit::OUTCOME_UNKNOWN,
        }
    }

    /// Interrupted before any start could reach the broker: nothing ran, nothing will.
    pub fn not_sent(ticket: Option<Ticket>, target: &str) -> Outcome {
        Outcome {
            ticket,
            target: target.to_owned(),
            outcome: OutcomeKind::Cancelled,
            exit_code: None,
            error: Some(NOT_SENT_MESSAGE.to_owned()),
            process_exit: exit::NOT_SENT,
        }
    }

    /// How a cancel ended, told from the agent's answer. A ticket the agent does not know had
    /// its start still on the way when this dispatcher sent one (`start_sent`): the cancel left
    /// a tombstone, so that start never runs, and the script counts as cancelled. Otherwise it
    /// is an unknown ticket.
    pub fn after_cancel(self, start_sent: bool) -> Outcome {
        if !start_sent || self.exit_code != Some(exit_code::UNKNOWN_TICKET) {
            return self;
        }
        Outcome {
            outcome: OutcomeKind::Cancelled,
            exit_code: Some(exit_code::CANCELLED),
            error: Some("cancelled before the agent started it; nothing ran".into()),
            process_exit: exit::CANCELLED,
            ..self
        }
    }
}

/// What the user is told when Ctrl-C came before any start reached the broker.
pub const NOT_SENT_MESSAGE: &str = "interrupted before the script was sent; nothing ran";
