//! The service's scheduler: every replica passes over the schedules at least every second (and at
//! each slot's time), marks the journal every second (so that replicas tell when every one of
//! them was down), and fires what is due ([`crate::schedule::due`]) by recording it in the
//! journal ([`super::schedules`]); whichever replica records a slot first submits its tickets and
//! follows them like any submission ([`super::resume`]). Any replica may fire any slot: the
//! record makes it once, so no lease is needed for correctness, and a replica that dies anywhere
//! leaves nothing another cannot finish.
//!
//! Before a slot fires, the schedule's signature is checked against the service's own key: a
//! schedule written or changed in the journal by anyone without the key never runs.

use super::journal::JournalError;
use super::resume::{Followers, PlaceWait};
use super::schedules::{Fire, RunRecord, RunRequest, RunTarget, Schedules, StoredSchedule};
use super::submission::{SlotOf, Submission};
use crate::budget::Share;
use crate::inventory::InventoryError;
use crate::plan::{Plan, PlanError, Tickets};
use crate::policy::PolicyConfig;
use crate::route::Route;
use crate::rpc::RpcConfig;
use crate::schedule::{self, Cadence, CadenceError, ScheduleError, ScheduleSpec, ScheduleTargets, Slot};
use crate::trust::DispatcherTrust;
use contracts::trust::seal::Seal;
use contracts::trust::verify::{check_schedule, Forged};
use contracts::wire::labels::{LabelError, Selector};
use contracts::wire::topology::NameError;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio_util::task::AbortOnDropHandle;

/// The longest time between two passes.
const PASS_EVERY: Duration = Duration::from_secs(1);

/// How often a running replica marks the journal.
const MARK_EVERY: Duration = Duration::from_secs(1);

/// The longest a slot's `--select` waits for the live fleet: a pass is not held up for long.
const FLEET_WAIT: Duration = Duration::from_secs(3);

/// A slot recorded this long ago whose tickets are still not all submitted (its replica died in
/// between) is finished by another replica.
const PENDING_AFTER: Duration = Duration::from_secs(3);

/// What firing a slot did.
#[derive(Debug)]
pub(crate) enum Fired {
    /// Recorded now, its tickets submitted.
    New(RunRecord),
    /// Recorded before, by another replica or an earlier pass.
    Earlier,
    /// Not fired: the schedule was removed or paused meanwhile.
    Not,
    /// Not yet: its targets could not be read (the live fleet, for `--select`); the next pass
    /// tries again while the slot is on time.
    Later(SlotTargetsError),
}

