//! The ticket store: what the agent keeps per ticket, and the one rule every backend keeps.
//!
//! # The atomicity contract
//! Every [`TicketStore`] backend (Redis, the agent's embedded redb file, [`MemoryStore`]) keeps
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
//! `tests/tests/store_conformance.rs`, [`MemoryStore`] in its unit tests.

use crate::record::TicketRecord;
use crate::topology::MAX_STATUS_LOG_BYTES;
use crate::LogLine;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

    /// The record, whether its lease is alive, and the log lines after `after_seq`.
    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, Self::Error>;

    /// Appends log lines (already numbered, in order), kept `ttl`.
    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], ttl: Duration) -> Result<(), Self::Error>;

    /// Renews the lease if `owner` holds it, and says whether a cancel was requested.
    async fn renew_lease(&self, keys: &TicketKeys, owner: &str, ttl: Duration) -> Result<LeaseRenewal, Self::Error>;

    /// Tickets an agent id was running when it last stopped.
    async fn running_tickets(&self, agent_id: &str) -> Result<Vec<String>, Self::Error>;

    /// Drops a ticket from an agent id's running set.
    async fn forget_running(&self, agent_id: &str, ticket_key: &str) -> Result<(), Self::Error>;

    /// Answers whether the store is reachable now.
    async fn ping(&self) -> Result<(), Self::Error>;
}

/// The in-memory store can fail only when told to (simulated outages).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ticket store unavailable: {0}")]
pub struct MemoryStoreError(pub String);

/// A value and when it expires (ms on the store's clock; `u64::MAX` never).
#[derive(Clone, Debug)]
struct Expiring<T> {
    value: T,
    expires: u64,
}

/// Everything a [`MemoryStore`] holds; cloned whole for a snapshot.
#[derive(Clone, Debug, Default)]
pub struct MemoryData {
    epoch: Option<String>,
    records: BTreeMap<String, Expiring<String>>,
    leases: BTreeMap<String, Expiring<String>>,
    logs: BTreeMap<String, Expiring<Vec<LogLine>>>,
    lines_written: BTreeMap<String, Expiring<u64>>,
    cancels: BTreeMap<String, Expiring<()>>,
    running: BTreeMap<String, BTreeSet<String>>,
}

/// A ticket store in memory with Redis's semantics (expiring keys, a lease per owner), on a
/// clock it is given: for tests and the deterministic simulation. Every operation runs under
/// one lock and completes at once (its future is ready).
#[derive(Clone)]
pub struct MemoryStore {
    data: Arc<Mutex<MemoryData>>,
    now: Arc<AtomicU64>,
    /// New epochs are `<now>-<counter>`, so a restarted store never repeats one.
    epochs: Arc<AtomicU64>,
}

fn alive<T>(entry: Option<&Expiring<T>>, now: u64) -> Option<&T> {
    entry.filter(|e| e.expires > now).map(|e| &e.value)
}

fn expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(ttl.as_millis() as u64)
}

impl MemoryStore {
    /// An empty store whose time is `now` (ms), which the caller moves on.
    pub fn new(now: Arc<AtomicU64>) -> Self {
        MemoryStore { data: Arc::default(), now, epochs: Arc::default() }
    }

    fn with<T>(&self, work: impl FnOnce(&mut MemoryData, u64) -> T) -> T {
        let now = self.now.load(Ordering::SeqCst);
        work(&mut self.data.lock().expect("memory store poisoned"), now)
    }

    /// Everything the store holds now, to [`MemoryStore::restore`] later (a replica's copy).
    pub fn snapshot(&self) -> MemoryData {
        self.with(|data, _| data.clone())
    }

    /// Replaces everything by `data`: a failover to a replica that had only `data`.
    pub fn restore(&self, data: MemoryData) {
        self.with(|current, _| *current = data);
    }

    /// Loses everything, the epoch too: a restart without persistence.
    pub fn clear(&self) {
        self.restore(MemoryData::default());
    }

