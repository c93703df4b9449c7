//! The agent's decisions, as plain functions over what the store holds: whether a command is
//! fresh, whether a start may run, and what status a ticket reports. No I/O here.

use contracts::exit_code;
use contracts::topology::CLOCK_SKEW_ALLOWANCE_MS;
use contracts::{ErrorKind, ErrorReply, ScriptState};
use serde::Deserialize;

/// A ticket's state in the store: `Claimed → Running → Complete(exit)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum RecordState {
    /// Claimed, waiting for its isolation mutex.
    Claimed,
    Running,
    Complete,
}

/// The record stored per ticket. Earlier versions stored it as JSON of these fields, which is
/// still read ([`TicketRecord::decode`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
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

/// Version tag of the compact record encoding; records without it are the JSON of earlier
/// versions, still read.
const RECORD_V2: &str = "2";

/// Hex digits of the script digest a tombstone keeps: 128 bits tell a different script from
/// the same one as surely as the whole digest, in half the bytes.
pub const TOMBSTONE_DIGEST_LEN: usize = 32;

impl TicketRecord {
    /// The stored form: `2|<state>|<exit>|<not_after>|<claimed_at>|<digest>|<agent id>|<owner>`,
    /// and for a tombstone only `2|t|<exit>|<digest prefix>`, since a late copy of the command
    /// needs nothing else (its outcome, and whether it is the same script). Small enough for
    /// Redis to store a tombstone inline with its object (at most 44 bytes). No field can hold
    /// `|`: ids and digests are `[A-Za-z0-9._/-]`.
    pub fn encode(&self) -> String {
        let exit = self.exit_code.map(|c| c.to_string()).unwrap_or_default();
        if self.tombstone {
            let digest = &self.digest[..self.digest.len().min(TOMBSTONE_DIGEST_LEN)];
            return format!("{RECORD_V2}|t|{exit}|{digest}");
        }
        let state = match self.state {
            RecordState::Claimed => "c",
            RecordState::Running => "r",
            RecordState::Complete => "d",
        };
        let not_after = self.not_after.map(|n| n.to_string()).unwrap_or_default();
        let (claimed_at, digest, agent_id, owner) = (self.claimed_at, &self.digest, &self.agent_id, &self.owner);
        debug_assert!(![digest, agent_id, owner].iter().any(|f| f.contains('|')), "record fields never hold '|'");
        format!("{RECORD_V2}|{state}|{exit}|{not_after}|{claimed_at}|{digest}|{agent_id}|{owner}")
    }

    /// Reads a stored record, in this version's encoding or the JSON of earlier ones. One that
    /// cannot be read is reported as a fatal completion rather than risking a run.
    pub fn decode(raw: &str) -> TicketRecord {
        let decoded = if raw.starts_with('{') {
            serde_json::from_str(raw).map_err(|e| e.to_string())
        } else {
            Self::decode_v2(raw)
        };
        decoded.unwrap_or_else(|error| {
            tracing::error!(%error, "unreadable ticket record; reporting it as failed");
            TicketRecord::tombstone(String::new(), Some(exit_code::FATAL))
        })
    }

    fn decode_v2(raw: &str) -> Result<TicketRecord, String> {
        let fields: Vec<&str> = raw.split('|').collect();
        let number = |s: &str| -> Result<Option<i64>, String> {
            (!s.is_empty()).then(|| s.parse::<i64>().map_err(|e| format!("{s:?}: {e}"))).transpose()
        };
        let exit_code = |s: &str| number(s)?.map(i32::try_from).transpose().map_err(|e| e.to_string());
        match fields.as_slice() {
            [RECORD_V2, "t", exit, digest] => Ok(TicketRecord::tombstone((*digest).to_owned(), exit_code(exit)?)),
            [RECORD_V2, state, exit, not_after, claimed_at, digest, agent_id, owner] => Ok(TicketRecord {
                owner: (*owner).to_owned(),
                agent_id: (*agent_id).to_owned(),
                digest: (*digest).to_owned(),
                state: match *state {
                    "c" => RecordState::Claimed,
                    "r" => RecordState::Running,
                    "d" => RecordState::Complete,
                    other => return Err(format!("unknown record state {other:?}")),
                },
                exit_code: exit_code(exit)?,
                tombstone: false,
                not_after: number(not_after)?.map(|n| n as u64),
                claimed_at: number(claimed_at)?.unwrap_or(0) as u64,
            }),
            _ => Err(format!("not a ticket record: {} fields", fields.len())),
        }
    }

