//! The agent's metrics, served at `GET /metrics` on `--health-addr`. One [`Metrics`] per agent
//! process, made by [`crate::run`] and handed to what records: the broker edge (requests,
//! refusals, reconnects), the agent (scripts), the ticket store (operations) and the runner
//! (isolation mutex waits). Names: see docs/operations.md, "Metrics".

use contracts::metrics::{self, Families, KindLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;

/// The agent's metric families and the registry that exposes them. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Every family registered, for the generated reference.
    described: Arc<[metrics::Described]>,
    /// Scripts, refusals, store operations (the ticket store's) and broker reconnects.
    pub common: Families,
    requests: Family<KindLabel, Counter>,
    request_duration: Family<KindLabel, Histogram>,
    mutex_waits: Counter,
    mutex_wait_duration: Histogram,
    /// Consumers of the agent's own queue besides the agent, as last seen.
    pub other_consumers: Gauge,
    limits_reached: Family<LimitLabel, Counter>,
}

/// Which limit a script reached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct LimitLabel {
    /// `memory` (killed), `tasks` (forks refused), `file_size` (a process stopped past it).
    pub limit: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let (mut registrar, common) =
            Families::registry("agent", "Commands this agent refused, by reason", "ticket store");
        let requests = Family::<KindLabel, Counter>::default();
        registrar.register("cuttle_requests", "Requests received, by kind", requests.clone());
        let request_duration = Family::<KindLabel, Histogram>::new_with_constructor(metrics::latency_histogram as _);
        registrar.register_with_unit(
            "cuttle_request_duration",
            "Time from a request's delivery to its answer, by kind",
            Unit::Seconds,
            request_duration.clone(),
        );
        let mutex_waits = Counter::default();
        registrar.register(
            "cuttle_mutex_waits",
            "Scripts that had to wait for their isolation mutex",
            mutex_waits.clone(),
        );
        let mutex_wait_duration = metrics::latency_histogram();
        registrar.register_with_unit(
            "cuttle_mutex_wait_duration",
            "Time scripts waited for their isolation mutex (those that waited)",
            Unit::Seconds,
            mutex_wait_duration.clone(),
        );
        let other_consumers = Gauge::default();
        registrar.register(
            "cuttle_queue_other_consumers",
            "Consumers of this agent's own queue besides itself, as last seen (anything but 0 reads its commands)",
            other_consumers.clone(),
        );
        let limits_reached = Family::<LimitLabel, Counter>::default();
        registrar.register(
            "cuttle_script_limits_reached",
            "Scripts that reached a limit, by limit: memory (the script was killed), tasks (forks were refused), file_size (a process was stopped)",
            limits_reached.clone(),
        );
        let (registry, described) = registrar.finish();
        Metrics {
            registry: Arc::new(registry),
            described: described.into(),
            common,
            requests,
            request_duration,
            mutex_waits,
            mutex_wait_duration,
            other_consumers,
            limits_reached,
        }
    }
}

impl Metrics {
    /// A request of `kind` was answered after `took`.
    pub fn request(&self, kind: contracts::wire::messages::Kind, took: Duration) {
        let label = KindLabel { kind: kind.as_str() };
        self.requests.get_or_create(&label).inc();
        self.request_duration.get_or_create(&label).observe(took.as_secs_f64());
    }

    /// A script waited `took` for its isolation mutex.
    pub fn mutex_waited(&self, took: Duration) {
        self.mutex_waits.inc();
        self.mutex_wait_duration.observe(took.as_secs_f64());
    }

    /// A script reached its `limit`.
    pub fn limit_reached(&self, limit: &'static str) {
        self.limits_reached.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Every family registered, with its type and help, series or not.
    pub fn described(&self) -> &[metrics::Described] {
        &self.described
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        metrics::encode(&self.registry)
    }
}
