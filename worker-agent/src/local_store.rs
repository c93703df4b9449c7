//! The ticket store of an agent that can reach only the broker: an embedded, crash-safe database
//! (redb) in its work directory, with the same exactly-once rules as Redis. Every write commits
//! durably (fsync) before it returns, so a claim survives a crash or power loss before the
//! delivery is acked. Only this agent process uses the file, so a run's lease is simply "owned
//! by this process": a run left by an earlier process is lost, and reported as unknown result.

use crate::record::decode_record;
use crate::store::StoreError;
use contracts::receipt::ChainHead;
use contracts::store::record::TicketRecord;
use contracts::store::MAX_LINES_PER_READ;
use contracts::store::{Cancel, Claim, Epoch, LeaseRenewal, Release, TicketKeys, TicketView};
use contracts::wire::status::LogLine;
use contracts::wire::topology::MAX_STATUS_LOG_BYTES;
use edge::clock::now_ms;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ticket -> (record JSON, expiry in unix ms).
const RECORDS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("records");
/// (ticket, sequence) -> log line (msgpack).
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");
/// Ticket -> the last sequence number stored.
const LOG_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("log_counts");
/// Ticket -> how many lines its run wrote, kept at its own end ([`Release::Ended`]).
const LINES_WRITTEN: TableDefinition<&str, u64> = TableDefinition::new("lines_written");
/// Tickets this agent is running (or was, when it stopped).
const RUNNING: TableDefinition<&str, ()> = TableDefinition::new("running");
/// Tickets asked to cancel.
const CANCELS: TableDefinition<&str, ()> = TableDefinition::new("cancels");
/// "epoch" -> the store's epoch.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Each agent id's receipt chain head ([`ChainHead::to_text`]), and its receipts not yet
/// published, by agent id and sequence.
const RECEIPT_HEADS: TableDefinition<&str, &str> = TableDefinition::new("receipt_heads");
const PENDING_RECEIPTS: TableDefinition<(&str, u64), &str> = TableDefinition::new("pending_receipts");

fn failed(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Local(error.into())
}

#[derive(Clone)]
pub struct LocalStore {
    db: Arc<Database>,
    /// The owner id of this agent process: its runs are the live ones.
    owner: Arc<str>,
    /// When expired records were last removed (unix ms).
    pruned_at: Arc<AtomicU64>,
    /// How often records past their expiry are removed from the file (besides at open): expired
    /// records are never read, but an agent that runs for months must not keep them all.
    prune_interval_ms: u64,
}

impl LocalStore {
    /// Opens (or creates) the store at `path`, for the agent process `owner`, removing expired
    /// records now and then, on a claim, at most every `prune_interval` (the agent's
    /// `--janitor-interval`).
    pub fn open(path: &Path, owner: &str, prune_interval: Duration) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::LocalOpen { path: path.to_owned(), source })?;
        let txn = db.begin_write().map_err(failed)?;
        for table in [RUNNING, CANCELS] {
            txn.open_table(table).map_err(failed)?;
        }
        txn.open_table(RECORDS).map_err(failed)?;
        txn.open_table(LOGS).map_err(failed)?;
        txn.open_table(LOG_COUNTS).map_err(failed)?;
        txn.open_table(LINES_WRITTEN).map_err(failed)?;
        txn.open_table(META).map_err(failed)?;
        txn.open_table(RECEIPT_HEADS).map_err(failed)?;
        txn.open_table(PENDING_RECEIPTS).map_err(failed)?;
        txn.commit().map_err(failed)?;
        let store = LocalStore {
            db: Arc::new(db),
            owner: owner.into(),
            pruned_at: Arc::new(AtomicU64::new(now_ms())),
            prune_interval_ms: prune_interval.as_millis() as u64,
        };
        store.prune_expired()?;
        Ok(store)
    }

    /// Drops records past their expiry, with their output, if that was last done more than the
    /// prune interval ago; off the async runtime, without waiting for it.
    fn prune_now_and_then(&self) {
        let last = self.pruned_at.load(Ordering::Relaxed);
        let now = now_ms();
        if now.saturating_sub(last) < self.prune_interval_ms
            || self.pruned_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.prune_expired() {
                tracing::warn!(%error, "could not remove expired tickets from the local store");
            }
        });
    }

    /// Drops records past their expiry, with their output.
    fn prune_expired(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let txn = self.db.begin_write().map_err(failed)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(failed)?;
            let expired: Vec<String> = records
                .iter()
                .map_err(failed)?
                .filter_map(|entry| entry.ok())
                .filter(|(_, value)| value.value().1 <= now)
                .map(|(key, _)| key.value().to_owned())
                .collect();
            for ticket in &expired {
                records.remove(ticket.as_str()).map_err(failed)?;
                drop_output(&txn, ticket)?;
            }
            if !expired.is_empty() {
                tracing::info!(removed = expired.len(), "removed expired tickets from the local store");
            }
        }
        txn.commit().map_err(failed)
    }

    /// Runs `work` in a write transaction, committed durably, off the async runtime.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(failed)?;
            let result = work(&txn)?;
            txn.commit().map_err(failed)?;
            Ok(result)
        })
        .await
        .map_err(failed)?
    }

    async fn read_txn<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db.begin_read().map_err(failed)?)).await.map_err(failed)?
    }
}