    /// A completed ticket's tombstone as it reads back from the store: its outcome and the
    /// script's digest (a prefix of it once stored), nothing about the run.
    fn tombstone(digest: String, exit_code: Option<i32>) -> TicketRecord {
        TicketRecord {
            owner: String::new(),
            agent_id: String::new(),
            digest,
            state: RecordState::Complete,
            exit_code,
            tombstone: true,
            not_after: None,
            claimed_at: 0,
        }
    }

    /// The tombstone a cancel leaves for a ticket it found no record of: never started here.
    pub fn cancelled_before_start(&self) -> bool {
        self.tombstone && self.digest.is_empty() && self.exit_code == Some(exit_code::CANCELLED)
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
    let tombstone_prefix = record.tombstone && record.digest.len() == TOMBSTONE_DIGEST_LEN;
    if record.digest.is_empty() || record.digest == digest || (tombstone_prefix && digest.starts_with(&record.digest)) {
        return Ok(());
    }
    Err(ErrorReply::new(ErrorKind::TicketConflict, "ticket already used for a different script; nothing ran"))
}

/// Whether a start that found `record` should confirm and start it: only the process that
/// claimed it (`owner`), and only while that process still holds the claim as unconfirmed (not
/// started). Any other finder answers with the status: a claim is started by its owner or never.
pub fn claim_awaits_confirmation(record: &TicketRecord, owner: &str, unconfirmed_here: bool) -> bool {
    unconfirmed_here && record.owner == owner && record.state != RecordState::Complete && !record.tombstone
}

/// The state and exit code a ticket reports. A live run whose owner's lease is gone was lost
/// with its agent: reported as unknown result, never run again.
pub fn reported_state(record: Option<&TicketRecord>, lease_alive: bool) -> (ScriptState, Option<i32>) {
    match record {
        None => (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)),
        // Only a cancel ever came for it: still unknown to status and cancel (its tombstone
        // only makes a late start answer cancelled instead of running).
        Some(r) if r.cancelled_before_start() => (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)),
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

/// How long a completed ticket's tombstone must live: until no copy of its command can be
/// accepted any more, that is past its `not_after` (the same for every repeat of a start) plus
/// the skew allowance, counted twice because the agent that sets the expiry and the one that
/// checks a late copy may each be off by it. After that a copy is refused as expired without
/// the store being asked. A command without a deadline (legacy script v1, whose tickets the
/// agent makes) keeps its tombstone `without_deadline_ms`.
pub fn tombstone_ttl_ms(not_after: Option<u64>, now_ms: u64, without_deadline_ms: u64) -> u64 {
    match not_after {
        Some(deadline) => deadline.saturating_add(2 * CLOCK_SKEW_ALLOWANCE_MS + 1).saturating_sub(now_ms).max(1),
        None => without_deadline_ms,
    }
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
        let cancel_first = TicketRecord::tombstone(String::new(), Some(exit_code::CANCELLED));
        assert!(cancel_first.cancelled_before_start() && !done.cancelled_before_start());
        assert_eq!(
            reported_state(Some(&cancel_first), false),
            (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET))
        );
        let cancelled_run =
            TicketRecord { tombstone: true, ..record(RecordState::Running).completed(exit_code::CANCELLED) };
        assert_eq!(reported_state(Some(&cancelled_run), false), (ScriptState::Complete, Some(exit_code::CANCELLED)));
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
    fn tombstones_live_until_no_copy_of_the_command_can_be_accepted() {
        let skew = CLOCK_SKEW_ALLOWANCE_MS;
        assert_eq!(tombstone_ttl_ms(None, 0, 100), 100);
        assert_eq!(tombstone_ttl_ms(Some(1_000_000), 0, 3_600_000), 1_000_000 + 2 * skew + 1);
        assert_eq!(tombstone_ttl_ms(Some(150_000), 10_000, 3_600_000), 140_000 + 2 * skew + 1);
        assert_eq!(tombstone_ttl_ms(Some(10), 1_000_000, 100), 1);
        // Exactly when the command stops being fresh anywhere, the tombstone may go.
        let deadline = 50_000;
        let gone_at = 1_000 + tombstone_ttl_ms(Some(deadline), 1_000, 0);
        assert!(check_fresh(Some(deadline), gone_at - skew).is_err());
    }

    fn digest() -> String {
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into()
    }

