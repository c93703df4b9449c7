//! Following a script's log: lines are passed on once each, in sequence order, with no gap.
//! Replies can repeat lines (a retried status request) or, in principle, skip ahead; a line is
//! only passed on when every line before it has been.

use contracts::{LogLine, ScriptStatus};

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

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::{LogStream, ScriptState, Ticket};
    use proptest::prelude::*;

    fn status(seqs: &[u64], next: u64, state: ScriptState) -> ScriptStatus {
        ScriptStatus {
            ticket: Ticket::parse("t").unwrap(),
            state,
            exit_code: None,
            logs: seqs
                .iter()
                .map(|&seq| LogLine { seq, stream: LogStream::Stdout, text: seq.to_string(), at: 0 })
                .collect(),
            next_log_sequence: next,
        }
    }

    #[test]
    fn repeats_are_dropped_and_gaps_wait() {
        let mut f = LogFollower::after(0);
        assert_eq!(f.accept(&status(&[1, 2], 3, ScriptState::Running)).len(), 2);
        assert_eq!(
            f.accept(&status(&[2, 3], 4, ScriptState::Running)).iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![3]
        );
        assert!(f.accept(&status(&[5], 6, ScriptState::Complete)).is_empty());
        assert!(!f.has_everything(&status(&[5], 6, ScriptState::Complete)));
        assert_eq!(f.last_seen(), 3);
    }

    proptest! {
        /// Whatever overlapping, repeated or out-of-range windows the replies carry, every line
        /// is passed on exactly once and in order.
        #[test]
        fn every_line_once_in_order(total in 0u64..200, windows in proptest::collection::vec((0u64..220, 0u64..40), 1..60)) {
            let mut f = LogFollower::after(0);
            let mut seen = Vec::new();
            for (start, len) in windows {
                let seqs: Vec<u64> = (start.max(1)..(start + len).min(total + 1)).collect();
                seen.extend(f.accept(&status(&seqs, total + 1, ScriptState::Running)).iter().map(|l| l.seq));
            }
            // Then the agent answers from where the follower stands, as it always does.
            while f.last_seen() < total {
                let seqs: Vec<u64> = (f.last_seen() + 1..=total).collect();
                seen.extend(f.accept(&status(&seqs, total + 1, ScriptState::Complete)).iter().map(|l| l.seq));
            }
            prop_assert_eq!(seen, (1..=total).collect::<Vec<_>>());
            prop_assert!(f.has_everything(&status(&[], total + 1, ScriptState::Complete)));
        }
    }
}
