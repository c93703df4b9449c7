//! The agent's decisions, as plain functions over what the store holds: whether a command is
//! fresh, whether a start may run, and what status a ticket reports. No I/O here.

use contracts::exit_code;
use contracts::topology::CLOCK_SKEW_ALLOWANCE_MS;
use contracts::{ErrorKind, ErrorReply, ScriptState};
use serde::{Deserialize, Serialize};

/// A ticket's state in the store: `Claimed → Running → Complete(exit)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    /// Claimed, waiting for its isolation mutex.
    Claimed,
    Running,
    Complete,
}

/// The record stored per ticket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRecord {
    /// The agent process (agent id and instance) that claimed it; only it updates a live run.
    pub owner: String,
    pub agent_id: String,
    /// Digest of the script spec; empty for a cancel that arrived before any start.
    pub digest: String,
    pub state: RecordState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Set once completed: output cleaned, record kept so a late duplicate start cannot run.
    #[serde(default)]
    pub tombstone: bool,
    /// The command's `not_after`, so the tombstone outlives any copy still in a queue.
    #[serde(default)]
    pub not_after: Option<u64>,
    pub claimed_at: u64,
}

impl TicketRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("records always encode")
    }

    /// Reads a stored record. One that cannot be read is reported as a fatal completion rather
    /// than risking a run.
    pub fn from_json(raw: &str) -> TicketRecord {
        serde_json::from_str(raw).unwrap_or_else(|error| {
            tracing::error!(%error, "unreadable ticket record; reporting it as failed");
            TicketRecord {
                owner: String::new(),
                agent_id: String::new(),
                digest: String::new(),
                state: RecordState::Complete,
                exit_code: Some(exit_code::FATAL),
                tombstone: true,
                not_after: None,
                claimed_at: 0,
            }
        })
    }

    /// The same record, ended with `exit_code`.
    pub fn completed(&self, exit_code: i32) -> TicketRecord {
        TicketRecord { state: RecordState::Complete, exit_code: Some(exit_code), ..self.clone() }
    }
}

/// Refuses a command whose `not_after` has passed (allowing for clock skew).
pub fn check_fresh(not_after: Option<u64>, now_ms: u64) -> Result<(), ErrorReply> {
    match not_after {
        Some(deadline) if now_ms > deadline.saturating_add(CLOCK_SKEW_ALLOWANCE_MS) => Err(ErrorReply::new(
            ErrorKind::Expired,
            format!("command expired {} ms ago; nothing ran", now_ms - deadline),
        )),
        _ => Ok(()),
    }
}

/// A start for a ticket that already has a record: the same command is answered with the
/// ticket's status; a different one is a conflict. A cancel tombstone (no digest) matches any.
pub fn check_same_command(record: &TicketRecord, digest: &str) -> Result<(), ErrorReply> {
    if record.digest.is_empty() || record.digest == digest {
        return Ok(());
    }
    Err(ErrorReply::new(ErrorKind::TicketConflict, "ticket already used for a different script; nothing ran"))
}

/// The state and exit code a ticket reports. A live run whose owner's lease is gone was lost
/// with its agent: reported as unknown result, never run again.
pub fn reported_state(record: Option<&TicketRecord>, lease_alive: bool) -> (ScriptState, Option<i32>) {
    match record {
        None => (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)),
        Some(r) if r.state == RecordState::Complete => (ScriptState::Complete, r.exit_code),
        Some(_) if !lease_alive => (ScriptState::Complete, Some(exit_code::UNKNOWN_RESULT)),
        Some(r) if r.state == RecordState::Claimed => (ScriptState::Pending, None),
        Some(_) => (ScriptState::Running, None),
    }
}

/// Refuses a start first issued before the ticket store's data began (it came back empty since):
/// the ticket may have been claimed, and run, in the data that was lost.
pub fn check_issued_since(first_issued_at: Option<u64>, epoch_created_ms: u64) -> Result<(), ErrorReply> {
    match first_issued_at {
        Some(issued) if issued < epoch_created_ms => Err(ErrorReply::new(
            ErrorKind::StoreReset,
            format!(
                "the ticket store lost its data {} ms after this command was first issued; refusing rather than risk running it twice",
                epoch_created_ms - issued
            ),
        )),
        _ => Ok(()),
    }
}

/// How long a tombstone must live: past the command's `not_after` plus skew, and never less
/// than `minimum`.
pub fn tombstone_ttl_ms(not_after: Option<u64>, now_ms: u64, minimum_ms: u64) -> u64 {
    let past_deadline =
        not_after.map(|d| d.saturating_add(CLOCK_SKEW_ALLOWANCE_MS).saturating_sub(now_ms)).unwrap_or(0);
    past_deadline.max(minimum_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: RecordState) -> TicketRecord {
        TicketRecord {
            owner: "a/1".into(),
            agent_id: "a".into(),
            digest: "d".into(),
            state,
            exit_code: None,
            tombstone: false,
            not_after: None,
            claimed_at: 1,
        }
    }

    #[test]
    fn expired_commands_are_refused_after_the_skew_allowance() {
        assert!(check_fresh(None, 10).is_ok());
        assert!(check_fresh(Some(1_000), 1_000 + CLOCK_SKEW_ALLOWANCE_MS).is_ok());
        let err = check_fresh(Some(1_000), 1_001 + CLOCK_SKEW_ALLOWANCE_MS).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Expired);
    }

    #[test]
    fn a_different_command_under_a_known_ticket_conflicts() {
        let r = record(RecordState::Running);
        assert!(check_same_command(&r, "d").is_ok());
        assert_eq!(check_same_command(&r, "e").unwrap_err().kind, ErrorKind::TicketConflict);
        let cancelled = TicketRecord { digest: String::new(), ..r };
        assert!(check_same_command(&cancelled, "e").is_ok());
    }

    #[test]
    fn states_are_reported_from_record_and_lease() {
        assert_eq!(reported_state(None, false), (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)));
        assert_eq!(reported_state(Some(&record(RecordState::Claimed)), true), (ScriptState::Pending, None));
        assert_eq!(reported_state(Some(&record(RecordState::Running)), true), (ScriptState::Running, None));
        assert_eq!(
            reported_state(Some(&record(RecordState::Running)), false),
            (ScriptState::Complete, Some(exit_code::UNKNOWN_RESULT))
        );
        let done = record(RecordState::Running).completed(3);
        assert_eq!(reported_state(Some(&done), false), (ScriptState::Complete, Some(3)));
    }

    #[test]
    fn starts_from_before_the_store_lost_its_data_are_refused() {
        assert!(check_issued_since(Some(2_000), 1_000).is_ok());
        assert!(check_issued_since(None, 1_000).is_ok());
        let refused = check_issued_since(Some(999), 1_000).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::StoreReset);
        assert!(!refused.kind.is_transient());
    }

    #[test]
    fn tombstones_outlive_the_command_deadline() {
        assert_eq!(tombstone_ttl_ms(None, 0, 100), 100);
        assert_eq!(tombstone_ttl_ms(Some(1_000_000), 0, 100), 1_000_000 + CLOCK_SKEW_ALLOWANCE_MS);
        assert_eq!(tombstone_ttl_ms(Some(10), 1_000_000, 100), 100);
    }

    #[test]
    fn unreadable_records_report_failure_not_a_rerun() {
        let r = TicketRecord::from_json("{not json");
        assert_eq!(reported_state(Some(&r), false), (ScriptState::Complete, Some(exit_code::FATAL)));
    }
}
