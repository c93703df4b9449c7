//! The Cuttle agent: consumes script commands from its RabbitMQ queue, claims each ticket in the
//! ticket store so a script never runs twice, runs it, and answers status requests.
//!
//! # Layout
//! - [`config`]: the agent's settings and defaults.
//! - [`broker`]: the AMQP edge (topology, consumer, replies, reconnection).
//! - [`service`]: the capabilities, script v2 and script v1 services.
//! - [`rules`]: the exactly-once decisions, as plain functions (fresh? same command? what state?).
//! - [`store`]: the Redis ticket store (claim with `SET NX`, compare-and-set, lease, logs);
//!   [`local_store`] the embedded one for agents that reach only the broker.
//! - [`runner`]: one script's run (process group, timeout, cancel, lease), [`output`] its log,
//!   [`isolation`] its mutexes.
//! - [`health`]: liveness and readiness probes over HTTP.
//! - [`cli`]: the `worker-agent` command line.
#![forbid(unsafe_code)]

pub mod broker;
pub mod cli;
pub mod config;
pub mod health;
pub mod isolation;
pub mod local_store;
pub mod output;
pub mod rules;
pub mod runner;
pub mod service;
pub mod store;

pub use config::{AgentConfig, Protocol, StoreKind};
pub use service::Agent;

use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the local ticket store lives in the work directory.
pub const LOCAL_STORE_FILE: &str = "tickets.redb";

/// Connects to (or opens) the ticket store, waiting for it (with notices) until `shutdown`.
/// `owner` is this agent process's identity as a ticket owner.
pub async fn connect_store(
    config: &AgentConfig,
    owner: &str,
    shutdown: &CancellationToken,
) -> Option<store::TicketStore> {
    let mut delay = Duration::from_millis(200);
    loop {
        let opened = match config.store {
            StoreKind::Redis => {
                store::RedisStore::connect(&config.redis_url, &config.key_prefix, config.connect_timeout)
                    .await
                    .map(store::TicketStore::Redis)
            }
            StoreKind::Local => local_store::LocalStore::open(&config.work_dir.join(LOCAL_STORE_FILE), owner)
                .map(store::TicketStore::Local),
        };
        match opened {
            Ok(store) => return Some(store),
            Err(error) => {
                tracing::warn!(agent = %config.agent_id, %error, retry_in = ?delay, "cannot reach the ticket store; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Starts an agent: connects to the store, marks runs lost by an earlier process, and serves its
/// queue in the background. Cancel `shutdown` to stop taking work; the returned task ends once the
/// consumer has stopped.
pub async fn start(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Option<(Arc<Agent>, tokio::task::JoinHandle<()>)> {
    let owner = format!("{}/{}", config.agent_id, uuid::Uuid::new_v4());
    let store = connect_store(&config, &owner, &shutdown).await?;
    let epoch = loop {
        match store.epoch(contracts::unix_millis(std::time::SystemTime::now())).await {
            Ok(epoch) => break epoch,
            Err(error) => {
                tracing::warn!(agent = %config.agent_id, %error, "cannot read the ticket store's epoch; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let agent = Agent::new(config, store, epoch, owner);
    match agent.recover_lost_runs().await {
        Ok(0) => {}
        Ok(lost) => {
            tracing::warn!(agent = %agent.config().agent_id, lost, "runs of an earlier agent process reported as unknown result")
        }
        Err(error) => {
            tracing::warn!(agent = %agent.config().agent_id, %error, "could not check for runs lost by an earlier process")
        }
    }
    let serving = tokio::spawn(broker::serve(agent.clone(), shutdown));
    Some((agent, serving))
}
