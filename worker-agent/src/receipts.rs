//! The agent's run receipts ([`contracts::receipt`]): one signed as each run ends (and for each
//! run an agent restart finds lost), chained per agent id in the ticket store, kept there until
//! the broker confirms it on the receipts stream ([`Publisher`]), then dropped from the store:
//! a busy fleet makes far more receipts than a shared Redis should hold, and the stream keeps
//! them by size and age.
//!
//! A run's receipt is stored before its end is (the runner records it first), so no run seen to
//! end lacks one; an agent that dies between the two leaves a receipt, and its restart then adds
//! one saying the run was lost.

use crate::broker_call::{call, BrokerError};
use crate::store::AgentStore;
use crate::trust::AgentTrust;
use contracts::agent::flow::environment::Provenance;
use contracts::backoff::Backoff;
use contracts::receipt::{ChainHead, Receipt, SignedReceipt, RECEIPT_VERSION};
use contracts::trust::amqp::with_seal;
use contracts::trust::keys::KeyId;
use contracts::wire::topology::amqp::receipts_stream_arguments;
use contracts::wire::topology::{CONTENT_TYPE, RECEIPTS_MAX_AGE, RECEIPTS_MAX_BYTES, RECEIPTS_STREAM, RECEIPT_TYPE};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending receipts published per round, each confirmed before the store drops them; also how
/// many fresh receipts wait in memory for the publisher before it reads the store instead.
const BATCH: usize = 256;
/// How long the publisher waits after a new receipt for more, so that a busy agent confirms and
/// drops them from the store together.
const LINGER: Duration = Duration::from_millis(10);
/// How often a publisher that is behind reads the store again (after a failed round).
const SWEEP: Duration = Duration::from_secs(5);

/// How one run ended, for its receipt.
pub(crate) struct Ended {
    pub ticket: String,
    pub command_digest: String,
    /// Where its start came from; the default for a lost run, whose start is not known.
    pub provenance: Provenance,
    pub started_at: u64,
    pub ended_at: u64,
    pub exit_code: i32,
    /// The output's digest and line count; none for a lost run.
    pub output: Option<(String, u64)>,
}

/// This agent id's receipt chain: receipts signed and appended one at a time.
pub(crate) struct Ledger {
    store: AgentStore,
    trust: Arc<AgentTrust>,
    agent_id: String,
    pool: Option<String>,
    /// The chain's head as this process last wrote or read it; `None` until read.
    head: tokio::sync::Mutex<Option<Option<ChainHead>>>,
    /// Receipts stored since the publisher last took them, so that it need not read them back;
    /// at most [`BATCH`], after which `behind` tells it to read the store.
    fresh: std::sync::Mutex<Vec<(u64, SignedReceipt)>>,
    behind: std::sync::atomic::AtomicBool,
    /// The highest sequence the broker confirmed: a receipt both fresh and read from the store
    /// is published once.
    published: std::sync::atomic::AtomicU64,
    /// Tells the publisher a receipt is waiting.
    pending: Notify,
}

impl Ledger {
    pub(crate) fn new(store: AgentStore, trust: Arc<AgentTrust>, agent_id: String, pool: Option<String>) -> Ledger {
        Ledger {
            store,
            trust,
            agent_id,
            pool,
            head: tokio::sync::Mutex::new(None),
            fresh: std::sync::Mutex::default(),
            behind: std::sync::atomic::AtomicBool::new(true),
            published: std::sync::atomic::AtomicU64::new(0),
            pending: Notify::new(),
        }
    }

