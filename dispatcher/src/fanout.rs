//! One script on many targets: paced by [`Limits`] (at most N at once, and no new target once
//! the error budget is spent), each started target followed to its end with its own ticket and
//! retries, and a result per target.
//!
//! What to do next is decided by [`Rollout`], a plain state machine with no I/O; [`submit_many`]
//! only carries its decisions out.

use crate::budget::{Limits, Resolved};
use crate::orchestrator::{Event, Orchestrator};
use crate::route::Route;
use contracts::submission::outcome::{exit, Outcome, OutcomeKind};
use contracts::submission::retry::Policies;
use contracts::wire::messages::ScriptSpec;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How one started target's run ended.
#[derive(Clone, Debug)]
pub(crate) struct TargetReport {
    pub target: String,
    pub outcome: Outcome,
    pub duration: Duration,
    pub retries: u32,
}

/// Why a target was never started. Such a target had no ticket: nothing ran on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotStarted {
    /// More targets had failed than `--max-errors` allows.
    ErrorBudget,
    /// Ctrl-C (or the caller's cancellation) came before the target's turn.
    Interrupted,
}

impl NotStarted {
    pub fn describe(self) -> &'static str {
        match self {
            NotStarted::ErrorBudget => "not started: the error budget was spent",
            NotStarted::Interrupted => "not started: interrupted",
        }
    }

    /// The exit code a target that was not started stands for.
    pub fn process_exit(self) -> u8 {
        match self {
            NotStarted::ErrorBudget => exit::NOT_STARTED,
            NotStarted::Interrupted => exit::NOT_SENT,
        }
    }
}

/// What became of one target.
#[derive(Clone, Debug)]
pub(crate) enum TargetResult {
    Ran(TargetReport),
    NotStarted { target: String, reason: NotStarted },
}

impl TargetResult {
    fn process_exit(&self) -> u8 {
        match self {
            TargetResult::Ran(report) => report.outcome.process_exit,
            TargetResult::NotStarted { reason, .. } => reason.process_exit(),
        }
    }
}

/// What happens to targets, for progress displays.
#[derive(Clone, Debug)]
pub(crate) enum Progress {
    /// A target started (the counts of a progress display; its name comes with its end).
    Started,
    Finished(TargetReport),
    NotStarted {
        target: String,
        reason: NotStarted,
    },
}

/// The next thing a rollout does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Start the target at this index (targets start in the order given).
    Start(usize),
    /// Wait for a running target to finish (or for an interruption).
    Wait,
    /// Nothing runs and nothing more will start.
    Done,
}

/// The pacing of a rollout, without I/O: which target starts next, and when to stop starting.
#[derive(Clone, Debug)]
pub(crate) struct Rollout {
    total: usize,
    limits: Resolved,
    next: usize,
    running: usize,
    failed: usize,
    halted: Option<NotStarted>,
}

impl Rollout {
    pub(crate) fn new(total: usize, limits: Resolved) -> Self {
        debug_assert!(limits.parallel >= 1, "a rollout with no place never starts");
        Rollout { total, limits, next: 0, running: 0, failed: 0, halted: None }
    }

    /// The next step; a `Start` counts the target as running.
    pub(crate) fn next_step(&mut self) -> Step {
        if self.halted.is_none() && self.next < self.total && self.running < self.limits.parallel {
            let index = self.next;
            self.next += 1;
            self.running += 1;
            return Step::Start(index);
        }
        if self.running > 0 {
            return Step::Wait;
        }
        debug_assert!(self.next == self.total || self.halted.is_some(), "a rollout ends with every target started");
        Step::Done
    }

    /// A running target finished. Gives `true` when this failure spent the error budget (the
    /// moment to cancel the others under `--abort-on-error`).
    pub(crate) fn finished(&mut self, failed: bool) -> bool {
        debug_assert!(self.running > 0, "finished without running");
        self.running -= 1;
        if !failed {
            return false;
        }
        self.failed += 1;
        let over_budget = self.limits.tolerated_failures.is_some_and(|tolerated| self.failed > tolerated);
        if over_budget && self.halted.is_none() {
            self.halted = Some(NotStarted::ErrorBudget);
            return true;
        }
        false
    }

    /// Starts nothing more: Ctrl-C. Running targets are cancelled by their own token.
    pub(crate) fn interrupt(&mut self) {
        self.halted.get_or_insert(NotStarted::Interrupted);
    }

    pub(crate) fn is_interrupted(&self) -> bool {
        self.halted == Some(NotStarted::Interrupted)
    }

    /// Targets that will never start (from this index on), and why.
    pub(crate) fn not_started(&self) -> Option<(usize, NotStarted)> {
        self.halted.filter(|_| self.next < self.total).map(|reason| (self.next, reason))
    }
}

/// Where one target's events go.
pub(crate) type TargetSink = Arc<dyn Fn(Event) + Send + Sync>;