    /// How many ticket records are stored (expired ones included until touched).
    pub fn records(&self) -> usize {
        self.with(|data, _| data.records.len())
    }
}

#[async_trait::async_trait]
impl TicketStore for MemoryStore {
    type Error = MemoryStoreError;

    fn keys(&self, ticket_key: &str) -> TicketKeys {
        TicketKeys::new("", ticket_key)
    }

    async fn epoch(&self, now_ms: u64) -> Result<Epoch, MemoryStoreError> {
        let counter = self.epochs.fetch_add(1, Ordering::SeqCst);
        Ok(self.with(|data, _| Epoch::parse(data.epoch.get_or_insert_with(|| format!("{now_ms}-{counter}")).clone())))
    }

    async fn claim(
        &self,
        keys: &TicketKeys,
        record: &TicketRecord,
        record_ttl: Duration,
        lease_ttl: Duration,
        epoch: &Epoch,
    ) -> Result<Claim, MemoryStoreError> {
        Ok(self.with(|data, now| {
            if data.epoch.as_deref() != Some(epoch.value.as_str()) {
                return Claim::EpochChanged;
            }
            if let Some(raw) = alive(data.records.get(&keys.record), now) {
                let raw = raw.clone();
                let lease_alive = alive(data.leases.get(&keys.lease), now).is_some();
                return Claim::Existing { record: TicketRecord::decode_or_failed(&raw), raw, lease_alive };
            }
            data.records
                .insert(keys.record.clone(), Expiring { value: record.encode(), expires: expiry(now, record_ttl) });
            data.leases
                .insert(keys.lease.clone(), Expiring { value: record.owner.clone(), expires: expiry(now, lease_ttl) });
            data.running.entry(record.agent_id.clone()).or_default().insert(keys.ticket.clone());
            Claim::Won
        }))
    }

    async fn cancel(
        &self,
        keys: &TicketKeys,
        tombstone: &TicketRecord,
        record_ttl: Duration,
        flag_ttl: Duration,
    ) -> Result<Cancel, MemoryStoreError> {
        Ok(self.with(|data, now| {
            if alive(data.records.get(&keys.record), now).is_none() {
                let value = tombstone.encode();
                data.records.insert(keys.record.clone(), Expiring { value, expires: expiry(now, record_ttl) });
                return Cancel::Tombstoned;
            }
            data.cancels.insert(keys.cancel.clone(), Expiring { value: (), expires: expiry(now, flag_ttl) });
            Cancel::Flagged
        }))
    }

