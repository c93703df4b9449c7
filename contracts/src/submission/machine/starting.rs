//! The submission's first steps: what the agent is (its capabilities, asked unless known), and
//! the start, script v2 under the planned ticket or script v1 under the agent's.

use super::{Action, AfterCount, AfterSend, Awaiting, Event, Mode, Now, Phase, Purpose, Submission};
use crate::submission::error::{CallError, ErrorClass, Unexpected};
use crate::submission::follow::LogFollower;
use crate::submission::negotiate::{no_consumer_notice, AgentKind, NotSent, ScriptProtocol};
use crate::submission::outcome::{exit, Outcome};
use crate::submission::requests::{expect_status, PlannedStart};
use crate::submission::retry::{cancel_policy, GaveUp, RetryPolicy};
use crate::time::unix_millis;
use crate::wire::envelope::{Reply, Request};
use crate::wire::error::{ErrorKind, ErrorReply};
use crate::wire::messages::{
    GetCapabilities, GetStatusV2, Kind, ScriptSpec, StartScriptV1, StartScriptV2, SERVICE_LIMITS, SERVICE_RUN_AS,
    SERVICE_SEALED_SECRETS, SERVICE_SECRET_MASKING,
};
use std::time::Duration;

impl<E: CallError> Submission<E> {
    // ---- capabilities ----

    pub(super) fn negotiate(&mut self, now: Now) {
        self.phase = Phase::Negotiate;
        if self.config.v1_only {
            return self.negotiated(Ok(None), now);
        }
        if let Some(kind) = self.config.known.clone() {
            return self.negotiated(Ok(Some(kind)), now);
        }
        self.awaiting = Some(Awaiting::Consumers { kind: Kind::GetCapabilities, then: AfterCount::Capabilities });
    }

    pub(super) fn counted(&mut self, then: AfterCount, count: Option<u32>, now: Now) {
        match then {
            AfterCount::Capabilities => {
                let policy = self.config.policies.health;
                if count == Some(0) {
                    let notice = no_consumer_notice(&self.config.capabilities_queue, policy, self.config.timing);
                    self.emit(Event::Notice(notice));
                }
                let request = Request::GetCapabilities(GetCapabilities {});
                self.begin_call(Purpose::Capabilities, request, policy, Duration::ZERO, None, now);
            }
            AfterCount::Cancel { request, not_after, start_sent } => {
                if count == Some(0) {
                    self.awaiting = Some(Awaiting::Sent { request, not_after, then: AfterSend::CancelQueued });
                    return;
                }
                let notice = format!("cancelling ticket {} on {}", self.ticket(), self.config.shown);
                self.emit(Event::Notice(notice));
                let policy = cancel_policy(self.follow_policy);
                self.begin_call(Purpose::Cancel { start_sent }, *request, policy, Duration::ZERO, Some(not_after), now);
            }
        }
    }

