//! The Cuttle agent: consumes script commands from its RabbitMQ queue, claims each ticket in the
//! ticket store so a script never runs twice, runs it, and answers status requests.
//!
//! # Layout
//! - [`config`]: the agent's settings and defaults.
//! - [`broker`]: the AMQP edge (topology, consumer, replies, reconnection); [`broker_call`]: one
//!   broker call bounded in time, and the broker errors the edges share.
//! - [`service`]: the capabilities, script v2 and script v1 services.
//! - [`record`]: ticket records read back in every encoding the agent ever stored (the
//!   exactly-once decisions on them are `contracts::agent`'s).
//! - [`store`]: the Redis ticket store (claim with `SET NX`, compare-and-set, lease, logs);
//!   [`local_store`] the embedded one for agents that reach only the broker; both implement
//!   `contracts::store::TicketStore`, and the agent holds either as a trait object wrapped in
//!   [`observed::Observed`], which times every operation. The connection to one Redis, or to the
//!   master Redis Sentinels name, is `edge::connect::store`'s.
//! - [`runner`]: one script's run (process group, timeout, cancel, lease), [`output`] its log,
//!   [`cancel_notices`] the cancels published to the worker running a script,
//!   [`isolation`] its mutexes, [`mask`] the masking of its secrets in the output,
//!   [`workspace`] the work dir and the scripts' workspaces in it.
//! - [`run_as`]: scripts run as the users the agent allows (`--allow-run-as`).
//! - [`programs`]: finding the programs the agent starts on its own PATH.
//! - [`limits`]: scripts' limits through cgroups and resource limits.
//! - [`janitor`]: removes the workspaces of completed tickets and stale ones.
//! - [`transfer`]: file upload and download below the transfer roots, as the agent or, through
//!   a helper process that takes that user's identity, as another user.
//! - [`receipts`]: the receipt each run's end signs, chained per agent id, kept in the store
//!   until the broker confirms it on the receipts stream.
//! - [`presence`]: the agent's announcements of itself (heartbeats) on the presence stream.
//! - [`trust`]: the agent's key (signs answers) and the dispatcher keys it trusts (commands).
//! - [`health`]: liveness and readiness probes and metrics over HTTP (axum); [`metrics`] the
//!   metric families.
//! - [`cli`]: the `worker-agent` command line.
#![forbid(unsafe_code)]

mod broker;
mod broker_call;
mod cancel_notices;
pub mod cli;
pub mod config;
mod handling;
mod health;
mod isolation;
mod janitor;
pub mod limits;
pub mod local_store;
mod mask;
pub mod metrics;
pub mod observed;
pub mod output;
mod presence;
mod programs;
mod receipts;
mod record;
pub mod run_as;
mod runner;
pub mod service;
pub mod store;
pub mod transfer;
mod trust;
pub mod workspace;

