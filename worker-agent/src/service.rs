//! The agent's services: capabilities, script v2 and script v1. Each request is answered from
//! the ticket store by the rules in [`crate::rules`]; the broker edge only decodes and replies.

use crate::config::{AgentConfig, Protocol};
use crate::isolation::Mutexes;
use crate::metrics::Metrics;
use crate::output::Progress;
use crate::rules::{self, CompleteDecision, Recovery, StartDecision, TicketRecord, SKIP_LOGS};
use crate::runner::Run;
use crate::store::{AgentStore, Cancel, Claim, ClaimReplication, Epoch, Release, StoreError, TicketKeys};
use crate::trust::AgentTrust;
use crate::workspace;
use contracts::agent::{status_from, status_without_logs};
use contracts::topology::MAX_STATUS_WAIT_MS;
use contracts::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a waiting status request that got new output still waits for the script's end.
const LINGER: Duration = Duration::from_millis(20);

/// How long a claim waits for its replicas (`--claim-replicas`) before the start is answered
/// transient: well inside the dispatcher's attempt timeout.
const CLAIM_REPLICA_WAIT: Duration = Duration::from_secs(1);

/// How often a status request waiting on a run this process does not own looks again.
const REMOTE_POLL: Duration = Duration::from_millis(200);

/// A run of this process, for cancel and for status requests waiting on its progress.
struct LocalRun {
    cancel: CancellationToken,
    progress: watch::Receiver<Progress>,
}

pub struct Agent {
    config: AgentConfig,
    store: AgentStore,
    /// This process's identity as a ticket owner: the agent id and a fresh instance id.
    owner: String,
    runs: Mutex<HashMap<String, LocalRun>>,
    mutexes: Arc<Mutexes>,
    tracker: tokio_util::task::TaskTracker,
    /// Whether the agent is consuming its queue now.
    ready: watch::Sender<bool>,
    /// The ticket store's epoch as last seen; a change means it lost its data.
    epoch: Mutex<Epoch>,
    /// Free places for scripts, when `max_scripts` bounds them.
    slots: Option<Arc<Semaphore>>,
    /// Tickets this process claimed whose claim the replicas have not confirmed yet: not
    /// started, and started only by this process, once, after a repeat confirms them.
    unconfirmed: Mutex<HashSet<String>>,
    /// `config.pass_env`, shared with every run.
    pass_env: Arc<[String]>,
    metrics: Metrics,
    /// File transfer below `config.transfer_roots`.
    transfers: crate::transfer::Transfers,
    /// The agent's key and the dispatcher keys it trusts.
    trust: Arc<AgentTrust>,
    /// Stops following cancel notices ([`Agent::listen_for_cancels`]) once no script runs.
    notices_stop: CancellationToken,
}

/// A place for one running script, held until it ends.
pub type Slot = OwnedSemaphorePermit;

fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}

fn unavailable(error: StoreError) -> Reply {
    Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, format!("{error}; nothing was started")))
}

impl Agent {
    /// An agent serving with `store`; `owner` is this process's identity as a ticket owner.
    pub fn new(
        config: AgentConfig,
        store: AgentStore,
        epoch: Epoch,
        owner: String,
        metrics: Metrics,
        trust: Arc<AgentTrust>,
    ) -> Arc<Self> {
        let config_slots = config.max_scripts.map(|n| Arc::new(Semaphore::new(n.max(1))));
        Arc::new(Agent {
            pass_env: config.pass_env.clone().into(),
            transfers: crate::transfer::Transfers::new(config.transfer_roots.clone()),
            config,
            store,
            owner,
            runs: Mutex::default(),
            mutexes: Arc::default(),
            tracker: tokio_util::task::TaskTracker::new(),
            ready: watch::channel(false).0,
            epoch: Mutex::new(epoch),
            slots: config_slots,
            unconfirmed: Mutex::default(),
            metrics,
            trust,
            notices_stop: CancellationToken::new(),
        })
    }