/// Runs `spec` on every route, in the order given, paced by `limits`. Results come back in that
/// order, one per route. On `interrupt`, targets not yet started never start, and running ones
/// are cancelled (and followed until they have stopped).
pub(crate) async fn submit_many(
    orchestrator: &Orchestrator,
    routes: Vec<(Route, Policies)>,
    spec: ScriptSpec,
    limits: Limits,
    sink_for: impl Fn(&Route) -> TargetSink,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
    interrupt: &CancellationToken,
) -> Vec<TargetResult> {
    let mut rollout = Rollout::new(routes.len(), limits.resolve(routes.len()));
    // Cancels the running targets: on Ctrl-C, or once the budget is spent under --abort-on-error.
    let cancel_running = interrupt.child_token();
    let mut results: Vec<Option<TargetResult>> = vec![None; routes.len()];
    let mut runs = tokio::task::JoinSet::new();
    // Which target each run is, so a run that panicked still gets its result.
    let mut run_targets = std::collections::HashMap::new();
    loop {
        if interrupt.is_cancelled() {
            rollout.interrupt();
        }
        match rollout.next_step() {
            Step::Start(index) => {
                let (route, policies) = routes[index].clone();
                let (orchestrator, spec, progress, cancel) =
                    (orchestrator.clone(), spec.clone(), progress.clone(), cancel_running.clone());
                let sink = sink_for(&route);
                let target = route.name().to_owned();
                let run = runs.spawn(async move {
                    progress(Progress::Started);
                    let retries = AtomicU32::new(0);
                    let events = |event: Event| {
                        if matches!(event, Event::Retry { .. }) {
                            retries.fetch_add(1, Ordering::Relaxed);
                        }
                        sink(event)
                    };
                    let started = Instant::now();
                    let outcome = orchestrator.submit(&route, spec, policies, &events, &cancel).await;
                    let report = TargetReport {
                        target: route.name().to_owned(),
                        outcome,
                        duration: started.elapsed(),
                        retries: retries.into_inner(),
                    };
                    progress(Progress::Finished(report.clone()));
                    report
                });
                run_targets.insert(run.id(), (index, target));
            }
            Step::Wait => {
                tokio::select! {
                    done = runs.join_next_with_id() => {
                        let (id, report) = match done.expect("a target is running") {
                            Ok((id, report)) => (id, report),
                            Err(error) => {
                                let id = error.id();
                                let report = lost_run(&run_targets[&id].1, error);
                                progress(Progress::Finished(report.clone()));
                                (id, report)
                            }
                        };
                        let (index, _) = run_targets.remove(&id).expect("every run has a target");
                        if rollout.finished(failed(&report)) && limits.abort_on_error {
                            cancel_running.cancel();
                        }
                        results[index] = Some(TargetResult::Ran(report));
                    }
                    _ = interrupt.cancelled(), if !rollout.is_interrupted() => rollout.interrupt(),
                }
            }
            Step::Done => break,
        }
    }
    if let Some((first, reason)) = rollout.not_started() {
        for (index, (route, _)) in routes.iter().enumerate().skip(first) {
            let target = route.name().to_owned();
            progress(Progress::NotStarted { target: target.clone(), reason });
            results[index] = Some(TargetResult::NotStarted { target, reason });
        }
    }
    results.into_iter().map(|result| result.expect("every target has a result")).collect()
}

/// The result of a target whose run failed inside the dispatcher (a panic): the other targets
/// keep theirs, and this one's script may have started, so its outcome is unknown.
pub(crate) fn lost_run(target: &str, error: tokio::task::JoinError) -> TargetReport {
    let why = match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(error) => error.to_string(),
    };
    let message = format!("the dispatcher failed while running this target ({why}); its outcome is unknown");
    let outcome = Outcome::from_error(None, target, &crate::error::RpcError::Panicked(why), message, true);
    TargetReport { target: target.to_owned(), outcome, duration: Duration::ZERO, retries: 0 }
}

/// The exit code of a fan-out: 0 when every target's script completed with 0, else the code of
/// the first target (in the order given) that did not; a target not started counts as 112
/// (interrupted) or 111 (error budget spent).
pub(crate) fn exit_code(results: &[TargetResult]) -> u8 {
    results.iter().map(TargetResult::process_exit).find(|&code| code != 0).unwrap_or(0)
}

