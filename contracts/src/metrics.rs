//! The metric families both binaries expose (Prometheus, through prometheus-client), defined once
//! so that an agent and the service name and label the same thing the same way. Each binary
//! registers them (and its own) in a registry of its own and serves it at `GET /metrics`.
//!
//! Label values are fixed sets (request kinds, outcomes, reasons, operations), never ticket ids,
//! agent ids or script text: the number of series stays bounded and nothing a caller sends
//! reaches the exposition.

use crate::wire::error::ErrorKind;
use crate::wire::exit_code;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry, Unit};
use std::time::Duration;

/// A metric family as it was registered: its name as exposed, its type and its help. The
/// generated reference lists these, since an exposition shows a family only once it has a series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// The name as exposed (`_total` for a counter, `_seconds` for a time).
    pub name: String,
    pub kind: &'static str,
    pub help: String,
}

/// A registry that keeps what was registered in it ([`Described`]): what every family of both
/// binaries is registered through.
#[derive(Debug, Default)]
pub struct Registrar {
    registry: Registry,
    described: Vec<Described>,
}

impl Registrar {
    pub fn register(&mut self, name: &str, help: impl Into<String>, metric: impl Metric) {
        let help = help.into();
        self.describe(name, None, &help, &metric);
        self.registry.register(name, help, metric);
    }

    pub fn register_with_unit(&mut self, name: &str, help: impl Into<String>, unit: Unit, metric: impl Metric) {
        let help = help.into();
        self.describe(name, Some(&unit), &help, &metric);
        self.registry.register_with_unit(name, help, unit, metric);
    }

    fn describe(&mut self, name: &str, unit: Option<&Unit>, help: &str, metric: &impl Metric) {
        let kind = match EncodeMetric::metric_type(metric) {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Info => "info",
            _ => "unknown",
        };
        let name = match (unit, kind) {
            (Some(unit), _) => format!("{name}_{}", unit.as_str()),
            (None, "counter") => format!("{name}_total"),
            (None, _) => name.to_owned(),
        };
        self.described.push(Described { name, kind, help: help.to_owned() });
    }

    /// The registry, and what was registered in it.
    pub fn finish(self) -> (Registry, Vec<Described>) {
        (self.registry, self.described)
    }
}

/// The content type of [`encode`]'s text (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the text exposition format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// Buckets for latencies from half a millisecond to about 16 s (doubling).
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `completed`, `cancelled`, `unknown` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The request kind as on the wire (`StartScriptV2`, `GetStatusV2`, ...).
    pub kind: &'static str,
}

/// Scripts started, finished by outcome, and running now.
#[derive(Clone, Default)]
pub struct Scripts {
    started: Counter,
    finished: Family<OutcomeLabel, Counter>,
    running: Gauge,
}

impl Scripts {
    pub fn register(registry: &mut Registrar, whose: &str) -> Self {
        let scripts = Scripts::default();
        registry.register(
            "cuttle_scripts_started",
            format!("Scripts started by this {whose}"),
            scripts.started.clone(),
        );
        registry.register(
            "cuttle_scripts_finished",
            format!("Scripts finished by this {whose}, by outcome (completed, cancelled, unknown, failed)"),
            scripts.finished.clone(),
        );
        registry.register(
            "cuttle_scripts_running",
            format!("Scripts running on this {whose} now"),
            scripts.running.clone(),
        );
        scripts
    }

    /// A script starts: counted, and running until the run is finished or dropped.
    pub fn start(&self) -> ScriptRun {
        self.started.inc();
        self.running.inc();
        ScriptRun { scripts: self.clone(), finished: false }
    }
}

/// One running script, as [`Scripts`] counts it.
pub struct ScriptRun {
    scripts: Scripts,
    finished: bool,
}

impl ScriptRun {
    /// The script ended with `outcome` (`completed`, `cancelled`, `unknown`, `failed`).
    pub fn finish(mut self, outcome: &'static str) {
        self.scripts.finished.get_or_create(&OutcomeLabel { outcome }).inc();
        self.finished = true;
        self.scripts.running.dec();
    }
}

impl Drop for ScriptRun {
    fn drop(&mut self) {
        if !self.finished {
            self.scripts.running.dec();
        }
    }
}

/// The outcome label of an exit code as the agent records it: the script's own code (0 to 255)
/// is `completed`, the agent's negative codes say what else happened.
pub fn outcome_of_exit(code: i32) -> &'static str {
    match code {
        0.. => "completed",
        exit_code::CANCELLED => "cancelled",
        exit_code::UNKNOWN_RESULT => "unknown",
        _ => "failed",
    }
}

/// Commands refused (answered with an error) by reason.
#[derive(Clone, Default)]
pub struct Refusals {
    refused: Family<ReasonLabel, Counter>,
}

impl Refusals {
    pub fn register(registry: &mut Registrar, help: &str) -> Self {
        let refusals = Refusals::default();
        registry.register("cuttle_commands_refused", help, refusals.refused.clone());
        refusals
    }

