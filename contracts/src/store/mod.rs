//! The ticket store: what the agent keeps per ticket, and the one rule every backend keeps.
//!
//! # The atomicity contract
//! Every [`TicketStore`] backend (Redis, the agent's embedded redb file, [`memory::MemoryStore`]) keeps
//! these, each operation taking effect at one instant, as if alone:
//! - **claim** creates the ticket's record only if it has none (Redis `SET NX`), in the same
//!   step as its lease, its running-set entry and the check of the store's epoch; of any number
//!   of claims (and cancels) of one ticket exactly one creates the record, and every other one
//!   sees it ([`Claim::Existing`]);
//! - **cancel** decides in that same kind of step: a tombstone if there is no record (so a
//!   later claim finds it), else the cancel flag;
//! - **compare_and_set** replaces the record only if it still holds exactly the value read
//!   (so two writers never both win), releasing what it is told to with it;
//! - a read sees the record, the lease and the output as of one instant; output is appended in
//!   order and a record read as complete comes with all of its output; lines are read by their
//!   sequence number, so lines the store lost (a failover, a restart without persistence) leave
//!   a gap, never a shift;
//! - a run's own end ([`Release::Ended`]) keeps how many lines it wrote beside the record, in the
//!   same step, so a status can name the lines the store lost after the last one it holds;
//! - a claim, once answered, is durable as far as the backend is (Redis: as its persistence and
//!   `--claim-replicas` say; redb: fsynced; memory: while the process lives).
//!
//! [`conformance`] checks these against any backend: the agent's stores run it in
//! `tests/tests/store_conformance.rs`, [`memory::MemoryStore`] in its unit tests.

pub mod conformance;
pub mod memory;
pub mod record;

use crate::receipt::ChainHead;
use crate::wire::status::LogLine;
use record::TicketRecord;
use std::time::Duration;

/// Log lines read from the store in one round trip at most.
pub const MAX_LINES_PER_READ: usize = 2_000;

/// A log position past any real log, to read a ticket without its output.
pub const SKIP_LOGS: u64 = i64::MAX as u64 / 2;

/// What claiming a ticket found.
#[derive(Debug)]
pub enum Claim {
    /// The store's epoch is not the one given: it lost its data since; nothing was claimed.
    EpochChanged,
    /// This agent owns the ticket now; the lease is held.
    Won,
    /// Somebody claimed it before: the record, and whether its owner's lease is alive.
    Existing { record: TicketRecord, raw: String, lease_alive: bool },
}

/// What a cancel found, decided in one step against the claim: a cancel the store took before
/// a claim means that start never runs, and one after it reaches the run.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// No record yet (never seen, or its start not claimed yet): a tombstone now stands in its
    /// place, so a start that comes later never runs.
    Tombstoned,
    /// The ticket has a record: its cancel flag is set for whichever process runs it.
    Flagged,
}

/// A consistent view of a ticket for a status reply.
#[derive(Debug)]
pub struct TicketView {
    pub record: Option<(TicketRecord, String)>,
    pub lease_alive: bool,
    /// Lines after the requested sequence, in order of their sequence numbers, capped in count
    /// and bytes.
    pub logs: Vec<LogLine>,
    /// The sequence number of the last line stored (0 for none): past the last of `logs` when
    /// the read was capped.
    pub last_stored: u64,
    /// How many lines the run wrote, kept when it ended ([`Release::Ended`]); `None` while it
    /// runs, or when it ended without saying (lost with its process, or an earlier agent).
    pub lines_written: Option<u64>,
}

impl TicketView {
    /// What a read finds just after a complete wrote `tombstone`: the tombstone as stored (its
    /// compact form, read back), and nothing else of the ticket (lease, output and count gone).
    pub fn of_tombstone(tombstone: &TicketRecord) -> TicketView {
        let raw = tombstone.encode();
        let record = TicketRecord::decode_or_failed(&raw);
        TicketView {
            record: Some((record, raw)),
            lease_alive: false,
            logs: Vec::new(),
            last_stored: 0,
            lines_written: None,
        }
    }
}

