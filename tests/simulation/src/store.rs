//! The simulated ticket store: [`MemoryStore`] on the world's clock, with the store's faults
//! around it: outages (every operation fails), a restart that loses everything, and a replica
//! that a failover falls back to, holding only what the last replication carried. A claim or a
//! tombstone confirmed on the replicas (Redis `WAIT`) is carried by a replication now, or not yet.

use contracts::receipt::ChainHead;
use contracts::store::memory::{MemoryData, MemoryStore, MemoryStoreError};
use contracts::store::record::TicketRecord;
use contracts::store::{
    Cancel, Claim, ClaimReplication, Epoch, LeaseRenewal, Release, TicketKeys, TicketStore, TicketView, SKIP_LOGS,
};
use contracts::wire::status::LogLine;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct SimStore {
    memory: MemoryStore,
    clock: Arc<AtomicU64>,
    down: AtomicBool,
    /// What the replica holds: a failover restores it.
    replica: Mutex<MemoryData>,
    /// Whether a write confirmed now is carried by a replication at once.
    rng: Mutex<fastrand::Rng>,
}

impl SimStore {
    /// An empty store at time 0; its replications drawn from `seed`.
    pub fn new(seed: u64) -> SimStore {
        let clock = Arc::new(AtomicU64::new(0));
        SimStore {
            memory: MemoryStore::new(clock.clone()),
            clock,
            down: AtomicBool::new(false),
            replica: Mutex::default(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// Moves the store's clock to `now` (true time, ms).
    pub fn set_now(&self, now: u64) {
        self.clock.store(now, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// An outage begins (`true`) or ends.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// A restart without persistence: everything lost, the replica's copy too.
    pub fn restart_empty(&self) {
        self.memory.clear();
        *self.replica.lock().expect("replica poisoned") = MemoryData::default();
    }

    /// A failover to the replica, losing what it did not have yet.
    pub fn fail_over(&self) {
        self.memory.restore(self.replica.lock().expect("replica poisoned").clone());
    }

    /// A replication: the replica holds everything written so far.
    pub fn replicate(&self) {
        *self.replica.lock().expect("replica poisoned") = self.memory.snapshot();
    }

    fn up(&self) -> Result<(), MemoryStoreError> {
        if self.is_down() {
            return Err(MemoryStoreError("simulated outage".into()));
        }
        Ok(())
    }

    /// A write confirmed on the replicas (Redis `WAIT` after it): lost if the record no longer
    /// holds `raw`, else carried by a replication now, or not yet.
    async fn confirm(&self, keys: &TicketKeys, raw: &str) -> Result<ClaimReplication, MemoryStoreError> {
        self.up()?;
        let standing = self.memory.read(keys, SKIP_LOGS).await?.record.is_some_and(|(_, stored)| stored == raw);
        if !standing {
            return Ok(ClaimReplication::Lost);
        }
        if self.rng.lock().expect("rng poisoned").f64() < 0.7 {
            self.replicate();
            Ok(ClaimReplication::Acked(1))
        } else {
            Ok(ClaimReplication::Acked(0))
        }
    }
}

#[async_trait::async_trait]
impl TicketStore for SimStore {
    type Error = MemoryStoreError;

    fn keys(&self, ticket_key: &str) -> TicketKeys {
        self.memory.keys(ticket_key)
    }

    async fn epoch(&self, now_ms: u64) -> Result<Epoch, MemoryStoreError> {
        self.up()?;
        self.memory.epoch(now_ms).await
    }

    async fn claim(
        &self,
        keys: &TicketKeys,
        record: &TicketRecord,
        record_ttl: Duration,
        lease_ttl: Duration,
        epoch: &Epoch,
    ) -> Result<Claim, MemoryStoreError> {
        self.up()?;
        self.memory.claim(keys, record, record_ttl, lease_ttl, epoch).await
    }

    async fn confirm_claim(
        &self,
        keys: &TicketKeys,
        raw: &str,
        _owner: &str,
        _lease_ttl: Duration,
        _replicas: u32,
        _timeout: Duration,
    ) -> Result<ClaimReplication, MemoryStoreError> {
        self.confirm(keys, raw).await
    }

    async fn confirm_record(
        &self,
        keys: &TicketKeys,
        raw: &str,
        _replicas: u32,
        _timeout: Duration,
    ) -> Result<ClaimReplication, MemoryStoreError> {
        self.confirm(keys, raw).await
    }

    async fn cancel(
        &self,
        keys: &TicketKeys,
        tombstone: &TicketRecord,
        record_ttl: Duration,
        flag_ttl: Duration,
    ) -> Result<Cancel, MemoryStoreError> {
        self.up()?;
        self.memory.cancel(keys, tombstone, record_ttl, flag_ttl).await
    }

    async fn compare_and_set(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        ttl: Option<Duration>,
        release: Release,
    ) -> Result<bool, MemoryStoreError> {
        self.up()?;
        self.memory.compare_and_set(keys, expected, new, ttl, release).await
    }

    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, MemoryStoreError> {
        self.up()?;
        self.memory.read(keys, after_seq).await
    }

    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], ttl: Duration) -> Result<(), MemoryStoreError> {
        self.up()?;
        self.memory.append_logs(keys, lines, ttl).await
    }

    async fn renew_lease(
        &self,
        keys: &TicketKeys,
        owner: &str,
        ttl: Duration,
    ) -> Result<LeaseRenewal, MemoryStoreError> {
        self.up()?;
        self.memory.renew_lease(keys, owner, ttl).await
    }

    async fn cancel_requested(&self, keys: &TicketKeys) -> Result<bool, MemoryStoreError> {
        self.up()?;
        self.memory.cancel_requested(keys).await
    }

    async fn running_tickets(&self, agent_id: &str) -> Result<Vec<String>, MemoryStoreError> {
        self.up()?;
        self.memory.running_tickets(agent_id).await
    }

    async fn forget_running(&self, agent_id: &str, ticket_key: &str) -> Result<(), MemoryStoreError> {
        self.up()?;
        self.memory.forget_running(agent_id, ticket_key).await
    }

    async fn ping(&self) -> Result<(), MemoryStoreError> {
        self.up()
    }

    async fn receipt_head(&self, agent_id: &str) -> Result<Option<ChainHead>, MemoryStoreError> {
        self.up()?;
        self.memory.receipt_head(agent_id).await
    }

    async fn append_receipt(
        &self,
        agent_id: &str,
        previous: Option<&ChainHead>,
        head: &ChainHead,
        receipt: &str,
    ) -> Result<bool, MemoryStoreError> {
        self.up()?;
        self.memory.append_receipt(agent_id, previous, head, receipt).await
    }

    async fn pending_receipts(&self, agent_id: &str, limit: usize) -> Result<Vec<(u64, String)>, MemoryStoreError> {
        self.up()?;
        self.memory.pending_receipts(agent_id, limit).await
    }

    async fn receipts_published(&self, agent_id: &str, through: u64) -> Result<(), MemoryStoreError> {
        self.up()?;
        self.memory.receipts_published(agent_id, through).await
    }
}
