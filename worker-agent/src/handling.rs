//! The agent as the environment of contracts' flow ([`contracts::agent::flow`]) for one delivery:
//! its store, the system clock and tokio's timers, its scripts (launched as tasks, cancelled,
//! their progress awaited by the long poll), the places for them, the broker's admission of a
//! delivery, and its log lines and metrics for each note the flow takes.

use crate::service::{Agent, Slot};
use crate::store::StoreError;
use crate::workspace;
use contracts::agent::flow::environment::{Environment, Launch, Memory, Note, Settings};
use contracts::agent::keys::AgentKeys;
use contracts::store::Cancel;
use contracts::store::TicketStore;
use contracts::time::unix_millis;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::ticket::Ticket;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The modules whose log lines these were before the flow moved to contracts: their targets are
/// kept, so that the agent's log reads (and filters) as it did.
const SERVICE: &str = "worker_agent::service";
const BROKER: &str = "worker_agent::broker";
const TRUST: &str = "worker_agent::trust";

/// Where a delivery came from: the agent's own queue, or its pool's shared one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Own,
    Pool,
}

/// What the broker's edge tells of one delivery.
pub(crate) struct Received<'a> {
    /// Its AMQP type property, for the log.
    pub kind: Option<String>,
    pub bytes: usize,
    pub source: Source,
    /// Stops waiting for a place for a script: the delivery goes back to its queue.
    pub shutdown: &'a CancellationToken,
    /// Acks the delivery; done early for a request that is not a start taken from a pool's work
    /// queue ([`Environment::admit`]).
    pub ack: Option<BoxFuture<'a, ()>>,
}

/// Marks the runs of an earlier process with this agent id as lost: they can never be finished or
/// restarted, so they report unknown result at once instead of after the lease, each with its
/// receipt. How many.
pub(crate) async fn recover_lost_runs(agent: &Arc<Agent>) -> Result<usize, StoreError> {
    let lost = contracts::agent::flow::script::recover_lost_runs(&mut Handling::new(agent, None)).await?;
    for (ticket, record) in &lost {
        let ended = crate::receipts::Ended {
            ticket: ticket.clone(),
            command_digest: record.digest.clone(),
            provenance: Default::default(),
            started_at: record.claimed_at,
            ended_at: edge::clock::now_ms(),
            exit_code: contracts::wire::exit_code::UNKNOWN_RESULT,
            output: None,
        };
        agent.ledger().record(ended).await;
    }
    Ok(lost.len())
}

/// The agent handling one delivery (or none: its recovery at start).
pub(crate) struct Handling<'a> {
    agent: &'a Arc<Agent>,
    received: Option<Received<'a>>,
    /// The place its script runs in, once admitted.
    slot: Option<Slot>,
    /// When it began to be handled, for the metrics.
    since: Option<std::time::Instant>,
    acked_early: bool,
    /// What the log says when settling the delivery fails.
    unsettled: &'static str,
}

impl<'a> Handling<'a> {
    pub(crate) fn new(agent: &'a Arc<Agent>, received: Option<Received<'a>>) -> Handling<'a> {
        let unsettled = "could not ack delivery";
        Handling { agent, received, slot: None, since: None, acked_early: false, unsettled }
    }

    /// Whether the delivery was acked already ([`Environment::admit`]).
    pub(crate) fn acked_early(&self) -> bool {
        self.acked_early
    }

    /// What the log says when settling the delivery fails: it was rejected, refused, or served.
    pub(crate) fn unsettled(&self) -> &'static str {
        self.unsettled
    }

    fn kind_property(&self) -> Option<&str> {
        self.received.as_ref().and_then(|r| r.kind.as_deref())
    }
}