    /// The agent's kind is known (`None`: v1 without asking), or asking failed.
    pub(super) fn negotiated(&mut self, kind: Result<Option<AgentKind>, GaveUp<E>>, now: Now) {
        let target = self.config.target.clone();
        let protocol = match &kind {
            Ok(None) => Ok(ScriptProtocol::V1),
            Ok(Some(kind)) => kind.script_protocol().ok_or_else(|| {
                GaveUp::at_once(E::unexpected(Unexpected::NoScriptService { target: self.config.shown.clone() }))
            }),
            Err(gave_up) => Err(gave_up.clone()),
        };
        if let (Ok(Some(AgentKind::Legacy)), Ok(_)) = (&kind, &protocol) {
            self.out.push_back(Action::LegacyNotice(format!(
                "{} is a legacy agent (script v1 only): retries are off for it, since a repeated start could run a script twice; upgrade the agent to turn them on",
                self.config.shown
            )));
        }
        let why_no_secrets = match &kind {
            Ok(Some(kind)) if kind.masks_secrets() && kind.opens_sealed_secrets() => None,
            Ok(Some(kind)) if kind.masks_secrets() => Some(format!("{} is too old to open secrets sealed to its key (it does not list {SERVICE_SEALED_SECRETS}), and in clear whoever reads its commands would read them: upgrade it; nothing was sent", self.config.shown)),
            _ => Some(format!("{} is too old to mask secrets (it does not list {SERVICE_SECRET_MASKING}): upgrade it, or pass the value without --secret-env; nothing was sent", self.config.shown)),
        };
        // Unknown when asking failed: that error is reported instead.
        let (runs_as, limits) = match &kind {
            Ok(Some(kind)) => (Some(kind.runs_as_named_user()), Some(kind.enforces_limits())),
            Ok(None) => (Some(false), Some(false)),
            Err(_) => (None, None),
        };
        let addressed = self.config.addressed.clone();
        let wall_ms = unix_millis(now.wall);
        // A planned start may have been sent before (a resumed ticket): whether its approvals
        // still hold is the agent's to say, which answers a copy of a start it claimed with its
        // status. Before a planned start is first sent, its service checked them.
        let planned = matches!(self.mode, Mode::Planned { .. });
        let refused_before_sending = |spec: &mut ScriptSpec| {
            if let Ok(Some(kind)) = &kind {
                let fitted = match kind.fit_approvals(spec, &addressed, wall_ms) {
                    Err(NotSent::Unapproved(_)) if planned => Ok(()),
                    fitted => fitted,
                };
                if let Err(not_sent) = fitted {
                    let why = format!("{} {not_sent}; nothing was sent{}", self.config.shown, not_sent.hint());
                    return Some(E::agent(target.clone(), ErrorReply::new(ErrorKind::NotAuthorized, why)));
                }
            }
            let why = match &spec.run_as {
                Some(user) if runs_as == Some(false) => Some(format!("{} is too old to run a script as another user (it does not list {SERVICE_RUN_AS}) and would run it as itself, not as {user}: upgrade it, or submit without --run-as; nothing was sent", self.config.shown)),
                _ if !spec.limits.is_empty() && limits == Some(false) => Some(format!("{} is too old to bound a script's resources (it does not list {SERVICE_LIMITS}) and would run it unbounded: upgrade it, or submit without limits; nothing was sent", self.config.shown)),
                _ => why_no_secrets.clone().filter(|_| !spec.secret_env.is_empty()),
            }?;
            Some(E::agent(target.clone(), ErrorReply::new(ErrorKind::Unsupported, why)))
        };
        match self.mode.clone() {
            Mode::Submit { mut spec, ticket } => {
                let protocol = match protocol {
                    Ok(protocol) => protocol,
                    Err(g) => {
                        return self.finish(Outcome::from_error(None, &target, &g.error, g.to_string(), false), now)
                    }
                };
                if let Some(error) = refused_before_sending(&mut spec) {
                    return self.finish(Outcome::from_error(None, &target, &error, error.to_string(), false), now);
                }
                self.complete = true;
                self.protocol = protocol;
                match protocol {
                    ScriptProtocol::V2 => {
                        let plan = PlannedStart::new(ticket, self.config.policies.script, self.config.timing, now.wall);
                        self.emit(Event::Ticket { ticket: plan.ticket.clone(), target });
                        self.start_v2(plan, spec, now);
                    }
                    ScriptProtocol::V1 => {
                        self.phase = Phase::StartV1;
                        let start = Request::StartScriptV1(StartScriptV1 { spec });
                        let not_after = now.wall + self.config.timing.attempt_timeout;
                        self.begin_call(
                            Purpose::Start,
                            start,
                            RetryPolicy::once(),
                            Duration::ZERO,
                            Some(not_after),
                            now,
                        );
                    }
                }
            }
            Mode::Planned { plan, mut spec, last_seen } => {
                let ticket = Some(plan.ticket.clone());
                if !spec.secret_env.is_empty() {
                    if let Err(g) = &kind {
                        let message = g.error.to_string();
                        return self.finish(Outcome::from_error(ticket, &target, &g.error, message, false), now);
                    }
                }
                if let Some(error) = refused_before_sending(&mut spec) {
                    return self.finish(Outcome::from_error(ticket, &target, &error, error.to_string(), false), now);
                }
                match protocol {
                    Err(g) => self.finish(Outcome::from_error(ticket, &target, &g.error, g.to_string(), false), now),
                    Ok(ScriptProtocol::V1) => {
                        let error = E::agent(target.clone(), ErrorReply::new(
                            ErrorKind::Unsupported,
                            "a legacy agent (script v1) makes its own tickets, so a submission to it cannot be recorded before it starts nor resumed; upgrade the agent",
                        ));
                        self.finish(Outcome::from_error(ticket, &target, &error, error.to_string(), false), now)
                    }
                    Ok(ScriptProtocol::V2) => {
                        self.follower = LogFollower::after(last_seen);
                        if now.wall < plan.not_after {
                            return self.start_v2(plan, spec, now);
                        }
                        self.phase = Phase::Resume;
                        let request = Request::GetStatusV2(GetStatusV2 {
                            ticket: plan.ticket.clone(),
                            last_log_sequence: last_seen,
                            wait: None,
                        });
                        self.plan = Some(plan);
                        let policy = self.config.policies.script;
                        self.begin_call(Purpose::Status, request, policy, Duration::ZERO, None, now);
                    }
                }
            }
            Mode::Follow | Mode::Cancel => unreachable!("only submissions negotiate"),
        }
    }

    // ---- start ----

    pub(super) fn start_v2(&mut self, plan: PlannedStart, spec: ScriptSpec, now: Now) {
        self.phase = Phase::StartV2;
        self.ticket = Some(plan.ticket.clone());
        let timing = self.config.timing;
        let start = Request::StartScriptV2(StartScriptV2 {
            ticket: plan.ticket.clone(),
            spec,
            wait_for_output: Some(timing.start_wait.as_millis() as u64),
            first_issued_at: Some(unix_millis(plan.issued_at)),
        });
        let not_after = Some(plan.not_after);
        self.plan = Some(plan);
        self.begin_call(Purpose::Start, start, self.config.policies.script, timing.start_wait, not_after, now);
    }

    /// Script v1, the way dispatchers did before resilient communications: the agent makes the
    /// ticket, and the start is never repeated once it may have reached the broker.
    pub(super) fn started_v1(&mut self, answer: Result<Reply, GaveUp<E>>, published: bool, now: Now) {
        let target = self.config.target.clone();
        let error = match answer {
            Ok(reply) => match expect_status::<E>(reply) {
                Ok(status) => {
                    self.ticket = Some(status.ticket.clone());
                    self.emit(Event::Ticket { ticket: status.ticket.clone(), target });
                    return self.following(status, RetryPolicy::once(), true, now);
                }
                Err(g) => return self.finish(Outcome::from_error(None, &target, &g.error, g.to_string(), false), now),
            },
            Err(gave_up) => gave_up.error,
        };
        // An agent that answered (even "try again") said the start did not run.
        let answered = matches!(error.class(), ErrorClass::Agent(_));
        let reached = published && error.is_transient() && !answered;
        let error = if reached { E::unrepeatable(error) } else { error };
        let message = if reached { format!("{error}; its outcome is unknown") } else { error.to_string() };
        let mut outcome = Outcome::from_error(None, &target, &error, message, reached);
        if answered {
            // Refused, even if only for now: its start is never repeated.
            outcome.process_exit = exit::REJECTED;
        }
        self.finish(outcome, now);
    }
}