    /// With a Redis store, follows the cancels published for tickets under the store's prefix
    /// ([`crate::cancel_notices`]) and stops this process's run of each, until
    /// [`Agent::stop_scripts`]: a cancel another worker of the pool took reaches the script at
    /// once, not at the next lease renewal.
    pub fn listen_for_cancels(self: &Arc<Self>) {
        if self.config.store != crate::config::StoreKind::Redis {
            return;
        }
        let agent = Arc::downgrade(self);
        let on_cancel = move |ticket: &str| {
            if agent.upgrade().is_some_and(|agent| agent.cancel_local_run(ticket)) {
                tracing::info!(ticket = %ticket, "cancel requested through the store; cancelling script");
            }
        };
        tokio::spawn(crate::cancel_notices::follow(
            self.config.redis_target(),
            self.config.key_prefix.clone(),
            self.config.connect_timeout,
            self.notices_stop.clone(),
            on_cancel,
        ));
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn trust(&self) -> &AgentTrust {
        &self.trust
    }

    pub fn store(&self) -> &AgentStore {
        &self.store
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// Follows whether the agent is consuming its queue.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Scripts this process is running now.
    pub fn running(&self) -> usize {
        self.runs.lock().expect("runs poisoned").len()
    }

    /// Whether a script of this process runs for `ticket_key` now.
    pub fn is_running(&self, ticket_key: &str) -> bool {
        self.runs.lock().expect("runs poisoned").contains_key(ticket_key)
    }

    /// Isolation mutex names in use now (held or waited for): freed once unused.
    pub fn isolation_mutexes(&self) -> usize {
        self.mutexes.len()
    }

    /// Cancels every running script and waits for them to record their outcome.
    pub async fn stop_scripts(&self) {
        for run in self.runs.lock().expect("runs poisoned").values() {
            run.cancel.cancel();
        }
        self.tracker.close();
        self.tracker.wait().await;
        self.notices_stop.cancel();
    }

    /// The services this agent answers, as its capabilities reply and announcements list them.
    /// File transfer is listed only when the agent has transfer roots.
    pub fn services(&self) -> Vec<String> {
        let mut services = vec![
            SERVICE_CAPABILITIES.into(),
            SERVICE_SCRIPT_V1.into(),
            SERVICE_SCRIPT_V2.into(),
            SERVICE_SECRET_MASKING.into(),
        ];
        if self.trust.signs() {
            services.push(contracts::SERVICE_SEALED_SECRETS.into());
            services.push(contracts::SERVICE_ANSWER_BINDING.into());
        }
        if self.transfers.enabled() {
            services.push(transfer::SERVICE_FILE_TRANSFER.into());
        }
        services
    }

    /// Waits for a place for one more script; `None` when scripts are not bounded.
    pub async fn take_slot(&self) -> Option<Slot> {
        let slots = self.slots.clone()?;
        Some(slots.acquire_owned().await.expect("slots are never closed"))
    }

    /// Whether this agent serves a kind at all; a legacy (v1) agent knows only script v1.
    pub fn serves(&self, kind: Kind) -> bool {
        match self.config.protocol {
            Protocol::V2 => true,
            Protocol::V1 => {
                matches!(kind, Kind::StartScriptV1 | Kind::GetStatusV1 | Kind::CancelScriptV1 | Kind::CompleteScriptV1)
            }
        }
    }

    /// Marks the runs of an earlier process with this agent id as lost: they can never be
    /// finished or restarted, so they report unknown result at once instead of after the lease.
    pub async fn recover_lost_runs(&self) -> Result<usize, StoreError> {
        let mut lost = 0;
        for ticket in self.store.running_tickets(&self.config.agent_id).await? {
            let keys = self.store.keys(&ticket);
            let view = self.store.read(&keys, SKIP_LOGS).await?;
            match (rules::recover_run(view.record.as_ref().map(|(r, _)| r), &self.owner), view.record) {
                (Recovery::ReportLost(lost_run), Some((record, raw))) => {
                    self.store.compare_and_set(&keys, &raw, &lost_run, None, Release::Lease).await?;
                    tracing::warn!(ticket = %ticket, previous_owner = %record.owner, "run lost with an earlier agent process; reporting unknown result");
                    lost += 1;
                }
                _ => self.store.forget_running(&self.config.agent_id, &ticket).await?,
            }
        }
        Ok(lost)
    }

    /// Serves one decoded request; a start runs its script in `slot` (taken by the caller when
    /// scripts are bounded).
    pub async fn handle(self: &Arc<Self>, header: &Envelope<()>, request: Request, slot: Option<Slot>) -> Reply {
        if !self.serves(request.kind()) {
            return Reply::Error(ErrorReply::new(
                ErrorKind::Unsupported,
                format!("unsupported message kind {:?}", header.kind),
            ));
        }
        if let Err(expired) = rules::check_fresh(header.not_after, now_ms()) {
            return Reply::Error(expired);
        }
        match request {
            Request::GetCapabilities(_) => Reply::Capabilities(Capabilities {
                services: self.services(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
            }),
            Request::StartScriptV2(mut start) => {
                if let Err(refused) = self.trust.open_secrets(&mut start) {
                    return Reply::Error(refused);
                }
                let first_issued_at = start.first_issued_at.unwrap_or(header.issued_at);
                let wait = start.wait_for_output;
                self.start(start.ticket, start.spec, header.not_after, wait, Some(first_issued_at), slot).await
            }
            Request::StartScriptV1(start) => self.start(Ticket::generate(), start.spec, None, None, None, slot).await,
            Request::GetStatusV2(s) => self.status(&s.ticket, s.last_log_sequence, s.wait).await,
            Request::GetStatusV1(s) => self.status(&s.ticket, s.last_log_sequence, None).await,
            Request::CancelScriptV2(c) => self.cancel(&c.ticket, c.last_log_sequence, c.first_issued_at).await,
            Request::CancelScriptV1(c) => self.cancel(&c.ticket, c.last_log_sequence, None).await,
            Request::CompleteScriptV2(c) => self.complete(&c.ticket).await,
            Request::CompleteScriptV1(c) => self.complete(&c.ticket).await,
            Request::UploadChunk(chunk) => match self.transfers.upload(chunk).await {
                Ok(status) => Reply::TransferStatus(status),
                Err(error) => Reply::Error(error),
            },
            Request::DownloadChunk(request) => match self.transfers.download(request).await {
                Ok(chunk) => Reply::FileChunk(chunk),
                Err(error) => Reply::Error(error),
            },
        }
    }

    /// Claims the ticket and runs the script once; any copy after the first gets the ticket's
    /// status (or a conflict, for a different script under the same ticket).
    async fn start(
        self: &Arc<Self>,
        ticket: Ticket,
        spec: ScriptSpec,
        not_after: Option<u64>,
        wait: Option<u64>,
        first_issued_at: Option<u64>,
        slot: Option<Slot>,
    ) -> Reply {
        let keys = self.store.keys(&ticket.store_key());
        let digest = spec.digest();
        let waits_for_mutex = spec.mutex().is_some();
        let record = rules::claim_record(
            &self.owner,
            &self.config.agent_id,
            digest.clone(),
            waits_for_mutex,
            not_after,
            now_ms(),
        );
        let claim = loop {
            let epoch = self.epoch.lock().expect("epoch poisoned").clone();
            if let Err(refused) = rules::check_issued_since(first_issued_at, epoch.created_ms) {
                tracing::warn!(ticket = %ticket, "start refused: issued before the ticket store lost its data");
                return Reply::Error(refused);
            }
            match self.store.claim(&keys, &record, self.config.record_ttl, self.config.lease_ttl, &epoch).await {
                Ok(Claim::EpochChanged) => match self.store.epoch(now_ms()).await {
                    Ok(current) => {
                        tracing::warn!(previous = %epoch.value, current = %current.value, "the ticket store lost its data; refusing starts issued before it came back");
                        *self.epoch.lock().expect("epoch poisoned") = current;
                    }
                    Err(error) => return unavailable(error),
                },
                other => break other,
            }
        };
        let claim = match claim {
            Err(error) => return unavailable(error),
            Ok(claim) => claim,
        };
        let unconfirmed = self.unconfirmed.lock().expect("unconfirmed poisoned").contains(&keys.ticket);
        match (rules::decide_start(&claim, &digest, &self.owner, self.config.claim_replicas, unconfirmed), claim) {
            (StartDecision::Run, _) => {
                tracing::info!(ticket = %ticket, agent = %self.config.agent_id, "ticket claimed; starting script");
                self.launch(keys, record, spec, slot);
            }
            (StartDecision::Confirm, Claim::Existing { record: existing, raw, .. }) => {
                // The repeat of a start whose claim the replicas had not confirmed: confirm
                // it now, and start the script only then.
                if let Err(refused) = self.confirm_and_launch(&ticket, keys, &raw, existing, spec, slot).await {
                    return refused;
                }
            }
            (StartDecision::Confirm, _) => {
                self.unconfirmed.lock().expect("unconfirmed poisoned").insert(keys.ticket.clone());
                let raw = record.encode();
                if let Err(refused) = self.confirm_and_launch(&ticket, keys, &raw, record, spec, slot).await {
                    return refused;
                }
            }
            (StartDecision::Cancelled, _) => {
                tracing::info!(ticket = %ticket, "start refused: the ticket was cancelled before it started");
                return Reply::ScriptStatus(rules::cancelled_status(&ticket));
            }
            (StartDecision::Conflict(conflict), _) => {
                tracing::warn!(ticket = %ticket, "start refused: ticket used for a different script");
                return Reply::Error(conflict);
            }
            (StartDecision::Status, _) => tracing::debug!(ticket = %ticket, "duplicate start; answering with status"),
        }
        self.status(&ticket, 0, wait).await
    }

    /// Waits for `claim_replicas` replicas to hold this process's claim `raw`, then starts the
    /// script, once: the claim leaves the unconfirmed set as it starts. Not confirmed in time
    /// (or the claim lost with a failed master) answers a transient error, so the dispatcher
    /// repeats the start; nothing started.
    async fn confirm_and_launch(
        self: &Arc<Self>,
        ticket: &Ticket,
        keys: TicketKeys,
        raw: &str,
        record: TicketRecord,
        spec: ScriptSpec,
        slot: Option<Slot>,
    ) -> Result<(), Reply> {
        let wanted = self.config.claim_replicas;
        let replication = self
            .store
            .confirm_claim(&keys, raw, &self.owner, self.config.lease_ttl, wanted, CLAIM_REPLICA_WAIT)
            .await
            .map_err(unavailable)?;
        match rules::check_replicated(&replication, wanted, CLAIM_REPLICA_WAIT) {
            Ok(acked) => {
                if self.unconfirmed.lock().expect("unconfirmed poisoned").remove(&keys.ticket) {
                    tracing::info!(ticket = %ticket, agent = %self.config.agent_id, replicas = acked, "ticket claimed and replicated; starting script");
                    self.launch(keys, record, spec, slot);
                }
                Ok(())
            }
            Err(refused) => {
                match replication {
                    ClaimReplication::Lost => {
                        self.unconfirmed.lock().expect("unconfirmed poisoned").remove(&keys.ticket);
                        tracing::warn!(ticket = %ticket, "claim lost from the store (failover?) before it was confirmed; not starting");
                    }
                    ClaimReplication::Acked(acked) => {
                        tracing::warn!(ticket = %ticket, replicas = acked, wanted, "claim not yet on enough replicas; not starting")
                    }
                }
                Err(Reply::Error(refused))
            }
        }
    }

    fn launch(self: &Arc<Self>, keys: TicketKeys, record: TicketRecord, spec: ScriptSpec, slot: Option<Slot>) {
        let ticket = keys.ticket.clone();
        let Some(workspace) = workspace::workspace_path(&self.config.work_dir, &ticket) else {
            // Decoding refuses such tickets: this is the last guard before the file system. The
            // claim reads as unknown result once its lease has run out.
            tracing::error!(ticket = %ticket, "ticket is not a plain name; not running it");
            return;
        };
        let (progress, watcher) = watch::channel(Progress { next_log_sequence: 1, complete: false });
        let cancel = CancellationToken::new();
        self.runs
            .lock()
            .expect("runs poisoned")
            .insert(ticket.clone(), LocalRun { cancel: cancel.clone(), progress: watcher });
        let run = Run {
            store: self.store.clone(),
            workspace,
            record_raw: record.encode(),
            keys,
            record,
            spec,
            cancel,
            progress,
            mutexes: self.mutexes.clone(),
            lease_ttl: self.config.lease_ttl,
            record_ttl: self.config.record_ttl,
            pass_env: self.pass_env.clone(),
            metrics: self.metrics.clone(),
            max_output: self.config.max_output,
        };
        let agent = self.clone();
        let counted = self.metrics.common.scripts.start();
        self.tracker.spawn(async move {
            let exit = run.execute().await;
            counted.finish(contracts::metrics::outcome_of_exit(exit));
            drop(slot);
            agent.runs.lock().expect("runs poisoned").remove(&ticket);
        });
    }

    /// The ticket's status with the lines after `last_seq`, held up to `wait` ms until there
    /// is new output or the script ends. New output from a run of this process is held a moment
    /// longer ([`LINGER`]) in case the script is just ending, so a short script is answered
    /// complete in one reply.
    async fn status(&self, ticket: &Ticket, last_seq: u64, wait: Option<u64>) -> Reply {
        let keys = self.store.keys(&ticket.store_key());
        let wait = Duration::from_millis(wait.unwrap_or(0).min(MAX_STATUS_WAIT_MS));
        let deadline = tokio::time::Instant::now() + wait;
        if wait > Duration::ZERO {
            // Nothing to read yet from a run this process only just started.
            self.wait_for_news(&keys.ticket, last_seq, deadline, true).await;
        }
        loop {
            let status = match self.store.read(&keys, last_seq).await {
                Ok(view) => status_from(ticket, last_seq, view),
                Err(error) => return Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string())),
            };
            let now = tokio::time::Instant::now();
            if !status.logs.is_empty() || status.is_complete() || now >= deadline {
                return Reply::ScriptStatus(status);
            }
            self.wait_for_news(&keys.ticket, last_seq, deadline, false).await;
        }
    }

    /// Waits until a run of this process has output after `last_seq` or has ended (then a
    /// moment more, [`LINGER`], for its end), or, for a run elsewhere, one poll interval.
    /// `only_fresh` waits only on a run of this process.
    async fn wait_for_news(&self, ticket_key: &str, last_seq: u64, deadline: tokio::time::Instant, only_fresh: bool) {
        let local = self.runs.lock().expect("runs poisoned").get(ticket_key).map(|r| r.progress.clone());
        let Some(mut progress) = local else {
            if !only_fresh {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(REMOTE_POLL.min(left)).await;
            }
            return;
        };
        let news = progress.wait_for(|p| p.complete || p.next_log_sequence > last_seq + 1);
        let ended = tokio::time::timeout_at(deadline, news).await.ok().and_then(Result::ok).map(|p| p.complete);
        if ended == Some(false) {
            let linger = deadline.min(tokio::time::Instant::now() + LINGER);
            let _ = tokio::time::timeout_at(linger, progress.wait_for(|p| p.complete)).await;
        }
    }

    /// Cancels the script: kills it if this process runs it, flags it for the worker that does
    /// (or for this process's run about to start, which checks the flag before it spawns), or
    /// leaves a tombstone if no start was claimed yet, so a late start cannot run it. The store
    /// decides between the last two in one step, against the claim. Answered as
    /// [`rules::cancel_answer`] says, given when the start it stops was first issued.
    async fn cancel(&self, ticket: &Ticket, last_seq: u64, first_issued_at: Option<u64>) -> Reply {
        let reply = self.cancel_and_read(ticket, last_seq).await;
        let Reply::ScriptStatus(status) = reply else { return reply };
        if rules::cancel_awaits_replication(&status, self.config.claim_replicas) {
            if let Err(refused) = self.confirm_tombstone(ticket).await {
                return refused;
            }
        }
        let epoch = match self.store.epoch(now_ms()).await {
            Ok(epoch) => epoch,
            Err(error) => return Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string())),
        };
        match rules::cancel_answer(status, first_issued_at, epoch.created_ms) {
            Ok(status) => Reply::ScriptStatus(status),
            Err(lost) => {
                tracing::warn!(ticket = %ticket, "cancel of a ticket the store lost with its data: whether it ran is unknown");
                Reply::Error(lost)
            }
        }
    }

    /// Waits for `claim_replicas` replicas to hold the record that makes a ticket unknown to a
    /// cancel (its tombstone), before the cancel is answered with it
    /// ([`rules::cancel_awaits_replication`]); a transient error if they do not in time.
    async fn confirm_tombstone(&self, ticket: &Ticket) -> Result<(), Reply> {
        let unavailable =
            |error: StoreError| Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string()));
        let keys = self.store.keys(&ticket.store_key());
        let view = self.store.read(&keys, SKIP_LOGS).await.map_err(unavailable)?;
        let raw = view.record.map(|(_, raw)| raw).unwrap_or_default();
        let wanted = self.config.claim_replicas;
        let replication =
            self.store.confirm_record(&keys, &raw, wanted, CLAIM_REPLICA_WAIT).await.map_err(unavailable)?;
        rules::check_tombstone_replicated(&replication, wanted, CLAIM_REPLICA_WAIT).map_err(|refused| {
            tracing::warn!(ticket = %ticket, ?replication, wanted, "cancel's tombstone not yet on enough replicas; not answering it");
            Reply::Error(refused)
        })
    }

    /// Cancels the script (see [`Agent::cancel`]) and reads the ticket's status after.
    async fn cancel_and_read(&self, ticket: &Ticket, last_seq: u64) -> Reply {
        let keys = self.store.keys(&ticket.store_key());
        if self.cancel_local_run(&keys.ticket) {
            tracing::info!(ticket = %ticket, "cancelling script");
            return self.status(ticket, last_seq, None).await;
        }
        let tombstone = rules::cancel_tombstone(&self.owner, &self.config.agent_id, now_ms());
        // The start it stands for may still be in a queue with any deadline: keep the tombstone
        // as long as an unfinished record.
        match self.store.cancel(&keys, &tombstone, self.config.record_ttl, self.config.lease_ttl * 4).await {
            Err(error) => return Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string())),
            Ok(Cancel::Tombstoned) => {
                tracing::info!(ticket = %ticket, "cancel of a ticket not started here; tombstone left so a late start never runs")
            }
            // A run of this process that began after the first look picks the flag up before
            // it spawns, or is stopped here.
            Ok(Cancel::Flagged) if self.cancel_local_run(&keys.ticket) => {
                tracing::info!(ticket = %ticket, "cancelling script")
            }
            Ok(Cancel::Flagged) => tracing::info!(ticket = %ticket, "cancel flagged for the worker running the script"),
        }
        self.status(ticket, last_seq, None).await
    }

    /// Cancels this process's run of `ticket_key`, if it has one.
    fn cancel_local_run(&self, ticket_key: &str) -> bool {
        let runs = self.runs.lock().expect("runs poisoned");
        runs.get(ticket_key).map(|run| run.cancel.cancel()).is_some()
    }

    /// Cleans up an ended script: drops its output and workspace, and leaves a tombstone that
    /// outlives any copy of its start still in a queue. A running script is left alone.
    async fn complete(&self, ticket: &Ticket) -> Reply {
        let keys = self.store.keys(&ticket.store_key());
        let view = match self.store.read(&keys, SKIP_LOGS).await {
            Ok(view) => view,
            Err(error) => return Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string())),
        };
        let without_deadline_ms = self.config.tombstone_ttl.as_millis() as u64;
        let record = view.record.as_ref().map(|(r, _)| r);
        let (tombstone, ttl) = match rules::decide_complete(record, view.lease_alive, now_ms(), without_deadline_ms) {
            CompleteDecision::Status => return Reply::ScriptStatus(status_without_logs(ticket, view)),
            CompleteDecision::Tombstone { tombstone, ttl_ms } => (tombstone, Duration::from_millis(ttl_ms)),
        };
        let raw = view.record.as_ref().map_or("", |(_, raw)| raw.as_str());
        match self.store.compare_and_set(&keys, raw, &tombstone, Some(ttl), Release::LeaseAndOutput).await {
            Ok(true) => {
                if let Some(workspace) = workspace::workspace_path(&self.config.work_dir, &keys.ticket) {
                    workspace::remove_workspace(&workspace).await;
                }
                tracing::info!(ticket = %ticket, "script completed; output cleaned, tombstone kept");
            }
            Ok(false) => {
                tracing::debug!(ticket = %ticket, "record changed while completing; answering with its status")
            }
            Err(error) => return Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string())),
        }
        match self.store.read(&keys, SKIP_LOGS).await {
            Ok(view) => Reply::ScriptStatus(status_without_logs(ticket, view)),
            Err(error) => Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string())),
        }
    }
}