/// Whether a target's run counts as failed (against the error budget and in the summary).
pub(crate) fn failed(report: &TargetReport) -> bool {
    report.outcome.outcome != OutcomeKind::Completed || report.outcome.exit_code != Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[tokio::test]
    async fn a_run_that_panicked_is_reported_unknown_and_the_others_keep_their_results() {
        let mut runs = tokio::task::JoinSet::new();
        let ok = runs.spawn(async { report("a", 0) }).id();
        let bad = runs.spawn(async { panic!("boom") }).id();
        let mut results = std::collections::HashMap::new();
        while let Some(done) = runs.join_next_with_id().await {
            let (id, report) = done.unwrap_or_else(|error| (error.id(), lost_run("b", error)));
            results.insert(id, report);
        }
        assert_eq!(results[&ok].outcome.process_exit, 0);
        let lost = &results[&bad];
        assert_eq!((lost.outcome.outcome, lost.outcome.process_exit), (OutcomeKind::Unknown, exit::OUTCOME_UNKNOWN));
        assert!(lost.outcome.error.as_deref().unwrap().contains("boom"), "{:?}", lost.outcome.error);
    }

    #[test]
    fn the_first_failing_target_gives_the_exit_code() {
        let ran = |t, code| TargetResult::Ran(report(t, code));
        assert_eq!(exit_code(&[ran("a", 0), ran("b", 0)]), 0);
        assert_eq!(exit_code(&[ran("a", 0), ran("b", 3), ran("c", 4)]), 3);
        assert!(failed(&report("b", 3)) && !failed(&report("a", 0)));
        let skipped = |reason| TargetResult::NotStarted { target: "z".into(), reason };
        assert_eq!(exit_code(&[ran("a", 0), skipped(NotStarted::Interrupted)]), exit::NOT_SENT);
        assert_eq!(exit_code(&[ran("a", 0), skipped(NotStarted::ErrorBudget)]), exit::NOT_STARTED);
        assert_eq!(exit_code(&[ran("a", 7), skipped(NotStarted::ErrorBudget)]), 7);
    }

    /// Drives a rollout where target `i` fails when `fails(i)`, finishing the oldest running
    /// target first; gives the indexes started.
    fn drive(total: usize, limits: Resolved, fails: impl Fn(usize) -> bool) -> (Vec<usize>, Rollout) {
        let mut rollout = Rollout::new(total, limits);
        let (mut started, mut running) = (Vec::new(), std::collections::VecDeque::new());
        loop {
            match rollout.next_step() {
                Step::Start(i) => {
                    started.push(i);
                    running.push_back(i);
                    assert!(running.len() <= limits.parallel);
                }
                Step::Wait => {
                    let i = running.pop_front().expect("waiting on a running target");
                    rollout.finished(fails(i));
                }
                Step::Done => return (started, rollout),
            }
        }
    }

    #[test]
    fn one_at_a_time_with_one_error_tolerated_starts_exactly_two_failing_targets() {
        let (started, rollout) = drive(6, Resolved { parallel: 1, tolerated_failures: Some(1) }, |_| true);
        assert_eq!(started, vec![0, 1]);
        assert_eq!(rollout.not_started(), Some((2, NotStarted::ErrorBudget)));
    }

    #[test]
    fn without_a_budget_every_target_starts() {
        let (started, rollout) = drive(6, Resolved { parallel: 2, tolerated_failures: None }, |_| true);
        assert_eq!(started.len(), 6);
        assert_eq!(rollout.not_started(), None);
    }

    #[test]
    fn an_interrupted_rollout_starts_nothing_more_and_waits_for_the_running() {
        let mut rollout = Rollout::new(5, Resolved { parallel: 2, tolerated_failures: None });
        assert_eq!((rollout.next_step(), rollout.next_step()), (Step::Start(0), Step::Start(1)));
        rollout.interrupt();
        assert_eq!(rollout.next_step(), Step::Wait);
        assert!(!rollout.finished(true), "an interrupted rollout has no budget to spend");
        assert_eq!(rollout.next_step(), Step::Wait);
        rollout.finished(false);
        assert_eq!(rollout.next_step(), Step::Done);
        assert_eq!(rollout.not_started(), Some((2, NotStarted::Interrupted)));
    }

    #[test]
    fn the_budget_is_spent_once_and_only_by_the_failure_over_it() {
        let mut rollout = Rollout::new(9, Resolved { parallel: 3, tolerated_failures: Some(1) });
        for _ in 0..3 {
            assert!(matches!(rollout.next_step(), Step::Start(_)));
        }
        assert!(!rollout.finished(true), "the first failure is tolerated");
        assert!(matches!(rollout.next_step(), Step::Start(3)));
        assert!(rollout.finished(true), "the second spends the budget");
        assert!(!rollout.finished(true), "and later ones do not spend it again");
        assert_eq!(rollout.next_step(), Step::Wait);
        rollout.finished(false);
        assert_eq!(rollout.next_step(), Step::Done);
        assert_eq!(rollout.not_started(), Some((4, NotStarted::ErrorBudget)));
    }

    proptest! {
        #[test]
        fn a_rollout_never_exceeds_its_limits(
            total in 0usize..40,
            parallel in 1usize..8,
            tolerated in proptest::option::of(0usize..6),
            failing in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let limits = Resolved { parallel, tolerated_failures: tolerated };
            let (started, rollout) = drive(total, limits, |i| failing[i]);
            prop_assert_eq!(&started, &(0..started.len()).collect::<Vec<_>>(), "targets start in order");
            let failures = started.iter().filter(|&&i| failing[i]).count();
            match (tolerated, rollout.not_started()) {
                (_, None) => prop_assert_eq!(started.len(), total),
                (Some(tolerated), Some((first, NotStarted::ErrorBudget))) => {
                    prop_assert_eq!(first, started.len());
                    prop_assert!(failures > tolerated);
                    // The failure that spent the budget came while at most `parallel - 1`
                    // others were running, and none started after it.
                    prop_assert!(failures <= tolerated + parallel);
                }
                (tolerated, other) => prop_assert!(false, "unexpected {other:?} with budget {tolerated:?}"),
            }
        }
    }
}