#[async_trait::async_trait]
impl contracts::store::TicketStore for LocalStore {
    type Error = StoreError;

    fn keys(&self, ticket_key: &str) -> TicketKeys {
        TicketKeys::new("", ticket_key)
    }

    async fn epoch(&self, now_ms: u64) -> Result<Epoch, StoreError> {
        self.write(move |txn| {
            let mut meta = txn.open_table(META).map_err(failed)?;
            let existing = meta.get("epoch").map_err(failed)?.map(|v| v.value().to_owned());
            let value = match existing {
                Some(value) => value,
                None => {
                    let fresh = format!("{now_ms}-{}", uuid::Uuid::new_v4().simple());
                    meta.insert("epoch", fresh.as_str()).map_err(failed)?;
                    fresh
                }
            };
            Ok(Epoch::parse(value))
        })
        .await
    }

    async fn claim(
        &self,
        keys: &TicketKeys,
        record: &TicketRecord,
        record_ttl: Duration,
        _lease_ttl: Duration,
        epoch: &Epoch,
    ) -> Result<Claim, StoreError> {
        let (ticket, raw, epoch, owner) =
            (keys.ticket.clone(), record.encode(), epoch.value.clone(), self.owner.clone());
        let expires = now_ms() + record_ttl.as_millis() as u64;
        self.prune_now_and_then();
        self.write(move |txn| {
            let meta = txn.open_table(META).map_err(failed)?;
            if meta.get("epoch").map_err(failed)?.map(|v| v.value().to_owned()).as_deref() != Some(epoch.as_str()) {
                return Ok(Claim::EpochChanged);
            }
            let mut records = txn.open_table(RECORDS).map_err(failed)?;
            if let Some((existing, _)) = live_record(&records, &ticket)? {
                let record = decode_record(&existing);
                let lease_alive = record.owner == *owner;
                return Ok(Claim::Existing { record, raw: existing, lease_alive });
            }
            records.insert(ticket.as_str(), (raw.as_str(), expires)).map_err(failed)?;
            txn.open_table(RUNNING).map_err(failed)?.insert(ticket.as_str(), ()).map_err(failed)?;
            Ok(Claim::Won)
        })
        .await
    }

