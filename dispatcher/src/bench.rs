//! `dispatcher bench`: N short scripts over the whole path (start, follow, complete), C at a
//! time, with latency percentiles and throughput.

use crate::orchestrator::Orchestrator;
use crate::route::Route;
use contracts::submission::outcome::OutcomeKind;
use contracts::submission::retry::RetryPolicy;
use contracts::wire::messages::ScriptSpec;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct BenchReport {
    pub count: usize,
    pub concurrency: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub throughput_per_s: f64,
    pub errors: usize,
    /// Every completed script's latency, fastest first.
    pub latencies_ms: Vec<f64>,
    #[serde(skip)]
    pub first_error: Option<String>,
}

/// The `q`-th percentile (0 to 100) of sorted samples, by nearest rank.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    debug_assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Runs the benchmark. A script that does not complete with exit code 0 counts as an error.
pub(crate) async fn run(
    orchestrator: &Orchestrator,
    route: &Route,
    count: usize,
    concurrency: usize,
    policy: RetryPolicy,
) -> BenchReport {
    let concurrency = concurrency.clamp(1, count.max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (orchestrator, route, next, latencies, errors) =
            (orchestrator.clone(), route.clone(), next.clone(), latencies.clone(), errors.clone());
        workers.spawn(async move {
            let interrupt = CancellationToken::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let spec = ScriptSpec { script: "echo hello".into(), ..Default::default() };
                let t = Instant::now();
                let outcome = orchestrator.submit(&route, spec, policy, &|_| {}, &interrupt).await;
                if outcome.outcome == OutcomeKind::Completed && outcome.exit_code == Some(0) {
                    latencies.lock().expect("latencies").push(t.elapsed());
                } else {
                    errors
                        .lock()
                        .expect("errors")
                        .push(outcome.error.unwrap_or_else(|| format!("exit code {:?}", outcome.exit_code)));
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut samples = std::mem::take(&mut *latencies.lock().expect("latencies"));
    samples.sort();
    let errors = std::mem::take(&mut *errors.lock().expect("errors"));
    BenchReport {
        count,
        concurrency,
        p50_ms: ms(percentile(&samples, 50.0)),
        p90_ms: ms(percentile(&samples, 90.0)),
        p99_ms: ms(percentile(&samples, 99.0)),
        throughput_per_s: (samples.len() as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        errors: errors.len(),
        latencies_ms: samples.iter().copied().map(ms).collect(),
        first_error: errors.into_iter().next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&samples[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