/// The life of the store's data: created when the store is first used, and again when it comes
/// back empty. `value` is `<created ms>-<random>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub value: String,
    pub created_ms: u64,
}

impl Epoch {
    pub fn parse(value: String) -> Epoch {
        let created_ms = value.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
        Epoch { value, created_ms }
    }
}

/// Whether a claim reached the replicas.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimReplication {
    /// The claim stands, and this many replicas acknowledged it.
    Acked(u32),
    /// The claim is no longer in the store as written: lost with a failed master, or changed.
    Lost,
}

/// What renewing a lease found.
#[derive(Debug, PartialEq, Eq)]
pub struct LeaseRenewal {
    pub held: bool,
    pub cancel_requested: bool,
}

/// Keys of one ticket under the agent's key prefix.
#[derive(Clone, Debug)]
pub struct TicketKeys {
    pub record: String,
    pub lease: String,
    pub logs: String,
    pub cancel: String,
    /// How many lines the run wrote, beside its record once it ended ([`Release::Ended`]).
    pub lines_written: String,
    /// The normalised ticket, as stored in running sets.
    pub ticket: String,
}

impl TicketKeys {
    pub fn new(prefix: &str, ticket_key: &str) -> Self {
        TicketKeys {
            record: format!("{prefix}ticket:{ticket_key}"),
            lease: format!("{prefix}lease:{ticket_key}"),
            logs: format!("{prefix}log:{ticket_key}"),
            cancel: format!("{prefix}cancel:{ticket_key}"),
            lines_written: format!("{prefix}lines:{ticket_key}"),
            ticket: ticket_key.to_owned(),
        }
    }
}

/// What a successful compare-and-set also releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    Nothing,
    /// The lease and the running-set entry: the run ended (lost with its process).
    Lease,
    /// As [`Release::Lease`], at the run's own end, which also keeps how many lines it wrote
    /// beside the record (read back as [`TicketView::lines_written`]). Kept apart from the
    /// record's own value, which agents of earlier versions read.
    Ended {
        lines_written: u64,
    },
    /// The lease, running-set entry, logs, lines written and cancel flag: the ticket was
    /// completed.
    LeaseAndOutput,
}

