//! [`MemoryStore`]: a ticket store in memory with Redis's semantics, on a clock it is given, for
//! tests and the deterministic simulation.

use super::record::TicketRecord;
use super::MAX_LINES_PER_READ;
use super::{Cancel, Claim, Epoch, LeaseRenewal, Release, TicketKeys, TicketStore, TicketView};
use crate::receipt::ChainHead;
use crate::wire::status::LogLine;
use crate::wire::topology::MAX_STATUS_LOG_BYTES;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    receipt_heads: BTreeMap<String, ChainHead>,
    pending_receipts: BTreeMap<String, BTreeMap<u64, String>>,
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

    async fn cancel_requested(&self, keys: &TicketKeys) -> Result<bool, MemoryStoreError> {
        Ok(self.with(|data, now| alive(data.cancels.get(&keys.cancel), now).is_some()))
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

    async fn receipt_head(&self, agent_id: &str) -> Result<Option<ChainHead>, MemoryStoreError> {
        Ok(self.with(|data, _| data.receipt_heads.get(agent_id).cloned()))
    }

    async fn append_receipt(
        &self,
        agent_id: &str,
        previous: Option<&ChainHead>,
        head: &ChainHead,
        receipt: &str,
    ) -> Result<bool, MemoryStoreError> {
        Ok(self.with(|data, _| {
            if data.receipt_heads.get(agent_id) != previous {
                return false;
            }
            data.receipt_heads.insert(agent_id.to_owned(), head.clone());
            data.pending_receipts.entry(agent_id.to_owned()).or_default().insert(head.sequence, receipt.to_owned());
            true
        }))
    }

    async fn pending_receipts(&self, agent_id: &str, limit: usize) -> Result<Vec<(u64, String)>, MemoryStoreError> {
        Ok(self.with(|data, _| {
            let pending = data.pending_receipts.get(agent_id);
            pending.into_iter().flatten().take(limit).map(|(seq, text)| (*seq, text.clone())).collect()
        }))
    }

    async fn receipts_published(&self, agent_id: &str, through: u64) -> Result<(), MemoryStoreError> {
        self.with(|data, _| {
            if let Some(pending) = data.pending_receipts.get_mut(agent_id) {
                pending.retain(|seq, _| *seq > through);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::store::record::claim_record;
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