impl Environment for Handling<'_> {
    type Store = dyn TicketStore<Error = StoreError>;
    type Instant = tokio::time::Instant;

    fn store(&self) -> &Self::Store {
        &**self.agent.store()
    }

    fn settings(&self) -> &Settings {
        self.agent.settings()
    }

    fn memory(&self) -> &Memory {
        self.agent.memory()
    }

    fn keys(&self) -> &AgentKeys {
        self.agent.trust().keys()
    }

    fn now_ms(&self) -> u64 {
        unix_millis(SystemTime::now())
    }

    fn deadline(&self, wait: Duration) -> tokio::time::Instant {
        tokio::time::Instant::now() + wait
    }

    fn reached(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::Instant::now() >= deadline
    }

    async fn wait_for_news(
        &mut self,
        ticket_key: &str,
        last_seq: u64,
        deadline: tokio::time::Instant,
        only_fresh: bool,
    ) {
        self.agent.wait_for_news(ticket_key, last_seq, deadline, only_fresh).await
    }

    async fn admit(&mut self, starts: bool) -> bool {
        let Some(received) = self.received.as_mut() else { return true };
        if starts {
            tokio::select! {
                slot = self.agent.take_slot() => self.slot = slot,
                _ = received.shutdown.cancelled() => return false,
            }
        } else if received.source == Source::Pool {
            // Misrouted to the work queue (dispatchers send these to the service queue): any
            // worker can answer, and the dispatcher repeats what gets no answer, so do not hold
            // the work queue's one delivery while serving it.
            if let Some(ack) = received.ack.take() {
                ack.await;
                self.acked_early = true;
            }
        }
        true
    }

    fn launch(&mut self, launch: Launch) {
        self.agent.launch(launch, self.slot.take());
    }

    fn cancel_run(&mut self, ticket_key: &str) -> bool {
        self.agent.cancel_local_run(ticket_key)
    }

    async fn clean(&mut self, ticket_key: &str) {
        if let Some(workspace) = workspace::workspace_path(&self.agent.config().work_dir, ticket_key) {
            workspace::remove_workspace(&workspace).await;
        }
    }

    async fn transfer(&mut self, request: Request) -> Reply {
        let transfers = &self.agent.transfers;
        let served = match request {
            Request::UploadChunk(chunk) => transfers.upload(chunk).await.map(Reply::TransferStatus),
            Request::DownloadChunk(request) => transfers.download(request).await.map(Reply::FileChunk),
            other => unreachable!("the flow hands only transfers here, not {:?}", other.kind()),
        };
        served.unwrap_or_else(Reply::Error)
    }

    fn new_ticket(&mut self) -> Ticket {
        edge::entropy::ticket()
    }

    fn note(&mut self, note: Note<'_>) {
        let agent_id = &self.agent.config().agent_id;
        let metrics = self.agent.metrics();
        match note {
            Note::Rejected { error } => {
                metrics.common.refusals.refused(error.reply_kind());
                let (kind, bytes) = (self.kind_property(), self.received.as_ref().map_or(0, |r| r.bytes));
                tracing::warn!(target: BROKER, agent = %agent_id, kind = ?kind, bytes, %error, "rejecting message");
                self.unsettled = "could not settle rejected delivery";
            }
            Note::Refused { refusal, signer } => {
                let (kind, key_id) = (self.kind_property(), signer.map(|k| k.to_string()));
                tracing::warn!(target: BROKER, agent = %agent_id, kind = ?kind, key_id = ?key_id, reason = %refusal, "command refused; nothing ran");
                metrics.common.refusals.refused(refusal.counted_as());
                self.unsettled = "could not settle refused delivery";
            }
            Note::SessionAgreed { session, dispatcher } => {
                tracing::debug!(target: TRUST, agent = %agent_id, %session, dispatcher_key = %dispatcher, "session agreed")
            }
            Note::SessionDeclined { dispatcher, message_id, declined } => {
                tracing::warn!(target: TRUST, agent = %agent_id, dispatcher_key = %dispatcher, message_id = %message_id, reason = %declined, "session offer not accepted; the command is handled as any other and answered signed")
            }
            Note::Unsigned { kind } => {
                tracing::warn!(target: BROKER, agent = %agent_id, %kind, "accepting an UNSIGNED command (--insecure-allow-unsigned)")
            }
            Note::Serving { kind, ticket } => {
                let (ticket, source) = (ticket.map(Ticket::to_string), self.received.as_ref().map(|r| r.source));
                let source = source.unwrap_or(Source::Own);
                tracing::debug!(target: BROKER, agent = %agent_id, %kind, ticket = ?ticket, ?source, "request");
                self.since = Some(std::time::Instant::now());
            }
            Note::Served { kind, ticket, reply } => {
                let since = self.since.take().unwrap_or_else(std::time::Instant::now);
                metrics.request(kind, since.elapsed());
                if let Reply::Error(error) = reply {
                    metrics.common.refusals.refused(error.kind);
                    let ticket = ticket.map(Ticket::to_string);
                    tracing::info!(target: BROKER, agent = %agent_id, %kind, ticket = ?ticket, error = %error, "request refused");
                }
            }
            Note::IssuedBeforeLoss { ticket } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, "start refused: issued before the ticket store lost its data")
            }
            Note::EpochChanged { previous, current } => {
                tracing::warn!(target: SERVICE, previous = %previous.value, current = %current.value, "the ticket store lost its data; refusing starts issued before it came back")
            }
            Note::StartDecided { .. } => {}
            Note::Starting { ticket, replicas: None } => {
                tracing::info!(target: SERVICE, ticket = %ticket, agent = %agent_id, "ticket claimed; starting script")
            }
            Note::Starting { ticket, replicas: Some(acked) } => {
                tracing::info!(target: SERVICE, ticket = %ticket, agent = %agent_id, replicas = acked, "ticket claimed and replicated; starting script")
            }
            Note::ClaimLost { ticket } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, "claim lost from the store (failover?) before it was confirmed; not starting")
            }
            Note::ClaimUnreplicated { ticket, acked, wanted } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, replicas = acked, wanted, "claim not yet on enough replicas; not starting")
            }
            Note::StartCancelled { ticket } => {
                tracing::info!(target: SERVICE, ticket = %ticket, "start refused: the ticket was cancelled before it started")
            }
            Note::StartConflict { ticket } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, "start refused: ticket used for a different script")
            }
            Note::DuplicateStart { ticket } => {
                tracing::debug!(target: SERVICE, ticket = %ticket, "duplicate start; answering with status")
            }
            Note::Cancelling { ticket } | Note::CancelStored { ticket, stored: Cancel::Flagged, local: true } => {
                tracing::info!(target: SERVICE, ticket = %ticket, "cancelling script")
            }
            Note::CancelStored { ticket, stored: Cancel::Tombstoned, .. } => {
                tracing::info!(target: SERVICE, ticket = %ticket, "cancel of a ticket not started here; tombstone left so a late start never runs")
            }
            Note::CancelStored { ticket, stored: Cancel::Flagged, local: false } => {
                tracing::info!(target: SERVICE, ticket = %ticket, "cancel flagged for the worker running the script")
            }
            Note::TombstoneUnreplicated { ticket, replication, wanted } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, ?replication, wanted, "cancel's tombstone not yet on enough replicas; not answering it")
            }
            Note::CancelOfLostTicket { ticket } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, "cancel of a ticket the store lost with its data: whether it ran is unknown")
            }
            Note::Completed { ticket } => {
                tracing::info!(target: SERVICE, ticket = %ticket, "script completed; output cleaned, tombstone kept")
            }
            Note::CompleteRaced { ticket } => {
                tracing::debug!(target: SERVICE, ticket = %ticket, "record changed while completing; answering with its status")
            }
            Note::ReportedLost { ticket, previous_owner } => {
                tracing::warn!(target: SERVICE, ticket = %ticket, previous_owner = %previous_owner, "run lost with an earlier agent process; reporting unknown result")
            }
        }
    }
}