use crate::config::{AgentConfig, StoreKind};
use crate::service::Agent;
use contracts::backoff::Backoff;
use contracts::time::short;
use edge::connect::tls::TlsFailure;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why an agent could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    WorkDir(#[from] workspace::WorkDirError),
    #[error(transparent)]
    RunAs(#[from] run_as::RunAsError),
    #[error(transparent)]
    Limits(#[from] contracts::agent::limits::LimitConfigError),
    #[error("cannot serve probes on {addr}: {source}")]
    Probes { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    /// A broker setting no retry mends (see [`broker_call::BrokerError::is_setting`]); the binary
    /// exits [`EXIT_SETTING`].
    #[error(transparent)]
    Broker(#[from] broker_call::BrokerError),
    /// The ticket store's certificate is not trusted: a setting no retry mends; the binary exits
    /// [`EXIT_SETTING`]. The store's error is kept, not offered as `source()`: the message tells
    /// it, and the binary prints an error with its chain of sources.
    #[error("TLS handshake with the ticket store failed: {0}; {hint}", hint = TlsFailure::UntrustedServer.hint())]
    StoreCertificate(store::StoreError),
}

impl RunError {
    /// Whether the binary exits [`EXIT_SETTING`]: a setting to fix, not an outage.
    pub fn is_setting(&self) -> bool {
        matches!(self, RunError::Broker(_) | RunError::StoreCertificate(_))
    }
}

/// The exit code of `worker-agent run` when the broker's or the ticket store's certificate is
/// not trusted, or the proxy refuses the agent (`EX_CONFIG` of sysexits.h): a setting to fix, which a supervisor should not
/// restart into again and again.
pub const EXIT_SETTING: u8 = 78;

/// Runs an agent until `shutdown` completes: the one entry point of the `worker-agent` binary
/// (which passes [`shutdown_signal`]) and of tests that drive the agent as the binary does.
///
/// Serves probes at `config.health_addr` from the start (alive at once, ready while consuming),
/// connects to the ticket store and the broker, and serves commands. On `shutdown` it stops
/// taking work at once, lets running scripts end within `config.drain_timeout`, then cancels
/// the rest, each recorded as cancelled, and stops the probes last.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    workspace::prepare_work_dir(&config.work_dir)?;
    run_as::prepare(&config.run_as, &config.work_dir, &config.agent_id)?;
    let mut config = config;
    (config.cgroups, config.limits) = limits::prepare(&config.agent_id, config.limit_caps)?;
    let trust = Arc::new(trust::AgentTrust::load(&config)?);
    let reloader = tokio::spawn(trust::reload_on_sighup(trust.clone(), config.agent_id.clone()));
    let metrics = metrics::Metrics::default();
    let probes = health::Probes::new(metrics.clone());
    let probes_stop = CancellationToken::new();
    let probes_served = match config.health_addr {
        None => None,
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::Probes { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %bound, "serving probes and metrics: GET /livez, GET /readyz, GET /metrics");
            Some(tokio::spawn(health::serve(listener, probes.clone(), probes_stop.clone())))
        }
    };
    let drain_timeout = config.drain_timeout;
    let cgroups = config.cgroups.clone();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    let started = tokio::select! {
        started = start_trusting(config, trust, metrics, stop.clone()) => started,
        () = &mut shutdown => Ok(None),
    };
    let (started, mut failed) = match started {
        Ok(started) => (started, None),
        Err(error) => (None, Some(error)),
    };
    if let Some((agent, mut serving)) = started {
        probes.attach(agent.clone());
        tokio::select! {
            served = &mut serving => {
                // Stopped by itself: a setting to fix. Running scripts still end as on a signal.
                stop.cancel();
                failed = served.ok().and_then(Result::err).map(RunError::Broker);
            }
            () = &mut shutdown => {
                tracing::info!("stopping: taking no more work");
                stop.cancel();
                let _ = serving.await;
            }
        }
        drain(&agent, drain_timeout).await;
    }
    reloader.abort();
    cgroups.remove_subtrees();
    probes_stop.cancel();
    if let Some(served) = probes_served {
        let _ = served.await;
    }
    failed.map_or(Ok(()), Err)
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Lets running scripts end within `timeout`, then cancels what is left (recorded cancelled).
async fn drain(agent: &Agent, timeout: Duration) {
    let running = agent.running();
    if running > 0 {
        tracing::info!(running, drain_timeout = %short(timeout), "waiting for running scripts to finish");
        let deadline = tokio::time::Instant::now() + timeout;
        while agent.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = agent.running();
        if left > 0 {
            tracing::warn!(left, "drain timeout passed; cancelling the scripts still running");
        }
    }
    agent.stop_scripts().await;
}

/// The task serving the broker (see [`broker::serve`]).
pub type Serving = tokio::task::JoinHandle<Result<(), broker_call::BrokerError>>;

/// Where the local ticket store lives in the work directory.
pub const LOCAL_STORE_FILE: &str = "tickets.redb";

/// Connects to (or opens) the ticket store, waiting for it (with notices) until `shutdown`
/// (`Ok(None)`). `owner` is this agent process's identity as a ticket owner; `metrics` records
/// its operations. A store whose certificate is not trusted is a setting to fix: an error at
/// once, not retried.
pub async fn connect_store(
    config: &AgentConfig,
    owner: &str,
    metrics: &metrics::Metrics,
    shutdown: &CancellationToken,
) -> Result<Option<store::AgentStore>, RunError> {
    // 200 ms after the first failure, at most every 5 s while the store stays away.
    let mut backoff = Backoff::doubling(Duration::from_millis(200), Duration::from_secs(5));
    let ops = &metrics.common.store;
    loop {
        let opened = match config.store {
            StoreKind::Redis => {
                store::RedisStore::connect(&config.redis_target(), &config.key_prefix, config.connect_timeout)
                    .await
                    .map(|redis| observed::Observed::agent_store(redis, ops.clone()))
            }
            StoreKind::Local => {
                local_store::LocalStore::open(&config.work_dir.join(LOCAL_STORE_FILE), owner, config.janitor_interval)
                    .map(|local| observed::Observed::agent_store(local, ops.clone()))
            }
        };
        let delay = backoff.next_pause();
        match opened {
            Ok(store) => return Ok(Some(store)),
            Err(error) => match TlsFailure::of(&error) {
                Some(TlsFailure::UntrustedServer) => {
                    tracing::error!(agent = %config.agent_id, %error, "the ticket store's certificate is not trusted; stopping (a setting to fix, not an outage)");
                    return Err(RunError::StoreCertificate(error));
                }
                Some(failure) => {
                    let hint = failure.hint();
                    tracing::error!(agent = %config.agent_id, %error, hint, retry_in = %short(delay), "TLS handshake with the ticket store failed; retrying")
                }
                None => {
                    tracing::warn!(agent = %config.agent_id, %error, retry_in = %short(delay), "cannot reach the ticket store; retrying")
                }
            },
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Starts an agent: loads its keys ([`trust::AgentTrust::load`]), connects to the store, marks
/// runs lost by an earlier process, and serves its queue in the background, recording in
/// `metrics`. Cancel `shutdown` to stop taking work; the returned task ends once the consumer has
/// stopped, or early with a broker setting to fix. `Ok(None)`: stopped before it could start.
pub async fn start(
    config: AgentConfig,
    metrics: metrics::Metrics,
    shutdown: CancellationToken,
) -> Result<Option<(Arc<Agent>, Serving)>, RunError> {
    let trust = Arc::new(trust::AgentTrust::load(&config)?);
    start_trusting(config, trust, metrics, shutdown).await
}

async fn start_trusting(
    config: AgentConfig,
    trust: Arc<trust::AgentTrust>,
    metrics: metrics::Metrics,
    shutdown: CancellationToken,
) -> Result<Option<(Arc<Agent>, Serving)>, RunError> {
    let owner = format!("{}/{}", config.agent_id, uuid::Uuid::new_v4());
    let Some(store) = connect_store(&config, &owner, &metrics, &shutdown).await? else { return Ok(None) };
    let epoch = loop {
        match store.epoch(contracts::time::unix_millis(std::time::SystemTime::now())).await {
            Ok(epoch) => break epoch,
            Err(error) => {
                tracing::warn!(agent = %config.agent_id, %error, "cannot read the ticket store's epoch; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let wait = contracts::agent::young_store_wait_ms(
        epoch.created_ms,
        contracts::time::unix_millis(std::time::SystemTime::now()),
    );
    if wait > 0 {
        tracing::info!(agent = %config.agent_id, wait_ms = wait, "the ticket store's data is new: taking commands once the clock-skew allowance has passed, so that none is refused as possibly older than it");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    let agent = Agent::new(config, store, epoch, owner, metrics, trust);
    agent.listen_for_cancels();
    match handling::recover_lost_runs(&agent).await {
        Ok(0) => {}
        Ok(lost) => {
            tracing::warn!(agent = %agent.config().agent_id, lost, "runs of an earlier agent process reported as unknown result")
        }
        Err(error) => {
            tracing::warn!(agent = %agent.config().agent_id, %error, "could not check for runs lost by an earlier process")
        }
    }
    tokio::spawn(janitor::run(agent.clone(), agent.config().janitor_interval, shutdown.clone()));
    let serving = tokio::spawn(broker::serve(agent.clone(), shutdown));
    Ok(Some((agent, serving)))
}
