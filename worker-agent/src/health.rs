//! Probes for orchestrators, served with axum. `GET /livez` answers 200 while the process serves
//! requests at all (also while it connects and while it drains, so an orchestrator does not kill
//! it then); `GET /readyz` answers 200 only while the agent consumes its queue and the ticket
//! store answers, 503 otherwise. `GET /metrics` gives the agent's metrics (Prometheus text).

use crate::metrics::Metrics;
use crate::service::Agent;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the probes look at: the agent, once it has connected to its ticket store, and its
/// metrics from the start.
#[derive(Clone)]
pub(crate) struct Probes {
    agent: Arc<OnceLock<Arc<Agent>>>,
    metrics: Metrics,
}

impl Probes {
    /// Probes of an agent that is not connected yet: alive, not ready.
    pub(crate) fn new(metrics: Metrics) -> Self {
        Probes { agent: Arc::default(), metrics }
    }

    /// The agent has connected: readiness follows it from now on.
    pub(crate) fn attach(&self, agent: Arc<Agent>) {
        let _ = self.agent.set(agent);
    }

    async fn ready(&self) -> bool {
        match self.agent.get() {
            Some(agent) => ready(agent).await,
            None => false,
        }
    }
}

/// The probe routes.
pub(crate) fn router(probes: Probes) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

async fn metrics(State(probes): State<Probes>) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, contracts::metrics::CONTENT_TYPE)], probes.metrics.encode())
}

async fn livez() -> &'static str {
    "alive\n"
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.ready().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: not consuming, or the ticket store does not answer\n")
    }
}

/// Serves probes on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, probes: Probes, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router(probes)).with_graceful_shutdown(stop.cancelled_owned()).await
}

/// Ready: consuming commands, and the ticket store answers a ping within a second.
pub(crate) async fn ready(agent: &Agent) -> bool {
    *agent.readiness().borrow()
        && matches!(tokio::time::timeout(Duration::from_secs(1), agent.store().ping()).await, Ok(Ok(())))
}
