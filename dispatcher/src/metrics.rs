//! The dispatcher's metrics, served by `dispatcher serve` at `GET /metrics`. One [`Metrics`] per
//! process, made by the CLI and handed to what records: the orchestrator (RPC attempts, retries,
//! latency, refusals), the RPC client (broker reconnects), the service (scripts, journal
//! operations). Names: see docs/operations.md, "Metrics".

use crate::error::RpcError;
use contracts::metrics::{self, Families, KindLabel, OutcomeLabel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    kind: &'static str,
    /// `ok`, or what failed: `refused` (the agent answered an error), `no_reply`, `broker`
    /// (connect, lost link, not confirmed), `unroutable`, `other`.
    result: &'static str,
}

/// The dispatcher's metric families and the registry that exposes them. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Every family registered, for the generated reference.
    described: Arc<[metrics::Described]>,
    /// Scripts, refusals, store operations (the journal's) and broker reconnects.
    pub common: Families,
    /// Answers that did not verify under the key pinned for the agent asked, and were ignored
    /// (ARCHITECTURE.md, Trust): incremented where answers are checked.
    pub forged_answers: Counter,
    attempts: Family<KindLabel, Counter>,
    retries: Family<KindLabel, Counter>,
    attempt_duration: Family<AttemptLabels, Histogram>,
    schedule_runs: Family<OutcomeLabel, Counter>,
    schedule_lag: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let (mut registrar, common) =
            Families::registry("dispatcher", "Requests agents refused (answered with an error), by reason", "journal");
        let forged_answers = Counter::default();
        registrar.register(
            "cuttle_forged_answers_ignored",
            "Answers ignored: not sealed by the key pinned for the agent asked, or naming another message than the request",
            forged_answers.clone(),
        );
        let attempts = Family::<KindLabel, Counter>::default();
        registrar.register("cuttle_rpc_attempts", "Requests sent to agents (every attempt), by kind", attempts.clone());
        let retries = Family::<KindLabel, Counter>::default();
        registrar.register(
            "cuttle_rpc_retries",
            "Requests repeated after a transient failure, by kind",
            retries.clone(),
        );
        let attempt_duration =
            Family::<AttemptLabels, Histogram>::new_with_constructor(metrics::latency_histogram as _);
        registrar.register_with_unit(
            "cuttle_rpc_duration",
            "Time from sending one attempt to its answer or failure, by kind and result",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let schedule_runs = Family::<OutcomeLabel, Counter>::default();
        registrar.register(
            "cuttle_schedule_runs",
            "Runs of schedules' slots, by outcome: completed, cancelled, unknown, failed (a ticket each, counted by the replica that saw it end), not_started (a slot with no target or no plan), skipped (missed slots not run)",
            schedule_runs.clone(),
        );
        // From a slot on time (tens of milliseconds) to one run late under `--missed once` (hours).
        let schedule_lag = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registrar.register_with_unit(
            "cuttle_schedule_lag",
            "Time from a schedule's slot to its tickets being recorded, which starts them",
            Unit::Seconds,
            schedule_lag.clone(),
        );
        let (registry, described) = registrar.finish();
        Metrics {
            registry: Arc::new(registry),
            described: described.into(),
            common,
            forged_answers,
            attempts,
            retries,
            attempt_duration,
            schedule_runs,
            schedule_lag,
        }
    }
}

impl Metrics {
    /// One attempt of a request of `kind` ended after `took`.
    pub fn attempt(&self, kind: contracts::wire::messages::Kind, took: Duration, result: Result<(), &RpcError>) {
        let kind = kind.as_str();
        self.attempts.get_or_create(&KindLabel { kind }).inc();
        let result = match result {
            Ok(()) => "ok",
            Err(RpcError::Agent { error, .. }) => {
                self.common.refusals.refused(error.kind);
                "refused"
            }
            Err(RpcError::NoReply { .. }) => "no_reply",
            Err(RpcError::Forged { .. }) => "forged",
            Err(
                RpcError::Connect(_) | RpcError::Refused(_) | RpcError::ConnectionLost(_) | RpcError::NotConfirmed(_),
            ) => "broker",
            Err(RpcError::Unroutable { .. }) => "unroutable",
            Err(RpcError::NotPinned { .. } | RpcError::NoKey) => "untrusted",
            Err(
                RpcError::Codec(_)
                | RpcError::Unexpected(_)
                | RpcError::WorkerName { .. }
                | RpcError::Seal { .. }
                | RpcError::Panicked(_)
                | RpcError::Unrepeatable(_)
                | RpcError::Cancelled,
            ) => "other",
        };
        self.attempt_duration.get_or_create(&AttemptLabels { kind, result }).observe(took.as_secs_f64());
    }

    /// A request of `kind` is about to be repeated.
    pub fn retry(&self, kind: contracts::wire::messages::Kind) {
        self.retries.get_or_create(&KindLabel { kind: kind.as_str() }).inc();
    }

    /// Every family registered, with its type and help, series or not.
    pub fn described(&self) -> &[metrics::Described] {
        &self.described
    }

    /// `count` runs of schedules ended so (`completed`, ... or `not_started`, `skipped`).
    pub fn schedule_runs(&self, outcome: &'static str, count: u64) {
        self.schedule_runs.get_or_create(&OutcomeLabel { outcome }).inc_by(count);
    }

    /// A schedule's slot was recorded `lag` after its time.
    pub fn schedule_lag(&self, lag: Duration) {
        self.schedule_lag.observe(lag.as_secs_f64());
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::wire::error::{ErrorKind, ErrorReply};
    use contracts::wire::messages::Kind;

    #[test]
    fn attempts_are_counted_by_kind_and_timed_by_result() {
        let metrics = Metrics::default();
        metrics.attempt(Kind::StartScriptV2, Duration::from_millis(3), Ok(()));
        let refused = RpcError::Agent { target: "a".into(), error: ErrorReply::new(ErrorKind::Expired, "late") };
        metrics.attempt(Kind::StartScriptV2, Duration::from_millis(3), Err(&refused));
        metrics.retry(Kind::GetStatusV2);
        let text = metrics.encode();
        assert!(text.contains("cuttle_rpc_attempts_total{kind=\"StartScriptV2\"} 2\n"), "{text}");
        assert!(text.contains("cuttle_rpc_retries_total{kind=\"GetStatusV2\"} 1\n"), "{text}");
        assert!(text.contains("cuttle_commands_refused_total{reason=\"expired\"} 1\n"), "{text}");
        assert!(
            text.contains("cuttle_rpc_duration_seconds_count{kind=\"StartScriptV2\",result=\"refused\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("cuttle_forged_answers_ignored_total 0\n"), "{text}");
        metrics.schedule_runs("skipped", 3);
        metrics.schedule_lag(Duration::from_millis(40));
        let text = metrics.encode();
        assert!(text.contains("cuttle_schedule_runs_total{outcome=\"skipped\"} 3\n"), "{text}");
        assert!(text.contains("cuttle_schedule_lag_seconds_count 1\n"), "{text}");
    }
}
