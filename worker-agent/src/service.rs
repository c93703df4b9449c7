//! The agent process: its configuration, store, keys and running scripts. What it does with
//! each delivery is contracts' flow ([`contracts::agent::flow`]), run with the agent as its
//! environment (`crate::handling`, which uses this module); this holds what that environment needs: the scripts of this
//! process (launched, cancelled, their progress awaited), the places for them, and the store.

use crate::config::{AgentConfig, Protocol};
use crate::isolation::Mutexes;
use crate::metrics::Metrics;
use crate::output::Progress;
use crate::receipts::Ledger;
use crate::runner::Run;
use crate::store::AgentStore;
use crate::trust::AgentTrust;
use crate::workspace;
use contracts::agent::flow::environment::{Launch, Memory, Settings};
use contracts::agent::run_as::RunAs;
use contracts::store::Epoch;
use contracts::wire::messages::Enforcement;
use contracts::wire::messages::{SERVICE_CAPABILITIES, SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2, SERVICE_SECRET_MASKING};
use contracts::wire::transfer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a waiting status request that got new output still waits for the script's end.
const LINGER: Duration = Duration::from_millis(20);

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
    /// What the flow knows of this process: its owner id (the agent id and a fresh instance id),
    /// its services, its claim and record settings.
    settings: Settings,
    /// What the flow remembers between requests: the store's epoch as last seen, the claims not
    /// yet confirmed by the replicas.
    memory: Memory,
    runs: Mutex<HashMap<String, LocalRun>>,
    mutexes: Arc<Mutexes>,
    tracker: tokio_util::task::TaskTracker,
    /// Whether the agent is consuming its queue now.
    ready: watch::Sender<bool>,
    /// Free places for scripts, when `max_scripts` bounds them.
    slots: Option<Arc<Semaphore>>,
    /// `config.pass_env`, shared with every run.
    pass_env: Arc<[String]>,
    metrics: Metrics,
    /// File transfer below `config.transfer_roots`.
    pub(crate) transfers: crate::transfer::Transfers,
    /// The agent's key and the dispatcher keys it trusts.
    trust: Arc<AgentTrust>,
    /// Stops following cancel notices ([`Agent::listen_for_cancels`]) once no script runs.
    notices_stop: CancellationToken,
    /// This agent id's receipt chain.
    ledger: Arc<Ledger>,
}

/// A place for one running script, held until it ends.
pub type Slot = OwnedSemaphorePermit;

/// The services an agent answers, as its capabilities reply and announcements list them: the
/// sealed ones only when it has a key, file transfer only when it has transfer roots.
fn services(signs: bool, transfers: bool) -> Vec<String> {
    let mut services = vec![
        SERVICE_CAPABILITIES.into(),
        SERVICE_SCRIPT_V1.into(),
        SERVICE_SCRIPT_V2.into(),
        SERVICE_SECRET_MASKING.into(),
        contracts::wire::messages::SERVICE_RUN_AS.into(),
        contracts::wire::messages::SERVICE_LIMITS.into(),
        contracts::wire::messages::SERVICE_COMPLETE_BATCH.into(),
        contracts::wire::messages::SERVICE_APPROVALS.into(),
    ];
    if signs {
        services.push(contracts::wire::messages::SERVICE_SEALED_SECRETS.into());
        services.push(contracts::wire::messages::SERVICE_ANSWER_BINDING.into());
    }
    if transfers {
        services.push(transfer::SERVICE_FILE_TRANSFER.into());
    }
    services
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
        let transfers = crate::transfer::Transfers::new(config.transfer_roots.clone(), config.run_as.clone());
        let settings = Settings {
            agent_id: config.agent_id.clone(),
            pool: config.pool.clone(),
            owner,
            legacy: config.protocol == Protocol::V1,
            services: services(trust.keys().signs(), transfers.enabled()),
            version: env!("CARGO_PKG_VERSION").into(),
            claim_replicas: config.claim_replicas,
            record_ttl: config.record_ttl,
            lease_ttl: config.lease_ttl,
            tombstone_ttl: config.tombstone_ttl,
            run_as: config.run_as.clone(),
            limits: config.limits,
            labels: config.labels.clone(),
        };
        let ledger = Ledger::new(store.clone(), trust.clone(), config.agent_id.clone(), config.pool.clone());
        Arc::new(Agent {
            ledger: Arc::new(ledger),
            pass_env: config.pass_env.clone().into(),
            transfers,
            config,
            store,
            settings,
            memory: Memory::new(Some(epoch)),
            runs: Mutex::default(),
            mutexes: Arc::default(),
            tracker: tokio_util::task::TaskTracker::new(),
            ready: watch::channel(false).0,
            slots: config_slots,
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
        self.settings.services.clone()
    }

    /// Waits for a place for one more script; `None` when scripts are not bounded.
    pub async fn take_slot(&self) -> Option<Slot> {
        let slots = self.slots.clone()?;
        Some(slots.acquire_owned().await.expect("slots are never closed"))
    }

    /// This agent id's receipt chain.
    pub(crate) fn ledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    /// What the flow knows of this agent process.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the flow remembers between requests.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Runs the script of the ticket claimed as `record` in `slot`, as a task of this process.
    pub(crate) fn launch(self: &Arc<Self>, launch: Launch, slot: Option<Slot>) {
        let Launch { keys, record, spec, provenance } = launch;
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
        // Refused before the claim already ([`contracts::agent::flow`]) under the same policy.
        let run_as = self.settings.run_as.resolve(spec.run_as.as_deref()).map(|run_as| match run_as {
            RunAs::Itself => None,
            RunAs::User(user) => Some(user),
        });
        let spec_limits = spec.limits;
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
            run_as,
            limits: self.settings.limits.resolve(&spec_limits),
            memory_by_rlimit: self.settings.limits.in_force().memory == Enforcement::Rlimit,
            cgroups: self.config.cgroups.clone(),
            ledger: self.ledger.clone(),
            provenance,
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

    /// Waits until a run of this process has output after `last_seq` or has ended (then a
    /// moment more, [`LINGER`], for its end), or, for a run elsewhere, one poll interval.
    /// `only_fresh` waits only on a run of this process.
    pub(crate) async fn wait_for_news(
        &self,
        ticket_key: &str,
        last_seq: u64,
        deadline: tokio::time::Instant,
        only_fresh: bool,
    ) {
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

    /// Cancels this process's run of `ticket_key`, if it has one.
    pub(crate) fn cancel_local_run(&self, ticket_key: &str) -> bool {
        let runs = self.runs.lock().expect("runs poisoned");
        runs.get(ticket_key).map(|run| run.cancel.cancel()).is_some()
    }
}
