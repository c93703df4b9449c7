//! The record the ticket store keeps per ticket (claimed, running, complete, tombstone) and its
//! compact stored form, and the records a claim and a cancel write ([`claim_record`],
//! [`cancel_tombstone`]). The agent's decisions (`crate::agent`) read and write it; every store
//! ([`crate::store`]) keeps it.

use crate::wire::exit_code;
use serde::Deserialize;

/// A ticket's state in the store: `Claimed → Running → Complete(exit)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum RecordState {
    /// Claimed, waiting for its isolation mutex.
    Claimed,
    Running,
    Complete,
}

impl RecordState {
    pub fn is_complete(self) -> bool {
        self == RecordState::Complete
    }
}

/// The record stored per ticket. Earlier versions stored it as JSON of these fields, which the
/// agent still reads.
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
/// versions.
const RECORD_V2: &str = "2";

/// Hex digits of the script digest a tombstone keeps: 128 bits tell a different script from
/// the same one as surely as the whole digest, in half the bytes.
pub const TOMBSTONE_DIGEST_LEN: usize = 32;

/// A stored record that cannot be read in the compact encoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unreadable ticket record: {field:?}: {source}")]
    Number { field: String, source: std::num::ParseIntError },
    #[error("unreadable ticket record: {0}")]
    ExitCode(#[source] std::num::TryFromIntError),
    #[error("unreadable ticket record: unknown record state {0:?}")]
    State(String),
    #[error("unreadable ticket record: not a ticket record: {0} fields")]
    Fields(usize),
}

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

    /// Reads a record in the compact encoding ([`TicketRecord::encode`]).
    pub fn decode_compact(raw: &str) -> Result<TicketRecord, RecordError> {
        let fields: Vec<&str> = raw.split('|').collect();
        let number = |s: &str| -> Result<Option<i64>, RecordError> {
            let field = |source| RecordError::Number { field: s.to_owned(), source };
            (!s.is_empty()).then(|| s.parse::<i64>().map_err(field)).transpose()
        };
        let exit_code = |s: &str| number(s)?.map(i32::try_from).transpose().map_err(RecordError::ExitCode);
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
                    other => return Err(RecordError::State((*other).to_owned())),
                },
                exit_code: exit_code(exit)?,
                tombstone: false,
                not_after: number(not_after)?.map(|n| n as u64),
                claimed_at: number(claimed_at)?.unwrap_or(0) as u64,
            }),
            _ => Err(RecordError::Fields(fields.len())),
        }
    }

    /// Reads a compact record; one that cannot be read is a fatal completion rather than a
    /// risk of a run.
    pub fn decode_or_failed(raw: &str) -> TicketRecord {
        TicketRecord::decode_compact(raw).unwrap_or_else(|_| TicketRecord::unreadable())
    }

    /// What an unreadable record stands for: a ticket that failed, never one to run.
    pub fn unreadable() -> TicketRecord {
        TicketRecord::tombstone(String::new(), Some(exit_code::FATAL))
    }

    /// A completed ticket's tombstone as it reads back from the store: its outcome and the
    /// script's digest (a prefix of it once stored), nothing about the run.
    pub(crate) fn tombstone(digest: String, exit_code: Option<i32>) -> TicketRecord {
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

/// The claim a start writes: owned by the process `owner`, waiting for its isolation mutex when
/// the script has one (`Claimed`), else `Running`.
pub fn claim_record(
    owner: &str,
    agent_id: &str,
    digest: String,
    waits_for_mutex: bool,
    not_after: Option<u64>,
    now_ms: u64,
) -> TicketRecord {
    TicketRecord {
        owner: owner.to_owned(),
        agent_id: agent_id.to_owned(),
        digest,
        state: if waits_for_mutex { RecordState::Claimed } else { RecordState::Running },
        exit_code: None,
        tombstone: false,
        not_after,
        claimed_at: now_ms,
    }
}

/// The tombstone a cancel leaves when the store holds no record of the ticket (no start claimed
/// yet), so a start that comes later never runs ([`TicketRecord::cancelled_before_start`]).
pub fn cancel_tombstone(owner: &str, agent_id: &str, now_ms: u64) -> TicketRecord {
    TicketRecord {
        owner: owner.to_owned(),
        agent_id: agent_id.to_owned(),
        digest: String::new(),
        state: RecordState::Complete,
        exit_code: Some(exit_code::CANCELLED),
        tombstone: true,
        not_after: None,
        claimed_at: now_ms,
    }
}