/// Why the targets of a slot cannot be had now.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SlotTargetsError {
    /// The schedule's agents or pool.
    #[error(transparent)]
    Targets(#[from] PlanError),
    /// Its `--select`, or a live agent's id.
    #[error(transparent)]
    Selector(#[from] LabelError),
    #[error(transparent)]
    Agent(#[from] NameError),
    #[error("this service has no key")]
    NoKey,
    #[error("cannot read the live agents for --select {selector}: {source}")]
    Fleet { selector: Selector, source: InventoryError },
    #[error("the live agents for --select {selector} were not read within {FLEET_WAIT:?}")]
    FleetLate { selector: Selector },
}

/// Why a schedule is not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("this service has no key to check schedules with")]
    NoKey,
    /// `key` is the id of the key that signed it, or `none`.
    #[error("its signature is not this service's (key {key}): {reason}; add it again with this service's key (`dispatcher schedule add --key`, or POST /v1/schedules)")]
    Signature { key: String, reason: Forged },
    #[error(transparent)]
    Invalid(#[from] CadenceError),
}

/// The scheduler of one replica.
pub(crate) struct Scheduler {
    followers: Arc<Followers>,
    pub schedules: Schedules,
    policies: PolicyConfig,
    /// The broker and the service's key: the live fleet for `--select`, the schedules' signatures.
    rpc: RpcConfig,
    /// Schedules refused, already logged (once each).
    refused: Mutex<HashSet<String>>,
}

fn now_ms() -> u64 {
    contracts::time::unix_millis(SystemTime::now())
}

impl Scheduler {
    pub(super) fn new(followers: Arc<Followers>, policies: PolicyConfig) -> Arc<Scheduler> {
        let rpc = followers.orchestrator.rpc().config().clone();
        Arc::new(Scheduler {
            schedules: Schedules::new(followers.journal.clone()),
            followers,
            policies,
            rpc,
            refused: Mutex::default(),
        })
    }

    fn trust(&self) -> Option<&DispatcherTrust> {
        self.rpc.trust.as_deref()
    }

    /// The id of the service's key, with which it signs and checks schedules.
    pub(crate) fn key_id(&self) -> Option<String> {
        self.trust().map(|trust| trust.public_key().id().to_string())
    }

    /// Signs a schedule's record with the service's key.
    pub(crate) fn sign(&self, record: &str) -> Option<Seal> {
        self.trust().map(|trust| trust.seal_schedule(record.as_bytes()))
    }

    /// The schedule's cadence, if this service runs it: signed by its key, over this very record.
    pub(crate) fn check(&self, schedule: &StoredSchedule) -> Result<Cadence, Refused> {
        let trust = self.trust().ok_or(Refused::NoKey)?;
        let signer = match &schedule.seal {
            Ok(Some(seal)) => seal.signer().map_or_else(|| "none".to_owned(), |k| k.to_string()),
            _ => "none".to_owned(),
        };
        check_schedule(trust.public_key(), schedule.seal.clone(), schedule.record.as_bytes())
            .map_err(|reason| Refused::Signature { key: signer, reason })?;
        Ok(Cadence::parse(&schedule.spec.cron, &schedule.spec.timezone, now_ms())?)
    }

    /// Passes over the schedules until shutdown: at least every [`PASS_EVERY`], and at each
    /// slot's time.
    pub(crate) async fn run(self: Arc<Self>) {
        let shutdown = self.followers.shutdown.clone();
        let mut marking = None;
        loop {
            let wait = match self.pass().await {
                Ok(next) => {
                    // From the first pass on, which had to see whether every replica was down
                    // before this one came, this replica marks the journal, however long a
                    // pass takes.
                    if marking.is_none() {
                        marking = Some(AbortOnDropHandle::new(tokio::spawn(self.clone().mark())));
                    }
                    let until_next = next.map(|next| Duration::from_millis(next.saturating_sub(now_ms()) + 5));
                    until_next.unwrap_or(PASS_EVERY).clamp(Duration::from_millis(20), PASS_EVERY)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot pass over the schedules");
                    PASS_EVERY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Marks the journal every [`MARK_EVERY`] until shutdown.
    async fn mark(self: Arc<Self>) {
        let key = self.key_id().unwrap_or_else(|| "none".into());
        loop {
            if let Err(error) = self.schedules.mark(&self.followers.leases.replica, &key, now_ms()).await {
                tracing::debug!(%error, "cannot mark the journal");
            }
            tokio::select! {
                _ = tokio::time::sleep(MARK_EVERY) => {}
                _ = self.followers.shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: every schedule's due slots and run-now requests fired, slots left pending by a
    /// replica that died finished. Gives the next slot's time.
    async fn pass(&self) -> Result<Option<u64>, JournalError> {
        let now = now_ms();
        let last_mark = self.schedules.last_mark().await?;
        let mut next: Option<u64> = None;
        for schedule in self.schedules.all().await? {
            if self.followers.shutdown.is_cancelled() {
                return Ok(next);
            }
            let cadence = match self.check(&schedule) {
                Ok(cadence) => cadence,
                Err(refused) => {
                    if self.refused.lock().expect("refused").insert(schedule.spec.id.clone()) {
                        tracing::error!(schedule = %schedule.spec.name, "not running the schedule: {refused}");
                    }
                    continue;
                }
            };
            self.finish_pending(&schedule, &cadence).await?;
            for raw in &schedule.requests {
                match serde_json::from_str::<RunRequest>(raw) {
                    Ok(request) => {
                        self.fire(&schedule, &cadence, request.slot()).await?;
                    }
                    Err(error) => {
                        tracing::warn!(schedule = %schedule.spec.name, %error, "dropping a run-now request it cannot read")
                    }
                }
                self.schedules.request_done(&schedule.spec.id, raw).await?;
            }
            if schedule.paused {
                continue;
            }
            let due = schedule::due(&cadence, schedule.spec.missed, schedule.cursor_ms, last_mark, now);
            self.fire_due(&schedule, &cadence, due).await?;
            if let Some(slot) = cadence.next_after(now) {
                next = Some(next.map_or(slot, |next| next.min(slot)));
            }
        }
        Ok(next)
    }

    /// Fires what a pass found due: missed slots skipped or run once, then the slots on time.
    async fn fire_due(
        &self,
        schedule: &StoredSchedule,
        cadence: &Cadence,
        due: schedule::Due,
    ) -> Result<(), JournalError> {
        let name = &schedule.spec.name;
        let metrics = self.followers.orchestrator.metrics();
        if let Some(skip_to) = due.skip_to {
            if self.schedules.advance(&schedule.spec.id, skip_to).await? {
                metrics.schedule_runs("skipped", due.missed as u64);
                tracing::info!(schedule = %name, missed = due.missed, latest = %cadence.rfc3339(skip_to), "skipped slots missed while every replica was down (--missed skip)");
            }
        }
        if let Some(once) = due.once {
            if let Fired::New(_) = self.fire(schedule, cadence, Slot::missed(once)).await? {
                metrics.schedule_runs("skipped", due.missed.saturating_sub(1) as u64);
                tracing::info!(schedule = %name, missed = due.missed, slot = %cadence.rfc3339(once), "running once for the slots missed while every replica was down (--missed once)");
            }
        }
        for slot in due.on_time {
            if let Fired::Later(reason) = self.fire(schedule, cadence, Slot::cron(slot)).await? {
                tracing::warn!(schedule = %name, slot = %cadence.rfc3339(slot), "cannot fire the slot yet: {reason}");
            }
        }
        Ok(())
    }

    /// Fires a run-now asked through this replica at once, instead of at the next pass.
    pub(crate) async fn run_now(&self, schedule: &StoredSchedule, request: &RunRequest) -> Result<Fired, JournalError> {
        let Ok(cadence) = self.check(schedule) else { return Ok(Fired::Not) };
        self.fire(schedule, &cadence, request.slot()).await
    }

    /// Fires one slot: its targets (the live fleet at this moment for `--select`), its plan and
    /// tickets, recorded once; then, if recorded here, its tickets submitted and followed.
    pub(crate) async fn fire(
        &self,
        schedule: &StoredSchedule,
        cadence: &Cadence,
        slot: Slot,
    ) -> Result<Fired, JournalError> {
        let spec = &schedule.spec;
        let (routes, mut note) = match self.targets(&spec.targets).await {
            Ok(routes) => (routes, None),
            Err(reason) if slot.is_cron() => return Ok(Fired::Later(reason)),
            // A run-now fires anyway, and its record says why nothing ran.
            Err(reason) => (Vec::new(), Some(reason.to_string())),
        };
        if routes.is_empty() && note.is_none() {
            note = Some(format!("no live agent matches {}, nothing ran", spec.targets));
        }
        let submissions = match self.submissions(spec, cadence, &slot, routes) {
            Ok(submissions) => submissions,
            Err(reason) => {
                note = Some(format!("cannot plan the run: {reason}"));
                Vec::new()
            }
        };
        let fired_ms = now_ms();
        let run = RunRecord {
            slot: slot.id.clone(),
            kind: slot.kind,
            at_ms: slot.at_ms,
            fired_ms,
            targets: submissions.iter().map(|s| RunTarget { route: s.route.clone(), name: s.target.clone() }).collect(),
            tickets: submissions.iter().map(|s| s.ticket.to_string()).collect(),
            note,
            replica: self.followers.leases.replica.clone(),
        };
        let metrics = self.followers.orchestrator.metrics();
        match self.schedules.fire(&spec.id, &slot, &run).await? {
            Fire::New => {}
            Fire::Earlier => return Ok(Fired::Earlier),
            Fire::Gone | Fire::Paused => return Ok(Fired::Not),
        }
        if slot.is_cron() {
            metrics.schedule_lag(Duration::from_millis(fired_ms.saturating_sub(slot.at_ms)));
        }
        if submissions.is_empty() {
            metrics.schedule_runs("not_started", 1);
            tracing::warn!(schedule = %spec.name, slot = %cadence.rfc3339(slot.at_ms), "nothing runs for this slot: {}", run.note.as_deref().unwrap_or("no target"));
        } else {
            tracing::info!(schedule = %spec.name, slot = %cadence.rfc3339(slot.at_ms), kind = ?slot.kind, tickets = %run.tickets.join(","), "slot fired");
        }
        self.submit(&submissions, spec.max_parallel).await?;
        self.schedules.submitted(&spec.id, &slot.id).await?;
        Ok(Fired::New(run))
    }

    /// The routes of a slot: the schedule's targets, or the live agents `--select` matches now.
    async fn targets(&self, targets: &ScheduleTargets) -> Result<Vec<Route>, SlotTargetsError> {
        if let Some(routes) = targets.routes() {
            return Ok(routes?);
        }
        let selector = match targets.selector() {
            Some(selector) => selector?,
            None => return Ok(Vec::new()),
        };
        let trust = self.trust().ok_or(SlotTargetsError::NoKey)?;
        let known = trust.known_agents();
        let reading = crate::inventory::read(&self.rpc, &known);
        let inventory = match tokio::time::timeout(FLEET_WAIT, reading).await {
            Ok(read) => read.map_err(|source| SlotTargetsError::Fleet { selector: selector.clone(), source })?,
            Err(_) => return Err(SlotTargetsError::FleetLate { selector }),
        };
        let matching = inventory.select_to_run(&selector, edge::clock::now_ms(), trust);
        Ok(matching.iter().map(|agent| Route::agent(&agent.agent_id)).collect::<Result<_, _>>()?)
    }

    /// The journal's record of each target's run of a slot, through the one plan every script
    /// takes ([`crate::plan`]), under the slot's tickets.
    fn submissions(
        &self,
        spec: &ScheduleSpec,
        cadence: &Cadence,
        slot: &Slot,
        routes: Vec<Route>,
    ) -> Result<Vec<Submission>, ScheduleError> {
        if routes.is_empty() {
            return Ok(Vec::new());
        }
        let plan = Plan::new(routes, spec.slot_spec(slot, cadence), &spec.choice()?, &self.policies)?;
        let tickets = Tickets::Slot { schedule: &spec.id, slot: &slot.id };
        let mut submissions = plan.submissions(tickets, &format!("schedule:{}", spec.name));
        for submission in &mut submissions {
            submission.schedule = Some(SlotOf {
                schedule: spec.name.clone(),
                id: spec.id.clone(),
                slot: slot.id.clone(),
                at_ms: slot.at_ms,
            });
        }
        Ok(submissions)
    }

    /// Records each submission (once: another replica may have) and follows those this replica
    /// gets the lease of, `max_parallel` at a time; the others are taken up by whoever holds
    /// their lease, or resumed.
    async fn submit(&self, submissions: &[Submission], max_parallel: Share) -> Result<(), JournalError> {
        let followers = &self.followers;
        let parallel = max_parallel.of_rounded_up(submissions.len()).max(1);
        let places = (submissions.len() > 1).then(|| Arc::new(Semaphore::new(parallel)));
        for submission in submissions {
            let journal = followers.journal.submit(submission);
            let recorded =
                edge::clock::observe(&followers.orchestrator.metrics().common.store, "submit", journal).await?;
            let ticket = &submission.ticket;
            if recorded == super::journal::Recorded::New && followers.leases.acquire(ticket).await? {
                let place: Option<PlaceWait> = places.clone().map(|places| -> PlaceWait {
                    Box::pin(async move { places.acquire_owned().await.expect("never closed") })
                });
                followers.follow_new(ticket.clone(), place, Default::default());
            }
        }
        Ok(())
    }

    /// Slots recorded by a replica that died before it submitted all their tickets: the same
    /// tickets submitted from the slot's record.
    async fn finish_pending(&self, schedule: &StoredSchedule, cadence: &Cadence) -> Result<(), JournalError> {
        let id = &schedule.spec.id;
        for slot in &schedule.pending {
            let Some(run) = self.schedules.slot_run(id, slot).await? else {
                self.schedules.submitted(id, slot).await?;
                continue;
            };
            if now_ms().saturating_sub(run.fired_ms) < PENDING_AFTER.as_millis() as u64 {
                continue;
            }
            let routes: Result<Vec<Route>, NameError> = run
                .targets
                .iter()
                .map(|t| if t.route == "pool" { Route::pool(&t.name) } else { Route::agent(&t.name) })
                .collect();
            let submissions = routes
                .map_err(ScheduleError::Name)
                .and_then(|routes| self.submissions(&schedule.spec, cadence, &run.slot(), routes));
            match submissions {
                Ok(submissions) => {
                    tracing::info!(schedule = %schedule.spec.name, slot = %run.slot, "submitting the tickets of a slot whose replica stopped after recording it");
                    self.submit(&submissions, schedule.spec.max_parallel).await?;
                }
                Err(reason) => {
                    tracing::error!(schedule = %schedule.spec.name, slot = %run.slot, "cannot submit the tickets of a recorded slot: {reason}")
                }
            }
            self.schedules.submitted(id, slot).await?;
        }
        Ok(())
    }
}