    /// Signs the receipt of `ended` and appends it to the chain, retrying while the store is
    /// unreachable (as a run's end does). A legacy agent, which has no key, makes none.
    pub(crate) async fn record(&self, ended: Ended) {
        if !self.trust.signs() {
            return;
        }
        // 100 ms after a blip, at most every 2 s while the store stays away.
        let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
        let mut head = self.head.lock().await;
        loop {
            let current = match head.clone() {
                Some(current) => current,
                None => match self.store.receipt_head(&self.agent_id).await {
                    Ok(current) => current,
                    Err(error) => {
                        tracing::warn!(ticket = %ended.ticket, %error, "could not read the receipt chain; retrying");
                        tokio::time::sleep(backoff.next_pause()).await;
                        continue;
                    }
                },
            };
            // A store that lost the chain starts it again: nothing of the new one is published yet.
            let head_sequence = current.as_ref().map_or(0, |head| head.sequence);
            self.published.fetch_min(head_sequence, std::sync::atomic::Ordering::SeqCst);
            let Some(signed) = self.trust.sign_receipt(&self.receipt(&ended, current.as_ref())) else { return };
            let next = ChainHead::of(&signed, ChainHead::next(current.as_ref()).0);
            match self.store.append_receipt(&self.agent_id, current.as_ref(), &next, &signed.to_text()).await {
                Ok(true) => {
                    self.hand_over(next.sequence, signed);
                    *head = Some(Some(next));
                    break;
                }
                Ok(false) => {
                    // An earlier attempt whose answer was lost may have written this very
                    // receipt (signatures are deterministic): then the head is it.
                    let stored = self.store.receipt_head(&self.agent_id).await.ok().flatten();
                    if stored.as_ref() == Some(&next) {
                        *head = Some(stored);
                        break;
                    }
                    tracing::warn!(ticket = %ended.ticket, "the receipt chain moved under this process (another agent with this id?); following it");
                    *head = None;
                }
                Err(error) => {
                    tracing::warn!(ticket = %ended.ticket, %error, "could not store the run's receipt; retrying");
                    *head = Some(current);
                    tokio::time::sleep(backoff.next_pause()).await;
                }
            }
        }
        drop(head);
        self.pending.notify_one();
    }

    /// Gives a stored receipt to the publisher, or, when it has [`BATCH`] waiting already (the
    /// broker is away), tells it to read the store instead.
    fn hand_over(&self, sequence: u64, signed: SignedReceipt) {
        let mut fresh = self.fresh.lock().expect("fresh receipts poisoned");
        if fresh.len() < BATCH {
            fresh.push((sequence, signed));
        } else {
            self.behind.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// What the publisher publishes next: the fresh receipts, or, when it is behind (at its
    /// start, after a failure, past [`BATCH`]), up to [`BATCH`] pending ones from the store.
    async fn next_batch(&self) -> Result<Vec<(u64, SignedReceipt)>, crate::store::StoreError> {
        let published = self.published.load(std::sync::atomic::Ordering::SeqCst);
        if !self.behind.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let mut fresh = std::mem::take(&mut *self.fresh.lock().expect("fresh receipts poisoned"));
            fresh.retain(|(sequence, _)| *sequence > published);
            return Ok(fresh);
        }
        // Everything fresh is in the store too: read from there alone.
        self.fresh.lock().expect("fresh receipts poisoned").clear();
        let pending = match self.store.pending_receipts(&self.agent_id, BATCH).await {
            Ok(pending) => pending,
            Err(error) => {
                self.behind.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(error);
            }
        };
        if pending.len() == BATCH {
            // More than a batch waits: read again next round.
            self.behind.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let mut batch = Vec::with_capacity(pending.len());
        for (sequence, text) in pending.into_iter().filter(|(sequence, _)| *sequence > published) {
            match SignedReceipt::from_text(&text) {
                Ok(signed) => batch.push((sequence, signed)),
                // Only this code writes them; one that cannot be read must not hold up the rest.
                Err(error) => {
                    tracing::error!(agent = %self.agent_id, sequence, %error, "dropping an unreadable pending receipt")
                }
            }
        }
        Ok(batch)
    }

    fn receipt(&self, ended: &Ended, head: Option<&ChainHead>) -> Receipt {
        let (sequence, previous) = ChainHead::next(head);
        let (output_sha256, lines) = ended.output.clone().unzip();
        Receipt {
            version: RECEIPT_VERSION,
            agent_id: self.agent_id.clone(),
            pool: self.pool.clone(),
            sequence,
            previous,
            ticket: ended.ticket.clone(),
            command_digest: ended.command_digest.clone(),
            signed_by: ended.provenance.signed_by.iter().map(KeyId::to_string).collect(),
            started_at: ended.started_at,
            ended_at: ended.ended_at,
            exit_code: ended.exit_code,
            output_sha256,
            lines,
            purpose: ended.provenance.purpose.clone(),
            submitter: ended.provenance.submitter.clone(),
            approved_by: ended.provenance.approved_by.iter().map(KeyId::to_string).collect(),
        }
    }
}

/// Declares the receipts stream unless it exists (its retention is then the operator's, from
/// `dispatcher setup-broker`); an `enrolled` agent only looks for it.
async fn declare_stream(connection: &Connection, enrolled: bool) -> Result<Channel, BrokerError> {
    let channel = call("channel.open", CALL_TIMEOUT, connection.create_channel()).await?;
    let passive = QueueDeclareOptions { durable: true, passive: true, ..Default::default() };
    let found = call(
        "queue.declare",
        CALL_TIMEOUT,
        channel.queue_declare(RECEIPTS_STREAM.into(), passive, FieldTable::default()),
    )
    .await;
    match (found, enrolled) {
        (Ok(_), _) => Ok(channel),
        (Err(error), true) => Err(error),
        (Err(_), false) => {
            // The failed passive declare closed that channel.
            let channel = call("channel.open", CALL_TIMEOUT, connection.create_channel()).await?;
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            let arguments = receipts_stream_arguments(RECEIPTS_MAX_AGE, RECEIPTS_MAX_BYTES);
            call("queue.declare", CALL_TIMEOUT, channel.queue_declare(RECEIPTS_STREAM.into(), options, arguments))
                .await?;
            Ok(channel)
        }
    }
}

/// Publishes the pending receipts of one broker connection, each confirmed by the broker before
/// the store drops it. Stopped (dropped) with its connection; the next connection starts another.
pub(crate) struct Publisher {
    stop: CancellationToken,
}

impl Publisher {
    /// Declares the stream and starts publishing on a channel of its own. Receipts are not worth
    /// refusing work for: without the stream they wait in the store, and the log says so.
    pub(crate) async fn start(ledger: Arc<Ledger>, enrolled: bool, connection: &Connection) -> Option<Publisher> {
        if !ledger.trust.signs() {
            return None;
        }
        let id = ledger.agent_id.clone();
        let channel = match declare_stream(connection, enrolled).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(agent = %id, %error, stream = RECEIPTS_STREAM, "cannot use the receipts stream; receipts wait in the ticket store");
                return None;
            }
        };
        if let Err(error) =
            call("confirm.select", CALL_TIMEOUT, channel.confirm_select(ConfirmSelectOptions::default())).await
        {
            tracing::warn!(agent = %id, %error, "cannot publish receipts with confirms; receipts wait in the ticket store");
            return None;
        }
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        // A new connection starts from the store: receipts an earlier one or process left.
        ledger.behind.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            loop {
                if let Err(error) = publish_pending(&ledger, &channel).await {
                    ledger.behind.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(agent = %ledger.agent_id, %error, "could not publish receipts; they wait in the ticket store");
                    if !channel.status().connected() {
                        return;
                    }
                }
                let retry = ledger.behind.load(std::sync::atomic::Ordering::SeqCst);
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = ledger.pending.notified() => tokio::time::sleep(LINGER).await,
                    _ = tokio::time::sleep(SWEEP), if retry => {}
                }
            }
        });
        Some(Publisher { stop })
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Why pending receipts could not be published.
#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker refused receipt {0}")]
    Nacked(u64),
}

