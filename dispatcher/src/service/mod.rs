//! `dispatcher serve`: the same orchestration as the CLI behind an HTTP API, recording everything
//! in a journal (Redis) before doing it, so that a restarted service resumes following every
//! unfinished ticket, and replicas sharing one journal share the work (ARCHITECTURE.md, The
//! service's tickets).
//!
//! # Layout
//! - [`journal`]: the records in Redis (deadpool-redis), and the history; [`submission`]: what
//!   it records of each ticket before anything is sent; [`agents`]: what each target last
//!   answered.
//! - [`lease`]: which replica follows an in-flight ticket.
//! - [`receipts`]: the receipts of the journal's tickets, kept from the receipts stream and
//!   checked again as they are shown.
//! - [`resume`]: following a ticket from its record: new, resumed or taken over.
//! - [`schedules`]: schedules' records and slots in the journal; [`scheduler`]: each replica's
//!   passes, which fire the slots due ([`crate::schedule`]).
//! - [`router`]: the axum routes, their OpenAPI document and the layers every request passes;
//!   it serves the handlers, which share [`state`] (the state, errors, who asked) and nothing
//!   else of each other's but the history filters [`web`] takes from [`api`]:
//!   - [`api`]: the `/v1` JSON API (scripts through [`crate::plan`], tickets, events, history);
//!   - [`files`]: file transfer through the API, by the CLI's own [`crate::transfer`];
//!   - [`schedule_api`]: the `/v1/schedules` routes, and the view of a schedule;
//!   - [`web`]: the web view (server-rendered HTML, live through the API's server-sent events).
//! - [`tokens`]: API tokens; [`sessions`]: browser logins; [`site`]: which hosts and origins are
//!   the service's own.
//!
//! # Why nothing runs twice
//! Tickets are made here and recorded before the start is sent; the start carries a deadline
//! (`not_after`) recorded with it. A follower resumed after a crash repeats the same start within
//! that deadline (the agent answers a known ticket with its status), and past it only asks for
//! the status. Log lines are recorded only in sequence, so a repeated follower adds none twice.

mod agents;
pub(crate) mod api;
pub mod approvals;
mod files;
pub mod journal;
mod lease;
mod receipts;
mod resume;
mod router;
pub(crate) mod schedule_api;
pub(crate) mod scheduler;
pub(crate) mod schedules;
mod sessions;
pub(crate) mod site;
mod state;
pub mod submission;
pub(crate) mod tokens;
mod web;

use crate::orchestrator::Orchestrator;
use crate::policy::PolicyConfig;
use axum::serve::ListenerExt;
use journal::Journal;
use lease::Leases;
use resume::Followers;
use site::{Authority, PublicUrl, Site};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokens::ApiTokens;
use tokio_util::sync::CancellationToken;

/// How `dispatcher serve` runs.
pub struct ServiceConfig {
    pub listen: SocketAddr,
    /// API tokens; without them the service listens on loopback only.
    pub tokens: Option<ApiTokens>,
    pub journal: Journal,
    /// This replica's name in leases.
    pub replica: String,
    pub lease_ttl: Duration,
    /// How long a ticket waits for its approvals (`--approval-wait`).
    pub approval_wait: Duration,
    pub policies: PolicyConfig,
    /// Names the service answers to besides its listen address (`--allowed-host`).
    pub allowed_hosts: Vec<Authority>,
    /// The URL browsers reach it at, behind a proxy (`--public-url`).
    pub public_url: Option<PublicUrl>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "refusing to listen on {0} without --api-tokens: anyone who reaches it could run scripts; give --api-tokens FILE, or listen on a loopback address such as 127.0.0.1:7480"
    )]
    OpenWithoutTokens(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

/// A bound service, not yet serving.
pub struct Service {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    followers: Arc<Followers>,
    scheduler: Arc<scheduler::Scheduler>,
    site: Site,
}

impl Service {
    /// Checks the configuration and the journal, and binds the address.
    pub async fn bind(
        config: ServiceConfig,
        orchestrator: Orchestrator,
        shutdown: CancellationToken,
    ) -> Result<Service, ServiceError> {
        if config.tokens.is_none() && !config.listen.ip().is_loopback() {
            return Err(ServiceError::OpenWithoutTokens(config.listen));
        }
        config.journal.ping().await?;
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.map_err(|e| ServiceError::Listen(config.listen, e))?;
        tokio::spawn(receipts::follow(config.journal.clone(), orchestrator.rpc().config().clone(), shutdown.clone()));
        let leases = Leases::new(config.journal.clone(), config.replica, config.lease_ttl);
        let followers = Followers::new(orchestrator, config.journal, leases, config.approval_wait, shutdown);
        // The bound port, which `--listen` may have left to the system (port 0).
        let bound = listener.local_addr().map_err(|e| ServiceError::Listen(config.listen, e))?;
        let site = Site::new(bound, config.allowed_hosts, config.public_url);
        let scheduler = scheduler::Scheduler::new(followers.clone(), config.policies.clone());
        let state = Arc::new(state::ApiState {
            followers: followers.clone(),
            scheduler: scheduler.clone(),
            policies: config.policies,
            tokens: config.tokens,
            site: site.clone(),
        });
        Ok(Service { listener, router: router::router(state), followers, scheduler, site })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// The names the service answers to, for its log.
    pub fn answers_to(&self) -> String {
        self.site.answers_to()
    }

    /// Serves until shutdown: resumes what the journal has in flight, then takes up tickets
    /// that lose their follower, and fires the schedules' slots. On shutdown, leases are released
    /// for other replicas.
    pub async fn run(self) -> std::io::Result<()> {
        let followers = self.followers;
        let resuming = tokio::spawn(followers.clone().resume_loop());
        let scheduling = tokio::spawn(self.scheduler.run());
        let shutdown = followers.shutdown.clone();
        let stopping = followers.shutdown.clone();
        // Every event of a stream is a small write the client must see at once: without
        // TCP_NODELAY, Nagle's algorithm held each behind the client's delayed acknowledgement
        // (40 ms a script through the service, measured with `service_bench`).
        let listener = self.listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
            }
        });
        let serving = axum::serve(listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .into_future();
        // Live event streams never end by themselves: give them a moment, then stop anyway.
        let served = tokio::select! {
            served = serving => served,
            _ = async { stopping.cancelled().await; tokio::time::sleep(Duration::from_secs(2)).await } => Ok(()),
        };
        let _ = resuming.await;
        let _ = scheduling.await;
        followers.stopped().await;
        served
    }
}