    pub fn refused(&self, kind: ErrorKind) {
        self.refused.get_or_create(&ReasonLabel { reason: refusal_reason(kind) }).inc();
    }
}

/// The `reason` label of a refusal.
pub fn refusal_reason(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::TicketConflict => "conflict",
        ErrorKind::Expired => "expired",
        ErrorKind::Invalid => "invalid",
        ErrorKind::NotAuthorized => "not_authorized",
        ErrorKind::StoreUnavailable => "store_unavailable",
        ErrorKind::StoreReset => "store_reset",
        ErrorKind::ShuttingDown => "shutting_down",
        ErrorKind::UnknownSession => "unknown_session",
        ErrorKind::Internal => "internal",
        ErrorKind::Unknown => "unknown",
    }
}

/// Calls to a store (the agent's ticket store, the service's journal): latency and errors by
/// operation.
#[derive(Clone)]
pub struct StoreOps {
    duration: Family<OperationLabel, Histogram>,
    errors: Family<OperationLabel, Counter>,
}

impl StoreOps {
    pub fn register(registry: &mut Registrar, store: &str) -> Self {
        let ops = StoreOps { duration: Family::new_with_constructor(latency_histogram), errors: Family::default() };
        registry.register_with_unit(
            "cuttle_store_operation_duration",
            format!("Time taken by {store} operations, by operation"),
            Unit::Seconds,
            ops.duration.clone(),
        );
        registry.register(
            "cuttle_store_errors",
            format!("Failed {store} operations, by operation"),
            ops.errors.clone(),
        );
        ops
    }

    /// Records one store operation: how long it `took` (timed by the caller: `edge::clock`),
    /// and whether it `failed`.
    pub fn record(&self, operation: &'static str, took: Duration, failed: bool) {
        let label = OperationLabel { operation };
        self.duration.get_or_create(&label).observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&label).inc();
        }
    }
}

/// The families both binaries have, registered in a new registry that each binary then adds
/// its own to.
#[derive(Clone)]
pub struct Families {
    pub scripts: Scripts,
    pub refusals: Refusals,
    pub store: StoreOps,
    pub broker_reconnects: Counter,
}

impl Families {
    /// `whose` names the process (`agent`), `refusals` describes the refusals counted, `store`
    /// names the store whose operations are timed.
    pub fn registry(whose: &str, refusals: &str, store: &str) -> (Registrar, Families) {
        let mut registry = Registrar::default();
        let broker_reconnects = Counter::default();
        registry.register(
            "cuttle_broker_reconnects",
            "Times the broker connection was lost and made again",
            broker_reconnects.clone(),
        );
        let families = Families {
            scripts: Scripts::register(&mut registry, whose),
            refusals: Refusals::register(&mut registry, refusals),
            store: StoreOps::register(&mut registry, store),
            broker_reconnects,
        };
        (registry, families)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_named_and_labelled_by_convention() {
        let (registrar, families) = Families::registry("agent", "Commands refused", "ticket store");
        let (registry, described) = registrar.finish();
        let names: Vec<(&str, &str)> = described.iter().map(|d| (d.name.as_str(), d.kind)).collect();
        assert!(names.contains(&("cuttle_scripts_finished_total", "counter")), "{names:?}");
        assert!(names.contains(&("cuttle_store_operation_duration_seconds", "histogram")), "{names:?}");
        assert!(names.contains(&("cuttle_scripts_running", "gauge")), "{names:?}");
        let Families { scripts, refusals, store, broker_reconnects: reconnects } = families;
        scripts.start().finish(outcome_of_exit(3));
        let dropped = scripts.start();
        refusals.refused(ErrorKind::Expired);
        reconnects.inc();
        store.record("claim", Duration::from_millis(3), true);
        let text = encode(&registry);
        assert!(text.contains("cuttle_scripts_started_total 2\n"), "{text}");
        assert!(text.contains("cuttle_scripts_finished_total{outcome=\"completed\"} 1\n"), "{text}");
        assert!(text.contains("cuttle_scripts_running 1\n"), "{text}");
        drop(dropped);
        assert!(encode(&registry).contains("cuttle_scripts_running 0\n"));
        assert!(text.contains("cuttle_commands_refused_total{reason=\"expired\"} 1\n"), "{text}");
        assert!(text.contains("cuttle_store_errors_total{operation=\"claim\"} 1\n"), "{text}");
        assert!(text.contains("cuttle_store_operation_duration_seconds_count{operation=\"claim\"} 1\n"), "{text}");
        assert!(text.contains("cuttle_broker_reconnects_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(outcome_of_exit(0), "completed");
        assert_eq!(outcome_of_exit(255), "completed");
        assert_eq!(outcome_of_exit(exit_code::CANCELLED), "cancelled");
        assert_eq!(outcome_of_exit(exit_code::UNKNOWN_RESULT), "unknown");
        assert_eq!(outcome_of_exit(exit_code::EXECUTION_TIMEOUT), "failed");
    }
}