    async fn compare_and_set(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        ttl: Option<Duration>,
        release: Release,
    ) -> Result<bool, MemoryStoreError> {
        Ok(self.with(|data, now| {
            let Some(current) = data.records.get_mut(&keys.record).filter(|e| e.expires > now) else { return false };
            if current.value != expected {
                return false;
            }
            current.value = new.encode();
            if let Some(ttl) = ttl {
                current.expires = expiry(now, ttl.max(Duration::from_millis(1)));
            }
            if let Release::Ended { lines_written } = release {
                let written = Expiring { value: lines_written, expires: current.expires };
                data.lines_written.insert(keys.lines_written.clone(), written);
            }
            if release != Release::Nothing {
                data.leases.remove(&keys.lease);
                if let Some(running) = data.running.get_mut(&new.agent_id) {
                    running.remove(&keys.ticket);
                }
            }
            if release == Release::LeaseAndOutput {
                data.logs.remove(&keys.logs);
                data.lines_written.remove(&keys.lines_written);
                data.cancels.remove(&keys.cancel);
            }
            true
        }))
    }

    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, MemoryStoreError> {
        Ok(self.with(|data, now| {
            let record = alive(data.records.get(&keys.record), now)
                .map(|raw| (TicketRecord::decode_or_failed(raw), raw.clone()));
            let lease_alive = alive(data.leases.get(&keys.lease), now).is_some();
            let stored = alive(data.logs.get(&keys.logs), now).map_or(&[][..], Vec::as_slice);
            let start = stored.partition_point(|line| line.seq <= after_seq);
            let mut logs = Vec::new();
            let mut bytes = 0;
            for line in stored[start..].iter().take(MAX_LINES_PER_READ) {
                bytes += line.text.len();
                if bytes > MAX_STATUS_LOG_BYTES && !logs.is_empty() {
                    break;
                }
                logs.push(line.clone());
            }
            let last_stored = stored.last().map_or(0, |line| line.seq);
            let lines_written = alive(data.lines_written.get(&keys.lines_written), now).copied();
            TicketView { record, lease_alive, logs, last_stored, lines_written }
        }))
    }

    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], ttl: Duration) -> Result<(), MemoryStoreError> {
        self.with(|data, now| {
            let entry = data.logs.entry(keys.logs.clone()).or_insert(Expiring { value: Vec::new(), expires: 0 });
            if entry.expires <= now {
                entry.value.clear();
            }
            entry.value.extend_from_slice(lines);
            entry.expires = expiry(now, ttl);
        });
        Ok(())
    }

    async fn renew_lease(
        &self,
        keys: &TicketKeys,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseRenewal, MemoryStoreError> {
        Ok(self.with(|data, now| {
            let cancel_requested = alive(data.cancels.get(&keys.cancel), now).is_some();
            let held = match data.leases.get_mut(&keys.lease).filter(|e| e.expires > now) {
                Some(lease) if lease.value == owner => {
                    lease.expires = expiry(now, ttl);
                    true
                }
                _ => false,
            };
            LeaseRenewal { held, cancel_requested }
        }))
    }

    async fn running_tickets(&self, agent_id: &str) -> Result<Vec<String>, MemoryStoreError> {
        Ok(self.with(|data, _| data.running.get(agent_id).map_or_else(Vec::new, |s| s.iter().cloned().collect())))
    }

    async fn forget_running(&self, agent_id: &str, ticket_key: &str) -> Result<(), MemoryStoreError> {
        self.with(|data, _| {
            if let Some(running) = data.running.get_mut(agent_id) {
                running.remove(ticket_key);
            }
        });
        Ok(())
    }

    async fn ping(&self) -> Result<(), MemoryStoreError> {
        Ok(())
    }
}

pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::claim_record;
    use std::future::Future;

    /// Runs a future of the memory store, which is always ready.
    fn now<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("memory store futures are always ready"),
        }
    }

    #[test]
    fn the_memory_store_keeps_the_contract() {
        let clock = Arc::new(AtomicU64::new(1_000_000));
        now(conformance::check_all(&MemoryStore::new(clock), "t", "a/1", "a", 1_000_000));
    }

    #[test]
    fn memory_keys_expire_on_the_clock_and_data_is_lost_as_told() {
        let clock = Arc::new(AtomicU64::new(1_000));
        let store = MemoryStore::new(clock.clone());
        let epoch = now(store.epoch(1_000)).unwrap();
        let keys = store.keys("t");
        let record = claim_record("a/1", "a", "d".into(), false, None, 1_000);
        let second = Duration::from_secs(1);
        assert!(matches!(now(store.claim(&keys, &record, 10 * second, second, &epoch)).unwrap(), Claim::Won));
        let replica = store.snapshot();
        clock.store(2_500, Ordering::SeqCst);
        let view = now(store.read(&keys, 0)).unwrap();
        assert!(view.record.is_some() && !view.lease_alive, "the lease ran out, the record did not");
        assert!(!now(store.renew_lease(&keys, "a/1", second)).unwrap().held, "an expired lease is not renewed");
        clock.store(11_000, Ordering::SeqCst);
        assert!(now(store.read(&keys, 0)).unwrap().record.is_none());
        store.restore(replica);
        assert_eq!(store.records(), 1);
        store.clear();
        assert!(matches!(now(store.claim(&keys, &record, second, second, &epoch)).unwrap(), Claim::EpochChanged));
        let fresh = now(store.epoch(11_000)).unwrap();
        assert_ne!(fresh, epoch);
        assert_eq!(fresh.created_ms, 11_000);
    }
}
