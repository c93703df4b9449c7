//! Following tickets from the journal: the one path for a fresh submission, a ticket resumed after
//! a restart, and a ticket taken over from a replica that died. Whoever holds a ticket's lease
//! runs (or resumes) it from what the journal says, records every event, records the outcome,
//! and only then tells the agent to clean up.

use super::agents::AgentSeen;
use super::journal::{Corrupt, Journal, JournalError};
use super::lease::Leases;
use super::submission::Submission;
use crate::orchestrator::{Event, Orchestrator};
use contracts::backoff::Backoff;
use contracts::submission::negotiate::AgentKind;
use contracts::submission::outcome::Outcome;
use contracts::wire::messages::Secrets;
use contracts::wire::ticket::Ticket;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Everything following needs; shared by the API and the resume loop.
pub(super) struct Followers {
    pub orchestrator: Orchestrator,
    pub journal: Journal,
    pub leases: Leases,
    /// How long a ticket waits for its approvals ([`super::approvals`]).
    pub approval_wait: Duration,
    /// Tickets this replica follows now.
    following: Mutex<HashSet<Ticket>>,
    /// The secrets of submissions this replica took, until their outcome is recorded: never
    /// journaled, so lost with the process.
    secrets: Mutex<HashMap<Ticket, Secrets>>,
    /// Cancelled when the service stops: followers release their leases for another replica.
    pub shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Followers {
    pub(super) fn new(
        orchestrator: Orchestrator,
        journal: Journal,
        leases: Leases,
        approval_wait: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Followers {
            orchestrator,
            journal,
            leases,
            approval_wait,
            following: Mutex::default(),
            secrets: Mutex::default(),
            shutdown,
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// How many tickets this replica follows.
    pub(super) fn following(&self) -> usize {
        self.following.lock().expect("following").len()
    }

    /// Follows a ticket this replica has just recorded and holds the lease of. `place` (for
    /// `max-parallel`) is waited for before the start; `secrets` are the script's, which the
    /// journal does not hold.
    pub(super) fn follow_new(self: &Arc<Self>, ticket: Ticket, place: Option<PlaceWait>, secrets: Secrets) {
        if !secrets.is_empty() {
            self.secrets.lock().expect("secrets").insert(ticket.clone(), secrets);
        }
        self.spawn(ticket, place);
    }

    /// Looks for in-flight tickets nobody follows and takes them up, until shutdown.
    pub(super) async fn resume_loop(self: Arc<Self>) {
        let every = (self.leases.ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            if let Err(error) = self.resume_free().await {
                tracing::warn!(%error, "cannot look for tickets to resume");
            }
            if let Err(error) = self.journal.trim_history().await {
                tracing::debug!(%error, "cannot trim the history");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn resume_free(self: &Arc<Self>) -> Result<(), JournalError> {
        for ticket in self.journal.in_flight().await? {
            if self.following.lock().expect("following").contains(&ticket) || self.shutdown.is_cancelled() {
                continue;
            }
            if self.leases.acquire(&ticket).await? {
                tracing::info!(ticket = %ticket, replica = %self.leases.replica, "resuming ticket from the journal");
                self.spawn(ticket, None);
            }
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, ticket: Ticket, place: Option<PlaceWait>) {
        if !self.following.lock().expect("following").insert(ticket.clone()) {
            return;
        }
        let followers = self.clone();
        self.tasks.spawn(async move {
            let lost = CancellationToken::new();
            let interrupt = CancellationToken::new();
            let keeper = tokio::spawn(keep_lease(followers.clone(), ticket.clone(), lost.clone(), interrupt.clone()));
            let following = followers.follow(&ticket, place, &interrupt);
            let released = tokio::select! {
                result = following => {
                    if let Err(error) = result {
                        tracing::warn!(ticket = %ticket, %error, "stopped following; another replica (or a restart) resumes it");
                    }
                    true
                }
                _ = lost.cancelled() => {
                    tracing::warn!(ticket = %ticket, "lost the lease; another replica follows the ticket now");
                    false
                }
                _ = followers.shutdown.cancelled() => true,
            };
            keeper.abort();
            if released {
                if let Err(error) = followers.leases.release(&ticket).await {
                    tracing::debug!(ticket = %ticket, %error, "cannot release the lease; it expires");
                }
            }
            followers.following.lock().expect("following").remove(&ticket);
        });
    }

    /// Runs or resumes one ticket from its journal record to its recorded outcome.
    async fn follow(
        &self,
        ticket: &Ticket,
        place: Option<PlaceWait>,
        interrupt: &CancellationToken,
    ) -> Result<(), JournalError> {
        let Some(record) = self.journal.ticket(ticket).await? else {
            tracing::warn!(ticket = %ticket, "an in-flight ticket has no record (deleted by hand?); forgetting it");
            return self.journal.forget_in_flight(ticket).await;
        };
        if record.finished.is_some() {
            return Ok(());
        }
        let submission = &record.submission;
        let _place = match place {
            Some(wait) => Some(wait.await),
            None => None,
        };
        let route = match submission.route() {
            Ok(route) => route,
            Err(error) => return Err(Corrupt::Route(error).into()),
        };
        let policies = submission.policies();
        let (events, writer) = self.event_writer(ticket.clone());
        let sink = |event: Event| {
            let _ = events.send(event);
        };
        // A ticket cancelled while it waits for approvals is not sent: its target need not answer.
        let kind = match record.awaiting_ms.is_some() && record.cancel_requested {
            true => None,
            false => self.record_agent(submission, &route, &sink).await,
        };
        if record.planned.is_none() && !self.approved(&record, &route, kind.as_ref(), &sink).await? {
            // What was said while deciding (why it waits) is recorded before the ticket is let go.
            drop(events);
            let _ = writer.await;
            return Ok(());
        }
        let mut plan = match &record.planned {
            Some(plan) => plan.clone(),
            None => {
                let plan = self.orchestrator.plan_start(ticket.clone(), policies.script);
                edge::clock::observe(&self.orchestrator.metrics().common.store, "start", self.journal.start(&plan))
                    .await?;
                plan
            }
        };
        let mut spec = submission.spec.clone();
        spec.approvals = record.approvals.clone();
        if !submission.secret_names.is_empty() {
            match self.secrets.lock().expect("secrets").get(ticket) {
                Some(secrets) => spec.secret_env = secrets.clone(),
                None => {
                    // Never started without its secrets: only followed, as a start past its
                    // deadline is, in case it reached the agent before.
                    sink(Event::Notice("the script's secrets were held only by the replica that took it, which is gone: it is not started again, only followed".into()));
                    plan.not_after = std::time::UNIX_EPOCH;
                }
            }
        }
        if record.cancel_requested {
            interrupt.cancel();
        }
        let counted = self.orchestrator.metrics().common.scripts.start();
        let outcome =
            self.orchestrator.run_planned(&route, &plan, spec, policies, record.last_seq, &sink, interrupt).await;
        drop(events);
        // Every event is recorded before the outcome, and the outcome before the agent forgets.
        let _ = writer.await;
        self.record_outcome(&outcome).await?;
        counted.finish(outcome.outcome.name());
        if submission.schedule.is_some() {
            self.orchestrator.metrics().schedule_runs(outcome.outcome.name(), 1);
        }
        self.secrets.lock().expect("secrets").remove(ticket);
        self.orchestrator.complete_after(&route, ticket, &outcome, policies.script, &|_| {}).await;
        Ok(())
    }

    /// The outcome, recorded with retries: giving up would leave the ticket to be resumed, which
    /// only costs a repeated status request.
    pub(super) async fn record_outcome(&self, outcome: &Outcome) -> Result<(), JournalError> {
        let mut attempt = 0;
        loop {
            match edge::clock::observe(
                &self.orchestrator.metrics().common.store,
                "finish",
                self.journal.finish(outcome),
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(error) if attempt >= 20 => return Err(error),
                Err(error) => tracing::warn!(%error, "cannot record the outcome yet"),
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Records what the target answered to capabilities, for `GET /v1/agents`.
    async fn record_agent(
        &self,
        submission: &Submission,
        route: &crate::route::Route,
        sink: &(dyn Fn(Event) + Sync + Send),
    ) -> Option<AgentKind> {
        let seen_ms = contracts::time::unix_millis(std::time::SystemTime::now());
        let answer = self.orchestrator.agent_kind(route, submission.policies().health, sink).await;
        let seen = AgentSeen::new(route.name(), &submission.route, &answer, seen_ms);
        if let Err(error) = self.journal.agent_seen(&seen).await {
            tracing::debug!(%error, "cannot record the agent's capabilities");
        }
        answer.ok()
    }

    /// A channel for a submission's events and the task that records them in order. The sink
    /// is called from the orchestrator and must not wait; lines reach the journal within a round
    /// trip, and a line lost in a crash is fetched again from the agent on resume (after the
    /// journal's last line).
    /// The writer stops with its follower (a lost lease, a shutdown): what it had not written yet
    /// is fetched again by whoever resumes the ticket.
    fn event_writer(&self, ticket: Ticket) -> (mpsc::UnboundedSender<Event>, AbortOnDropHandle<()>) {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Event>();
        let journal = self.journal.clone();
        let metrics = self.orchestrator.metrics().common.store.clone();
        let writer = AbortOnDropHandle::new(tokio::spawn(async move {
            while let Some(event) = receiver.recv().await {
                // Soon after a blip (50 ms), at most every 2 s while the journal stays away.
                let mut backoff = Backoff::doubling(Duration::from_millis(50), Duration::from_secs(2));
                while let Err(error) = edge::clock::observe(&metrics, "event", journal.event(&ticket, &event)).await {
                    tracing::warn!(ticket = %ticket, %error, "cannot record an event yet");
                    tokio::time::sleep(backoff.next_pause()).await;
                }
            }
        }));
        (sender, writer)
    }

    /// Waits for every follower to stop (after shutdown).
    pub(super) async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A wait for a place among a request's `max-parallel` running tickets.
pub(super) type PlaceWait = std::pin::Pin<Box<dyn std::future::Future<Output = OwnedSemaphorePermit> + Send>>;

/// Renews the ticket's lease until the follower stops; cancels `lost` if another replica took it,
/// and `interrupt` when a cancel is requested through the journal.
async fn keep_lease(followers: Arc<Followers>, ticket: Ticket, lost: CancellationToken, interrupt: CancellationToken) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(followers.leases.renew_every()).await;
        match followers.leases.renew(&ticket).await {
            Ok(true) => failures = 0,
            Ok(false) => return lost.cancel(),
            Err(error) => {
                // The journal is out of reach: past the lease's life another replica may take over.
                failures += 1;
                tracing::warn!(ticket = %ticket, %error, "cannot renew the lease");
                if followers.leases.renew_every() * failures >= followers.leases.ttl {
                    return lost.cancel();
                }
                continue;
            }
        }
        if !interrupt.is_cancelled() && followers.journal.cancel_requested(&ticket).await.unwrap_or(false) {
            tracing::info!(ticket = %ticket, "cancel requested");
            interrupt.cancel();
        }
    }
}