/// A ticket store, keeping the atomicity contract of this module. Records are written in their
/// encoded form ([`TicketRecord::encode`]) and compared as such. Object safe: the agent holds
/// whichever backend it was given as `dyn TicketStore`.
#[async_trait::async_trait]
pub trait TicketStore: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    fn keys(&self, ticket_key: &str) -> TicketKeys;

    /// The store's epoch, created now if the store has none (new, or restarted empty).
    async fn epoch(&self, now_ms: u64) -> Result<Epoch, Self::Error>;

    /// Claims a ticket: creates its record if none exists, takes the lease for the record's
    /// owner and adds the ticket to its agent id's running set; refused if `epoch` is not the
    /// store's.
    async fn claim(
        &self,
        keys: &TicketKeys,
        record: &TicketRecord,
        record_ttl: Duration,
        lease_ttl: Duration,
        epoch: &Epoch,
    ) -> Result<Claim, Self::Error>;

    /// Checks that the claim `raw` still stands and takes its lease for `owner` again, then
    /// waits up to `timeout` for `replicas` replicas to hold it. A store without replicas (the
    /// embedded one, memory) holds a claim as soon as it is written: nothing to wait for.
    async fn confirm_claim(
        &self,
        _keys: &TicketKeys,
        _raw: &str,
        _owner: &str,
        _lease_ttl: Duration,
        _replicas: u32,
        _timeout: Duration,
    ) -> Result<ClaimReplication, Self::Error> {
        Ok(ClaimReplication::Acked(0))
    }

    /// Checks that the record `raw` still stands, then waits up to `timeout` for `replicas`
    /// replicas to hold it (and so everything written before it): a cancel's tombstone before
    /// the cancel is answered ([`crate::agent::cancel_awaits_replication`]). A store without
    /// replicas holds a record as soon as it is written: it only reads it.
    async fn confirm_record(
        &self,
        keys: &TicketKeys,
        raw: &str,
        _replicas: u32,
        _timeout: Duration,
    ) -> Result<ClaimReplication, Self::Error> {
        let view = self.read(keys, SKIP_LOGS).await?;
        let standing = view.record.is_some_and(|(_, stored)| stored == raw);
        Ok(if standing { ClaimReplication::Acked(0) } else { ClaimReplication::Lost })
    }

    /// Cancels a ticket in one step against its claim: the tombstone `tombstone` (kept
    /// `record_ttl`) if it has no record, else its cancel flag (kept `flag_ttl`).
    async fn cancel(
        &self,
        keys: &TicketKeys,
        tombstone: &TicketRecord,
        record_ttl: Duration,
        flag_ttl: Duration,
    ) -> Result<Cancel, Self::Error>;

    /// Replaces the record if it still holds exactly `expected`, releasing `release` with it.
    /// `ttl` of `None` keeps the record's expiry.
    async fn compare_and_set(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        ttl: Option<Duration>,
        release: Release,
    ) -> Result<bool, Self::Error>;

    /// A run's own end: appends its last `lines` (kept `logs_ttl`, as [`TicketStore::append_logs`])
    /// and replaces the record by `new` if it still holds `expected`, releasing as
    /// [`Release::Ended`] with `lines_written`. A backend that can does both in one step (Redis: one
    /// script, one round trip); else the lines go first, so a record read as complete still comes
    /// with all of its output. `logs_ttl` is needed only with lines.
    async fn end_run(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        lines: &[LogLine],
        lines_written: u64,
        logs_ttl: Option<Duration>,
    ) -> Result<bool, Self::Error> {
        if let (false, Some(ttl)) = (lines.is_empty(), logs_ttl) {
            self.append_logs(keys, lines, ttl).await?;
        }
        self.compare_and_set(keys, expected, new, None, Release::Ended { lines_written }).await
    }

    /// The record, whether its lease is alive, and the log lines after `after_seq`. The lease
    /// is read only for a record not finished: a finished one (ended, or a tombstone) reads the
    /// same whatever its lease, and may come with `lease_alive` false.
    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, Self::Error>;

    /// Appends log lines (already numbered, in order), kept `ttl`.
    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], ttl: Duration) -> Result<(), Self::Error>;

    /// Renews the lease if `owner` holds it, and says whether a cancel was requested.
    async fn renew_lease(&self, keys: &TicketKeys, owner: &str, ttl: Duration) -> Result<LeaseRenewal, Self::Error>;

    /// Whether a cancel was requested for the ticket (its cancel flag is set), read alone: a run
    /// checks it once more just before its process starts.
    async fn cancel_requested(&self, keys: &TicketKeys) -> Result<bool, Self::Error>;

    /// Tickets an agent id was running when it last stopped.
    async fn running_tickets(&self, agent_id: &str) -> Result<Vec<String>, Self::Error>;

    /// Drops a ticket from an agent id's running set.
    async fn forget_running(&self, agent_id: &str, ticket_key: &str) -> Result<(), Self::Error>;

    /// Answers whether the store is reachable now.
    async fn ping(&self) -> Result<(), Self::Error>;

    /// The newest receipt of `agent_id`'s chain ([`crate::receipt`]), if it has made one.
    async fn receipt_head(&self, agent_id: &str) -> Result<Option<ChainHead>, Self::Error>;

    /// In one step, only while the chain's head is still `previous`: keeps `receipt` (a
    /// [`crate::receipt::SignedReceipt`]'s line) as pending, numbered `head.sequence`, and makes
    /// `head` the chain's head. False, nothing kept, if the head moved.
    async fn append_receipt(
        &self,
        agent_id: &str,
        previous: Option<&ChainHead>,
        head: &ChainHead,
        receipt: &str,
    ) -> Result<bool, Self::Error>;

    /// Up to `limit` pending receipts of `agent_id`, lowest sequence first.
    async fn pending_receipts(&self, agent_id: &str, limit: usize) -> Result<Vec<(u64, String)>, Self::Error>;

    /// Drops `agent_id`'s pending receipts up to sequence `through`: the broker holds them.
    async fn receipts_published(&self, agent_id: &str, through: u64) -> Result<(), Self::Error>;
}