/// Publishes pending receipts a batch at a time until none is left, and drops each batch from
/// the store once the broker confirmed all of it.
async fn publish_pending(ledger: &Ledger, channel: &Channel) -> Result<(), PublishError> {
    loop {
        let batch = ledger.next_batch().await?;
        let Some(&(through, _)) = batch.last() else { return Ok(()) };
        let mut confirms = Vec::with_capacity(batch.len());
        for (sequence, signed) in &batch {
            let properties = with_seal(
                BasicProperties::default().with_type(RECEIPT_TYPE.into()).with_content_type(CONTENT_TYPE.into()),
                &signed.seal(),
            );
            let publish = channel.basic_publish(
                "".into(),
                RECEIPTS_STREAM.into(),
                BasicPublishOptions::default(),
                &signed.body,
                properties,
            );
            confirms.push((*sequence, call("basic.publish", CALL_TIMEOUT, publish).await?));
        }
        for (sequence, confirm) in confirms {
            let confirmation = call("basic.ack", CALL_TIMEOUT, confirm).await?;
            if confirmation.is_nack() {
                return Err(PublishError::Nacked(sequence));
            }
        }
        ledger.store.receipts_published(&ledger.agent_id, through).await?;
        ledger.published.fetch_max(through, std::sync::atomic::Ordering::SeqCst);
        tracing::debug!(agent = %ledger.agent_id, through, "receipts published");
    }
}
