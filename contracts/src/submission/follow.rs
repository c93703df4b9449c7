//! Following a script's log: each line passed on once, in order, and the lines the agent's
//! store lost named.

use crate::wire::status::{LogLine, ScriptStatus};
use crate::wire::ticket::Ticket;

/// Following a script's log: lines are passed on once each, in sequence order, with no gap.
/// Replies can repeat lines (a retried status request) or, in principle, skip ahead; a line is
/// only passed on when every line before it has been.
#[derive(Clone, Debug)]
pub struct LogFollower {
    /// The sequence number of the next line to pass on.
    next: u64,
}

impl LogFollower {
    /// Starts after `last_seen` (0 to get every line).
    pub fn after(last_seen: u64) -> Self {
        LogFollower { next: last_seen + 1 }
    }

    /// The last sequence number passed on; what to ask for next.
    pub fn last_seen(&self) -> u64 {
        self.next - 1
    }

    /// The new lines of a reply, in order; repeats are dropped, and lines after a gap are left
    /// for the next request to bring again.
    pub fn accept<'a>(&mut self, status: &'a ScriptStatus) -> Vec<&'a LogLine> {
        let mut new = Vec::new();
        for line in &status.logs {
            if line.seq < self.next {
                continue;
            }
            if line.seq > self.next {
                break;
            }
            new.push(line);
            self.next += 1;
        }
        new
    }

    /// Whether a completed status leaves nothing more to fetch.
    pub fn has_everything(&self, status: &ScriptStatus) -> bool {
        status.is_complete() && status.next_log_sequence <= self.next
    }
}

/// What the user is told of lines `from` to `to` that the agent's store lost (before later
/// lines, or the script's last ones).
pub fn lost_lines_notice(ticket: &Ticket, from: u64, to: u64) -> String {
    let (lines, were) =
        if from == to { (format!("line {from}"), "was") } else { (format!("lines {from} to {to}"), "were") };
    format!("{lines} of ticket {ticket} {were} lost by the agent's ticket store (it lost recent writes)")
}
