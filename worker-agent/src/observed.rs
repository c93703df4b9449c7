//! [`Observed`]: the agent's ticket store with each operation timed and its failures counted,
//! whichever backend it wraps.

use contracts::metrics::StoreOps;
use contracts::receipt::ChainHead;
use contracts::store::record::TicketRecord;
use contracts::store::{
    Cancel, Claim, ClaimReplication, Epoch, LeaseRenewal, Release, TicketKeys, TicketStore, TicketView,
};
use contracts::wire::status::LogLine;
use std::sync::Arc;
use std::time::Duration;

/// A ticket store with each operation timed and its failures counted ([`StoreOps`]), labelled by
/// the operation's name: the one place the agent's store metrics are recorded, whichever backend
/// it wraps.
pub struct Observed<S> {
    store: S,
    ops: StoreOps,
}

impl<S: TicketStore + 'static> Observed<S> {
    /// `store` recorded in `ops`, as the agent holds it.
    pub fn agent_store(store: S, ops: StoreOps) -> Arc<dyn TicketStore<Error = S::Error>> {
        Arc::new(Observed { store, ops })
    }
}

#[async_trait::async_trait]
impl<S: TicketStore> TicketStore for Observed<S> {
    type Error = S::Error;

    fn keys(&self, ticket_key: &str) -> TicketKeys {
        self.store.keys(ticket_key)
    }

    async fn epoch(&self, now_ms: u64) -> Result<Epoch, S::Error> {
        edge::clock::observe(&self.ops, "epoch", self.store.epoch(now_ms)).await
    }

    async fn claim(
        &self,
        keys: &TicketKeys,
        record: &TicketRecord,
        record_ttl: Duration,
        lease_ttl: Duration,
        epoch: &Epoch,
    ) -> Result<Claim, S::Error> {
        edge::clock::observe(&self.ops, "claim", self.store.claim(keys, record, record_ttl, lease_ttl, epoch)).await
    }

    async fn confirm_claim(
        &self,
        keys: &TicketKeys,
        raw: &str,
        owner: &str,
        lease_ttl: Duration,
        replicas: u32,
        timeout: Duration,
    ) -> Result<ClaimReplication, S::Error> {
        let confirm = self.store.confirm_claim(keys, raw, owner, lease_ttl, replicas, timeout);
        edge::clock::observe(&self.ops, "confirm_claim", confirm).await
    }

    async fn confirm_record(
        &self,
        keys: &TicketKeys,
        raw: &str,
        replicas: u32,
        timeout: Duration,
    ) -> Result<ClaimReplication, S::Error> {
        edge::clock::observe(&self.ops, "confirm_record", self.store.confirm_record(keys, raw, replicas, timeout)).await
    }

    async fn cancel(
        &self,
        keys: &TicketKeys,
        tombstone: &TicketRecord,
        record_ttl: Duration,
        flag_ttl: Duration,
    ) -> Result<Cancel, S::Error> {
        edge::clock::observe(&self.ops, "cancel", self.store.cancel(keys, tombstone, record_ttl, flag_ttl)).await
    }

    async fn compare_and_set(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        ttl: Option<Duration>,
        release: Release,
    ) -> Result<bool, S::Error> {
        edge::clock::observe(
            &self.ops,
            "compare_and_set",
            self.store.compare_and_set(keys, expected, new, ttl, release),
        )
        .await
    }

    async fn read(&self, keys: &TicketKeys, after_seq: u64) -> Result<TicketView, S::Error> {
        edge::clock::observe(&self.ops, "read", self.store.read(keys, after_seq)).await
    }

    async fn append_logs(&self, keys: &TicketKeys, lines: &[LogLine], ttl: Duration) -> Result<(), S::Error> {
        edge::clock::observe(&self.ops, "append_logs", self.store.append_logs(keys, lines, ttl)).await
    }

    async fn renew_lease(&self, keys: &TicketKeys, owner: &str, ttl: Duration) -> Result<LeaseRenewal, S::Error> {
        edge::clock::observe(&self.ops, "renew_lease", self.store.renew_lease(keys, owner, ttl)).await
    }

    async fn end_run(
        &self,
        keys: &TicketKeys,
        expected: &str,
        new: &TicketRecord,
        lines: &[LogLine],
        lines_written: u64,
        logs_ttl: Option<Duration>,
    ) -> Result<bool, S::Error> {
        let end = self.store.end_run(keys, expected, new, lines, lines_written, logs_ttl);
        edge::clock::observe(&self.ops, "end_run", end).await
    }