    #[test]
    fn live_records_round_trip_through_their_encoding() {
        let claimed = TicketRecord {
            owner: "web-01/0b6c1e2a-1111-4222-8333-944455556666".into(),
            agent_id: "web-01".into(),
            digest: digest(),
            not_after: Some(1_790_000_000_000),
            claimed_at: 1_789_999_999_000,
            ..record(RecordState::Claimed)
        };
        for r in
            [claimed.clone(), TicketRecord { state: RecordState::Running, ..claimed.clone() }, claimed.completed(-7)]
        {
            assert_eq!(TicketRecord::decode(&r.encode()), r);
        }
        let no_deadline = TicketRecord { not_after: None, ..claimed };
        assert_eq!(TicketRecord::decode(&no_deadline.encode()), no_deadline);
    }

    #[test]
    fn a_tombstone_keeps_its_outcome_and_tells_a_different_script_apart_in_few_bytes() {
        let run = TicketRecord {
            owner: "workers-7d9f8b6c5-x2x4k/0b6c1e2a-1111-4222-8333-944455556666".into(),
            agent_id: "workers-7d9f8b6c5-x2x4k".into(),
            digest: digest(),
            not_after: Some(1_790_000_000_000),
            ..record(RecordState::Running)
        };
        let tombstone = TicketRecord { tombstone: true, ..run.completed(exit_code::CANCELLED) };
        let stored = tombstone.encode();
        assert!(stored.len() <= 44, "{stored:?} is {} bytes: too long for Redis to embed", stored.len());
        let read = TicketRecord::decode(&stored);
        assert_eq!(reported_state(Some(&read), false), (ScriptState::Complete, Some(exit_code::CANCELLED)));
        assert!(read.tombstone);
        assert!(check_same_command(&read, &digest()).is_ok());
        let other = contracts::ScriptSpec { script: "echo other".into(), ..Default::default() }.digest();
        assert_eq!(check_same_command(&read, &other).unwrap_err().kind, ErrorKind::TicketConflict);
        let other = format!("{}0{}", &digest()[..20], &digest()[21..]);
        assert_eq!(check_same_command(&read, &other).unwrap_err().kind, ErrorKind::TicketConflict);
        // A cancel before any start keeps no digest, and stands for whatever start comes late.
        let cancelled = TicketRecord { digest: String::new(), tombstone: true, ..record(RecordState::Complete) };
        assert!(check_same_command(&TicketRecord::decode(&cancelled.encode()), &digest()).is_ok());
    }

    #[test]
    fn records_written_as_json_by_earlier_versions_are_still_read() {
        // Exactly as the previous version stored them (serde_json of this struct).
        let running = r#"{"owner":"web-01/0b6c1e2a-1111-4222-8333-944455556666","agent_id":"web-01","digest":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","state":"Running","exit_code":null,"tombstone":false,"not_after":1790000000000,"claimed_at":1789999999000}"#;
        let read = TicketRecord::decode(running);
        assert_eq!(read.state, RecordState::Running);
        assert_eq!(
            (read.agent_id.as_str(), read.not_after, read.claimed_at),
            ("web-01", Some(1_790_000_000_000), 1_789_999_999_000)
        );
        assert!(check_same_command(&read, &digest()).is_ok());
        let tombstone = r#"{"owner":"web-01/x","agent_id":"web-01","digest":"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","state":"Complete","exit_code":3,"tombstone":true,"not_after":null,"claimed_at":1}"#;
        let read = TicketRecord::decode(tombstone);
        assert_eq!(reported_state(Some(&read), false), (ScriptState::Complete, Some(3)));
        assert_eq!(check_same_command(&read, "e").unwrap_err().kind, ErrorKind::TicketConflict);
    }

    #[test]
    fn only_the_claiming_process_starts_an_unconfirmed_claim() {
        let claimed = record(RecordState::Running);
        assert!(claim_awaits_confirmation(&claimed, "a/1", true));
        assert!(!claim_awaits_confirmation(&claimed, "a/1", false), "started already, or never claimed here");
        assert!(!claim_awaits_confirmation(&claimed, "a/2", true), "another process's claim");
        assert!(!claim_awaits_confirmation(&claimed.completed(0), "a/1", true));
        let cancelled = TicketRecord { tombstone: true, ..claimed };
        assert!(!claim_awaits_confirmation(&cancelled, "a/1", true));
    }

    #[test]
    fn unreadable_records_report_failure_not_a_rerun() {
        for raw in ["{not json", "2|r|x", "2|q|||1|d|a|a/1", "2|t|three|d", ""] {
            let r = TicketRecord::decode(raw);
            assert_eq!(reported_state(Some(&r), false), (ScriptState::Complete, Some(exit_code::FATAL)), "{raw:?}");
        }
    }
}
