//! What really happened to every ticket, known only to the simulation, against which the
//! invariants are checked as each thing happens.

use crate::dispatcher::{Outcome, Sub};
use contracts::wire::exit_code;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
struct Truth {
    /// Agents whose process started the script.
    spawns: Vec<String>,
    /// Lines written.
    lines: u64,
    /// The script's own end, if it had one.
    exit: Option<i32>,
    cancelled: bool,
    /// A `CompleteScript` turned it into a tombstone.
    completed: bool,
}

#[derive(Default)]
pub struct Oracle {
    tickets: BTreeMap<String, Truth>,
}

impl Oracle {
    fn truth(&mut self, ticket: &str) -> &mut Truth {
        self.tickets.entry(ticket.to_lowercase()).or_default()
    }

    pub fn lines_of(&self, ticket: &str) -> u64 {
        self.tickets.get(&ticket.to_lowercase()).map_or(0, |t| t.lines)
    }

    /// The script's process starts on `agent`: every invariant about starting is checked here.
    pub fn spawned(&mut self, ticket: &str, agent: &str, forged: bool, subs: &[Sub]) -> Vec<String> {
        let mut problems = Vec::new();
        if forged {
            problems.push(format!("an unsigned, untrusted or misaddressed command ran {ticket} on {agent}"));
        }
        let truth = self.truth(ticket);
        if !truth.spawns.is_empty() {
            problems.push(format!("{ticket} runs twice: on {} and now on {agent}", truth.spawns.join(", ")));
        }
        if truth.completed {
            problems.push(format!("a late duplicate start ran the completed ticket {ticket} on {agent}"));
        }
        truth.spawns.push(agent.to_owned());
        for sub in subs.iter().filter(|s| s.ticket.eq_ignore_ascii_case(ticket)) {
            if sub.interrupted_before_publish {
                problems.push(format!("{ticket} started on {agent} after an interrupt that came before its publish"));
            }
            if let Some(outcome) = sub.outcome.as_ref().filter(|o| o.says_nothing_ran()) {
                problems.push(format!("{ticket} started on {agent} after its user was told {outcome:?}"));
            }
        }
        problems
    }

    pub fn line(&mut self, ticket: &str, seq: u64) {
        self.truth(ticket).lines = seq;
    }

    pub fn ended(&mut self, ticket: &str, exit: i32) {
        let truth = self.truth(ticket);
        if exit == exit_code::CANCELLED {
            truth.cancelled = true;
        } else {
            truth.exit = Some(exit);
        }
    }

    pub fn completed(&mut self, ticket: &str) {
        self.truth(ticket).completed = true;
    }

    /// Whether what the user was told is true, given `seen` lines shown.
    pub fn check_outcome(&mut self, ticket: &str, outcome: &Outcome, seen: u64) -> Vec<String> {
        let truth = self.truth(ticket).clone();
        let mut problems = Vec::new();
        if outcome.says_nothing_ran() && !truth.spawns.is_empty() {
            problems.push(format!("told {outcome:?}, but {ticket} ran on {}", truth.spawns.join(", ")));
        }
        match *outcome {
            Outcome::Exit(code) if code >= 0 => {
                if truth.exit != Some(code) || truth.spawns.len() != 1 {
                    problems
                        .push(format!("told exit {code}, but {ticket} ran {:?} ending {:?}", truth.spawns, truth.exit));
                }
                if seen != truth.lines {
                    problems.push(format!("told exit {code} after {seen} lines, but {ticket} wrote {}", truth.lines));
                }
            }
            Outcome::Exit(exit_code::CANCELLED) if truth.exit.is_some() => {
                problems.push(format!("told cancelled, but {ticket} ended by itself with {:?}", truth.exit));
            }
            _ => {}
        }
        problems
    }
}
