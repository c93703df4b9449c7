//! One script on many targets: at most `max_parallel` at once, each followed to its end with
//! its own ticket and retries, and a report per target.

use crate::orchestrator::{Event, Orchestrator, Policies};
use crate::outcome::{Outcome, OutcomeKind};
use crate::route::Route;
use contracts::ScriptSpec;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How one target's run ended.
#[derive(Clone, Debug)]
pub struct TargetReport {
    pub target: String,
    pub outcome: Outcome,
    pub duration: Duration,
    pub retries: u32,
}

/// What happens to targets, for progress displays.
#[derive(Clone, Debug)]
pub enum Progress {
    Started { target: String },
    Finished(TargetReport),
}

/// Where one target's events go.
pub type TargetSink = Arc<dyn Fn(Event) + Send + Sync>;

/// Runs `spec` on every route, `max_parallel` at a time, in the order given. Reports come back
/// in that order.
pub async fn submit_many(
    orchestrator: &Orchestrator,
    routes: Vec<(Route, Policies)>,
    spec: ScriptSpec,
    max_parallel: usize,
    sink_for: impl Fn(&Route) -> TargetSink,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
    interrupt: &CancellationToken,
) -> Vec<TargetReport> {
    let places = Arc::new(Semaphore::new(max_parallel.max(1)));
    let mut runs = tokio::task::JoinSet::new();
    for (index, (route, policies)) in routes.into_iter().enumerate() {
        let (orchestrator, spec, places, progress, interrupt) =
            (orchestrator.clone(), spec.clone(), places.clone(), progress.clone(), interrupt.clone());
        let sink = sink_for(&route);
        runs.spawn(async move {
            let _place = places.acquire_owned().await.expect("never closed");
            progress(Progress::Started { target: route.name().to_owned() });
            let retries = AtomicU32::new(0);
            let events = |event: Event| {
                if matches!(event, Event::Retry { .. }) {
                    retries.fetch_add(1, Ordering::Relaxed);
                }
                sink(event)
            };
            let started = Instant::now();
            let outcome = orchestrator.submit(&route, spec, policies, &events, &interrupt).await;
            let report = TargetReport {
                target: route.name().to_owned(),
                outcome,
                duration: started.elapsed(),
                retries: retries.into_inner(),
            };
            progress(Progress::Finished(report.clone()));
            (index, report)
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = runs.join_next().await {
        reports.push(done.expect("a target's run panicked"));
    }
    reports.sort_by_key(|(index, _)| *index);
    reports.into_iter().map(|(_, report)| report).collect()
}

/// The exit code of a fan-out: 0 when every target's script completed with 0, else the code of
/// the first target (in the order given) that did not.
pub fn exit_code(reports: &[TargetReport]) -> u8 {
    reports.iter().map(|r| r.outcome.process_exit).find(|&code| code != 0).unwrap_or(0)
}

/// Whether a target's run counts as failed in the summary.
pub fn failed(report: &TargetReport) -> bool {
    report.outcome.outcome != OutcomeKind::Completed || report.outcome.exit_code != Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(target: &str, exit: u8) -> TargetReport {
        TargetReport {
            target: target.into(),
            outcome: Outcome {
                ticket: None,
                target: target.into(),
                outcome: OutcomeKind::Completed,
                exit_code: Some(exit as i32),
                error: None,
                process_exit: exit,
            },
            duration: Duration::ZERO,
            retries: 0,
        }
    }

    #[test]
    fn the_first_failing_target_gives_the_exit_code() {
        assert_eq!(exit_code(&[report("a", 0), report("b", 0)]), 0);
        assert_eq!(exit_code(&[report("a", 0), report("b", 3), report("c", 4)]), 3);
        assert!(failed(&report("b", 3)) && !failed(&report("a", 0)));
    }
}