    /// See [`crate::store::RedisStore::cancel`]: one write transaction, like the claim.
    async fn cancel(
        &self,
        keys: &TicketKeys,
        tombstone: &TicketRecord,
        record_ttl: Duration,
        _flag_ttl: Duration,
    ) -> Result<Cancel, StoreError> {
        let (ticket, raw) = (keys.ticket.clone(), tombstone.encode());
        let expires = now_ms() + record_ttl.as_millis() as u64;
        self.write(move |txn| {
            let mut records = txn.open_table(RECORDS).map_err(failed)?;
            if live_record(&records, &ticket)?.is_some() {
                txn.open_table(CANCELS).map_err(failed)?.insert(ticket.as_str(), ()).map_err(failed)?;
                return Ok(Cancel::Flagged);
            }
            records.insert(ticket.as_str(), (raw.as_str(), expires)).map_err(failed)?;
            Ok(Cancel::Tombstoned)
        })
        .await
    }

    async fn compare_and_set(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        ttl: Option<Duration>,
        release: Release,
    ) -> Result<bool, StoreError> {
        let (ticket, expected, raw) = (keys.ticket.clone(), expected.to_owned(), new.encode());
        let new_expiry = ttl.map(|ttl| now_ms() + ttl.as_millis() as u64);
        self.write(move |txn| {
            let mut records = txn.open_table(RECORDS).map_err(failed)?;
            let Some((current, expiry)) = live_record(&records, &ticket)? else { return Ok(false) };
            if current != expected {
                return Ok(false);
            }
            records.insert(ticket.as_str(), (raw.as_str(), new_expiry.unwrap_or(expiry))).map_err(failed)?;
            if release != Release::Nothing {
                txn.open_table(RUNNING).map_err(failed)?.remove(ticket.as_str()).map_err(failed)?;
            }
            if let Release::Ended { lines_written } = release {
                txn.open_table(LINES_WRITTEN)
                    .map_err(failed)?
                    .insert(ticket.as_str(), lines_written)
                    .map_err(failed)?;
            }
            if release == Release::LeaseAndOutput {
                drop_output(txn, &ticket)?;
            }
            Ok(true)
        })
        .await
    }

    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, StoreError> {
        let (ticket, owner) = (keys.ticket.clone(), self.owner.clone());
        self.read_txn(move |txn| {
            let records = txn.open_table(RECORDS).map_err(failed)?;
            let record = live_record(&records, &ticket)?.map(|(raw, _)| (decode_record(&raw), raw));
            let running = txn.open_table(RUNNING).map_err(failed)?.get(ticket.as_str()).map_err(failed)?.is_some();
            let lease_alive = running && record.as_ref().is_some_and(|(r, _)| r.owner == *owner);
            let last_stored = txn
                .open_table(LOG_COUNTS)
                .map_err(failed)?
                .get(ticket.as_str())
                .map_err(failed)?
                .map_or(0, |v| v.value());
            let lines_written =
                txn.open_table(LINES_WRITTEN).map_err(failed)?.get(ticket.as_str()).map_err(failed)?.map(|v| v.value());
            let logs_table = txn.open_table(LOGS).map_err(failed)?;
            let mut logs = Vec::new();
            let mut bytes = 0;
            let start = after_seq.saturating_add(1);
            for entry in logs_table.range((ticket.as_str(), start)..=(ticket.as_str(), u64::MAX)).map_err(failed)? {
                let (_, value) = entry.map_err(failed)?;
                bytes += value.value().len();
                if logs.len() >= MAX_LINES_PER_READ || (bytes > MAX_STATUS_LOG_BYTES && !logs.is_empty()) {
                    break;
                }
                logs.push(rmp_serde::from_slice::<LogLine>(value.value()).map_err(failed)?);
            }
            Ok(TicketView { record, lease_alive, logs, last_stored, lines_written })
        })
        .await
    }

    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], _ttl: Duration) -> Result<(), StoreError> {
        let ticket = keys.ticket.clone();
        let encoded: Vec<(u64, Vec<u8>)> =
            lines.iter().map(|l| (l.seq, rmp_serde::to_vec_named(l).expect("log lines always encode"))).collect();
        self.write(move |txn| {
            let mut logs = txn.open_table(LOGS).map_err(failed)?;
            let mut last = 0;
            for (seq, bytes) in &encoded {
                logs.insert((ticket.as_str(), *seq), bytes.as_slice()).map_err(failed)?;
                last = last.max(*seq);
            }
            let mut counts = txn.open_table(LOG_COUNTS).map_err(failed)?;
            let stored = counts.get(ticket.as_str()).map_err(failed)?.map_or(0, |v| v.value());
            counts.insert(ticket.as_str(), stored.max(last)).map_err(failed)?;
            Ok(())
        })
        .await
    }

    async fn renew_lease(&self, keys: &TicketKeys, owner: &str, _ttl: Duration) -> Result<LeaseRenewal, StoreError> {
        let ticket = keys.ticket.clone();
        let held = owner == &*self.owner;
        self.read_txn(move |txn| {
            let cancel_requested =
                txn.open_table(CANCELS).map_err(failed)?.get(ticket.as_str()).map_err(failed)?.is_some();
            Ok(LeaseRenewal { held, cancel_requested })
        })
        .await
    }

    async fn cancel_requested(&self, keys: &TicketKeys) -> Result<bool, StoreError> {
        let ticket = keys.ticket.clone();
        self.read_txn(move |txn| {
            Ok(txn.open_table(CANCELS).map_err(failed)?.get(ticket.as_str()).map_err(failed)?.is_some())
        })
        .await
    }

    async fn running_tickets(&self, _agent_id: &str) -> Result<Vec<String>, StoreError> {
        self.read_txn(|txn| {
            let running = txn.open_table(RUNNING).map_err(failed)?;
            let tickets =
                running.iter().map_err(failed)?.filter_map(|e| e.ok()).map(|(k, _)| k.value().to_owned()).collect();
            Ok(tickets)
        })
        .await
    }

    async fn forget_running(&self, _agent_id: &str, ticket_key: &str) -> Result<(), StoreError> {
        let ticket = ticket_key.to_owned();
        self.write(move |txn| {
            txn.open_table(RUNNING).map_err(failed)?.remove(ticket.as_str()).map_err(failed)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn receipt_head(&self, agent_id: &str) -> Result<Option<ChainHead>, StoreError> {
        let agent = agent_id.to_owned();
        self.read_txn(move |txn| {
            let heads = txn.open_table(RECEIPT_HEADS).map_err(failed)?;
            Ok(heads.get(agent.as_str()).map_err(failed)?.and_then(|head| ChainHead::parse(head.value())))
        })
        .await
    }

    async fn append_receipt(
        &self,
        agent_id: &str,
        previous: Option<&ChainHead>,
        head: &ChainHead,
        receipt: &str,
    ) -> Result<bool, StoreError> {
        let (agent, previous, head, receipt) =
            (agent_id.to_owned(), previous.map(ChainHead::to_text), head.clone(), receipt.to_owned());
        self.write(move |txn| {
            let mut heads = txn.open_table(RECEIPT_HEADS).map_err(failed)?;
            let current = heads.get(agent.as_str()).map_err(failed)?.map(|head| head.value().to_owned());
            if current != previous {
                return Ok(false);
            }
            heads.insert(agent.as_str(), head.to_text().as_str()).map_err(failed)?;
            let mut pending = txn.open_table(PENDING_RECEIPTS).map_err(failed)?;
            pending.insert((agent.as_str(), head.sequence), receipt.as_str()).map_err(failed)?;
            Ok(true)
        })
        .await
    }

    async fn pending_receipts(&self, agent_id: &str, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let agent = agent_id.to_owned();
        self.read_txn(move |txn| {
            let pending = txn.open_table(PENDING_RECEIPTS).map_err(failed)?;
            let range = pending.range((agent.as_str(), 0)..=(agent.as_str(), u64::MAX)).map_err(failed)?;
            let mut receipts = Vec::new();
            for entry in range.take(limit) {
                let (key, value) = entry.map_err(failed)?;
                receipts.push((key.value().1, value.value().to_owned()));
            }
            Ok(receipts)
        })
        .await
    }

    async fn receipts_published(&self, agent_id: &str, through: u64) -> Result<(), StoreError> {
        let agent = agent_id.to_owned();
        self.write(move |txn| {
            let mut pending = txn.open_table(PENDING_RECEIPTS).map_err(failed)?;
            pending.retain_in((agent.as_str(), 0)..=(agent.as_str(), through), |_, _| false).map_err(failed)?;
            Ok(())
        })
        .await
    }
}

/// The record of `ticket` and its expiry, unless it has expired.
fn live_record(
    records: &impl ReadableTable<&'static str, (&'static str, u64)>,
    ticket: &str,
) -> Result<Option<(String, u64)>, StoreError> {
    let Some(value) = records.get(ticket).map_err(failed)? else { return Ok(None) };
    let (raw, expiry) = value.value();
    Ok((expiry > now_ms()).then(|| (raw.to_owned(), expiry)))
}

/// Removes a ticket's log lines, their count and its cancel flag.
fn drop_output(txn: &redb::WriteTransaction, ticket: &str) -> Result<(), StoreError> {
    let mut logs = txn.open_table(LOGS).map_err(failed)?;
    let seqs: Vec<u64> = logs
        .range((ticket, 0)..=(ticket, u64::MAX))
        .map_err(failed)?
        .filter_map(|e| e.ok())
        .map(|(k, _)| k.value().1)
        .collect();
    for seq in seqs {
        logs.remove((ticket, seq)).map_err(failed)?;
    }
    txn.open_table(LOG_COUNTS).map_err(failed)?.remove(ticket).map_err(failed)?;
    txn.open_table(LINES_WRITTEN).map_err(failed)?.remove(ticket).map_err(failed)?;
    txn.open_table(CANCELS).map_err(failed)?.remove(ticket).map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::store::record::RecordState;
    use contracts::store::TicketStore as _;

    fn stored_records(store: &LocalStore) -> usize {
        let txn = store.db.begin_read().unwrap();
        let records = txn.open_table(RECORDS).unwrap();
        records.iter().unwrap().count()
    }

    #[tokio::test]
    async fn a_tombstone_is_compact_and_leaves_the_file_once_expired() {
        let dir = std::env::temp_dir().join(format!("cuttle-local-store-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = LocalStore::open(&dir.join("tickets.redb"), "a/1", Duration::from_secs(600)).unwrap();
        let epoch = store.epoch(now_ms()).await.unwrap();
        let keys = store.keys("t1");
        let record = TicketRecord {
            owner: "a/1".into(),
            agent_id: "a".into(),
            digest: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
            state: RecordState::Running,
            exit_code: None,
            tombstone: false,
            not_after: Some(now_ms() + 60_000),
            claimed_at: now_ms(),
        };
        let day = Duration::from_secs(86_400);
        assert!(matches!(store.claim(&keys, &record, day, day, &epoch).await.unwrap(), Claim::Won));
        let tombstone = TicketRecord { tombstone: true, ..record.completed(0) };
        let ttl = Some(Duration::from_millis(200));
        assert!(store
            .compare_and_set(&keys, &record.encode(), &tombstone, ttl, Release::LeaseAndOutput)
            .await
            .unwrap());
        let (_, raw) = store.read(&keys, 0).await.unwrap().record.expect("tombstone");
        assert_eq!(raw, "2|t|0|2c26b46b68ffc68ff99b453c1d304134");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.read(&keys, 0).await.unwrap().record.is_some() {
            assert!(std::time::Instant::now() < deadline, "the tombstone outlived its expiry");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stored_records(&store), 1, "expired, but not yet removed");
        // The next claim after the prune interval removes it from the file.
        store.pruned_at.store(0, Ordering::Relaxed);
        let other = store.keys("t2");
        assert!(matches!(store.claim(&other, &record, day, day, &epoch).await.unwrap(), Claim::Won));
        while stored_records(&store) != 1 || store.read(&other, 0).await.unwrap().record.is_none() {
            assert!(std::time::Instant::now() < deadline, "the expired tombstone was not removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
