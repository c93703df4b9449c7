//! The service's copy of its tickets' receipts ([`contracts::receipt`]): each replica reads the
//! receipts stream ([`follow`]) and keeps, in the hash of a ticket its journal holds, the first
//! receipt for it that verifies under the pinned agent key (field `receipt`), so it lives as
//! long as the ticket's history. Where the stream was read to is kept too (`receipts-offset`), so
//! a restarted service goes on from there. What the API and the web view show of a receipt
//! ([`ReceiptView`]) is checked again as it is read: whoever can write to the journal cannot
//! make a ticket look verified.

use super::journal::{Journal, TicketRecord};
use crate::rpc::{self, RpcConfig};
use contracts::backoff::Backoff;
use contracts::receipt::verify::believe;
use contracts::receipt::SignedReceipt;
use contracts::trust::amqp::seal_of;
use contracts::trust::files::KnownAgents;
use contracts::wire::ticket::Ticket;
use contracts::wire::topology::{RECEIPTS_STREAM, RECEIPT_TYPE};
use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The journal key of the stream's offset (a ticket's receipt is its hash's field `receipt`).
const OFFSET_KEY: &str = "receipts-offset";
/// How far back a service that never read the stream starts.
const FIRST_LOOKBACK: Duration = Duration::from_secs(60);
/// Deliveries in flight; and how often the offset read to is written, at most.
const PREFETCH: u16 = 256;
const OFFSET_EVERY: Duration = Duration::from_secs(1);
/// How often the known agents are read again while following.
const KNOWN_EVERY: Duration = Duration::from_secs(10);

/// Keeps ARGV[1] as the receipt of the ticket whose hash is KEYS[1], if the journal holds the
/// ticket and has no receipt for it yet (1 if kept).
const KEEP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'receipt', ARGV[1])
"#;

/// A ticket's receipt as `GET /v1/tickets/{ticket}` and the web view show it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ReceiptView {
    /// It verifies under the key pinned for its agent, and its agent made it for this ticket
    /// (the agent it went to, or a worker of its pool).
    pub verified: bool,
    /// Why it does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub agent_id: String,
    /// Its place in the agent's chain.
    pub sequence: u64,
    pub exit_code: i32,
    /// SHA-256 of the output as the agent delivered it; none for a run it lost.
    pub output_sha256: Option<String>,
    /// The signed receipt, as `dispatcher verify` reads it.
    pub receipt: String,
}

impl ReceiptView {
    /// What `record`'s receipt says, checked against `known`; none before it came.
    pub(crate) fn of(record: &TicketRecord, known: &KnownAgents) -> Option<ReceiptView> {
        let text = record.receipt.as_deref()?;
        let signed = SignedReceipt::from_text(text).ok()?;
        let receipt = signed.receipt().ok()?;
        let submission = &record.submission;
        let problem = match believe(&signed, known) {
            Err(unbelieved) => Some(unbelieved.to_string()),
            Ok(_) if Ticket::parse(&receipt.ticket).ok().as_ref() != Some(&submission.ticket) => {
                Some(format!("made for ticket {}", receipt.ticket))
            }
            Ok(_) if !made_by_target(&receipt, &submission.route, &submission.target) => {
                Some(format!("made by agent {}, which the ticket did not go to", receipt.agent_id))
            }
            Ok(_) => None,
        };
        Some(ReceiptView {
            verified: problem.is_none(),
            problem,
            agent_id: receipt.agent_id,
            sequence: receipt.sequence,
            exit_code: receipt.exit_code,
            output_sha256: receipt.output_sha256,
            receipt: text.to_owned(),
        })
    }
}

/// Whether the receipt's agent is the ticket's target: the agent, or a worker of the pool.
fn made_by_target(receipt: &contracts::receipt::Receipt, route: &str, target: &str) -> bool {
    match route {
        "pool" => receipt.pool.as_deref() == Some(target),
        _ => receipt.agent_id == target,
    }
}

/// Why following the stream stopped (it is started again).
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Connect(#[from] crate::error::RpcError),
    #[error("broker call failed: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Journal(#[from] super::journal::JournalError),
    #[error("the journal is unreachable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the receipts stream does not exist yet (agents declare it)")]
    NoStream,
}

/// Follows the receipts stream until `shutdown`, keeping the receipts of the journal's tickets;
/// reconnects after a failure.
pub(crate) async fn follow(journal: Journal, rpc: RpcConfig, shutdown: CancellationToken) {
    let Some(trust) = rpc.trust.clone() else { return };
    // 1 s after a failure, at most every 30 s while it lasts.
    let mut backoff = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match follow_once(&journal, &rpc, &trust, &shutdown).await {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "cannot follow the receipts stream; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

async fn follow_once(
    journal: &Journal,
    rpc: &RpcConfig,
    trust: &crate::trust::DispatcherTrust,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    let connection = rpc::connect(rpc, "cuttle-dispatcher serve receipts").await?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    if channel.queue_declare(RECEIPTS_STREAM.into(), passive, FieldTable::default()).await.is_err() {
        return Err(FollowError::NoStream);
    }
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut con = journal.connection().await?;
    let stored: Option<i64> = con.get(journal.key(OFFSET_KEY)).await?;
    let start = match stored {
        Some(offset) => AMQPValue::LongLongInt(offset + 1),
        None => {
            let from = SystemTime::now() - FIRST_LOOKBACK;
            AMQPValue::Timestamp(from.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
        }
    };
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), start);
    let mut consumer =
        channel.basic_consume(RECEIPTS_STREAM.into(), "".into(), BasicConsumeOptions::default(), arguments).await?;
    tracing::info!(stream = RECEIPTS_STREAM, "keeping the receipts of the journal's tickets");
    let keep = redis::Script::new(KEEP);
    let (mut known, mut known_at) = (trust.known_agents(), Instant::now());
    let (mut offset, mut written_at) = (None, Instant::now());
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            delivery = consumer.next() => delivery,
        };
        let Some(delivery) = delivery else { break };
        let delivery = delivery?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        if let Some(AMQPValue::LongLongInt(at)) =
            delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-stream-offset")).cloned()
        {
            offset = Some(at);
        }
        let kind = delivery.properties.kind().as_ref().map(ShortString::as_str);
        let seal = seal_of(&delivery.properties).ok().flatten();
        if let (Some(RECEIPT_TYPE), Some(signed)) = (kind, SignedReceipt::sealed(delivery.data, seal)) {
            if known_at.elapsed() > KNOWN_EVERY {
                (known, known_at) = (trust.known_agents(), Instant::now());
            }
            // Only receipts that verify are kept: a forged one must not take a ticket's place.
            if let Ok(receipt) = believe(&signed, &known) {
                if let Ok(ticket) = Ticket::parse(&receipt.ticket) {
                    let _: i64 =
                        keep.key(journal.ticket_key(&ticket)).arg(signed.to_text()).invoke_async(&mut con).await?;
                }
            }
        }
        if let (Some(at), true) = (offset, written_at.elapsed() > OFFSET_EVERY) {
            let _: () = con.set(journal.key(OFFSET_KEY), at).await?;
            written_at = Instant::now();
        }
    }
    if let Some(at) = offset {
        let _: () = con.set(journal.key(OFFSET_KEY), at).await?;
    }
    let _ = connection.close(200, "service stopping".into()).await;
    Ok(())
}