    async fn cancel_requested(&self, keys: &TicketKeys) -> Result<bool, S::Error> {
        edge::clock::observe(&self.ops, "cancel_requested", self.store.cancel_requested(keys)).await
    }

    async fn running_tickets(&self, agent_id: &str) -> Result<Vec<String>, S::Error> {
        edge::clock::observe(&self.ops, "running_tickets", self.store.running_tickets(agent_id)).await
    }

    async fn forget_running(&self, agent_id: &str, ticket_key: &str) -> Result<(), S::Error> {
        edge::clock::observe(&self.ops, "forget_running", self.store.forget_running(agent_id, ticket_key)).await
    }

    async fn ping(&self) -> Result<(), S::Error> {
        edge::clock::observe(&self.ops, "ping", self.store.ping()).await
    }

    async fn receipt_head(&self, agent_id: &str) -> Result<Option<ChainHead>, S::Error> {
        edge::clock::observe(&self.ops, "receipt_head", self.store.receipt_head(agent_id)).await
    }

    async fn append_receipt(
        &self,
        agent_id: &str,
        previous: Option<&ChainHead>,
        head: &ChainHead,
        receipt: &str,
    ) -> Result<bool, S::Error> {
        let append = self.store.append_receipt(agent_id, previous, head, receipt);
        edge::clock::observe(&self.ops, "append_receipt", append).await
    }

    async fn pending_receipts(&self, agent_id: &str, limit: usize) -> Result<Vec<(u64, String)>, S::Error> {
        edge::clock::observe(&self.ops, "pending_receipts", self.store.pending_receipts(agent_id, limit)).await
    }

    async fn receipts_published(&self, agent_id: &str, through: u64) -> Result<(), S::Error> {
        edge::clock::observe(&self.ops, "receipts_published", self.store.receipts_published(agent_id, through)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::metrics::Families;
    use contracts::store::memory::MemoryStore;
    use contracts::store::record::{cancel_tombstone, claim_record};

    #[tokio::test]
    async fn every_store_operation_is_timed_under_its_name_whatever_the_backend() {
        let (registry, families) = Families::registry("agent", "Commands refused", "ticket store");
        let store = Observed::agent_store(MemoryStore::new(Arc::default()), families.store);
        let hour = Duration::from_secs(3600);
        let epoch = store.epoch(1_000).await.unwrap();
        let keys = store.keys("t");
        let record = claim_record("a/1", "a", "d".into(), false, None, 1_000);
        store.claim(&keys, &record, hour, hour, &epoch).await.unwrap();
        assert_eq!(
            store.confirm_claim(&keys, &record.encode(), "a/1", hour, 0, hour).await.unwrap(),
            ClaimReplication::Acked(0)
        );
        store.cancel(&keys, &cancel_tombstone("a/1", "a", 1_000), hour, hour).await.unwrap();
        store.confirm_record(&keys, &record.encode(), 0, hour).await.unwrap();
        store.append_logs(&keys, &[], hour).await.unwrap();
        store.renew_lease(&keys, "a/1", hour).await.unwrap();
        store.cancel_requested(&keys).await.unwrap();
        store.end_run(&keys, &record.encode(), &record.completed(0), &[], 0, None).await.unwrap();
        store.compare_and_set(&keys, &record.encode(), &record.completed(0), None, Release::Lease).await.unwrap();
        store.read(&keys, 0).await.unwrap();
        store.running_tickets("a").await.unwrap();
        store.forget_running("a", "t").await.unwrap();
        store.ping().await.unwrap();
        let head = contracts::receipt::ChainHead { sequence: 1, digest: "0".repeat(64) };
        store.receipt_head("a").await.unwrap();
        store.append_receipt("a", None, &head, "r").await.unwrap();
        store.pending_receipts("a", 1).await.unwrap();
        store.receipts_published("a", 1).await.unwrap();
        let text = contracts::metrics::encode(&registry.finish().0);
        for operation in [
            "epoch",
            "claim",
            "confirm_claim",
            "confirm_record",
            "cancel",
            "append_logs",
            "renew_lease",
            "cancel_requested",
            "end_run",
            "compare_and_set",
            "read",
            "running_tickets",
            "forget_running",
            "ping",
            "receipt_head",
            "append_receipt",
            "pending_receipts",
            "receipts_published",
        ] {
            let count = format!("cuttle_store_operation_duration_seconds_count{{operation=\"{operation}\"}} 1\n");
            assert!(text.contains(&count), "{operation} not timed once: {text}");
        }
    }
}
