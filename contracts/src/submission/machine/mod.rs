//! The dispatcher's submission as a state machine with no I/O: capabilities, start, follow,
//! cancel and complete, with every request repeated under its retry policy. [`Submission::poll`]
//! says what to do next (send a request and wait for its reply, publish one, count a queue's
//! consumers, tell the user something, wait until a time, or end with an [`Outcome`]);
//! [`Submission::handle`] takes what happened (a reply, a failed attempt, a lost connection,
//! the user's Ctrl-C). Time is an input ([`Now`]): the dispatcher drives it with the clock and
//! the broker, the simulator (`tests/simulation`) with its own, and tests with none.
//!
//! The machine's types and its public face are here; its steps are methods in two files of
//! their own: `starting` (capabilities and the start), `following` (the log, the cancel, the
//! end).

mod following;
mod starting;

use super::error::{CallError, ErrorClass};
use super::follow::LogFollower;
use super::negotiate::{AgentKind, ScriptProtocol};
use super::outcome::Outcome;
use super::requests::{expect_status, PlannedStart};
use super::retry::{GaveUp, Policies, Retry, RetryNotice, RetryPolicy, Timing};
use crate::wire::envelope::{Reply, Request};
use crate::wire::error::ErrorKind;
use crate::wire::messages::{Kind, ScriptSpec};
use crate::wire::status::{LogLine, ScriptStatus};
use crate::wire::ticket::Ticket;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// What happens during a submission, for the user to see.
#[derive(Clone, Debug)]
pub enum Event<E> {
    /// The ticket chosen for the script, before anything is sent.
    Ticket {
        ticket: Ticket,
        target: String,
    },
    Log(LogLine),
    /// A request failed and will be repeated.
    Retry {
        request: Kind,
        notice: RetryNotice<E>,
    },
    /// Something the user should know (one line, lowercase).
    Notice(String),
    /// Something the user should worry about: a forged answer ignored, an agent believed
    /// unsigned because it is pinned as legacy (one line, lowercase).
    Warning(String),
}

/// The time, as the machine sees it: `mono` since any origin the driver keeps (deadlines,
/// delays), `wall` for what goes on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: Duration,
    pub wall: SystemTime,
}

/// What the driver does next.
#[derive(Clone, Debug)]
pub enum Action<E> {
    /// Publish one attempt of `request` and wait for its reply up to `reply_timeout`; then
    /// [`Input::Reply`] or [`Input::Failed`] with this `attempt`.
    Call {
        attempt: u64,
        request: Request,
        reply_timeout: Duration,
        not_after: SystemTime,
    },
    /// Publish `request` and wait only for the broker; then [`Input::Sent`].
    Send {
        request: Request,
        not_after: SystemTime,
    },
    /// Count the consumers of the queue requests of `kind` go to; then [`Input::Consumers`].
    CountConsumers(Kind),
    /// What the agent said of itself, to remember for later submissions.
    Learned(AgentKind),
    /// That retries are off for a legacy agent: to tell the user once per agent.
    LegacyNotice(String),
    Emit(Event<E>),
    /// Nothing to do until the reply of `attempt` (or the user's interrupt).
    AwaitReply(u64),
    /// Nothing to do until `mono` time (or the user's interrupt).
    Sleep(Duration),
    /// The end.
    Done(Outcome),
}

/// What happened.
#[derive(Clone, Debug)]
pub enum Input<E> {
    Reply {
        attempt: u64,
        reply: Reply,
    },
    /// The attempt failed: an error, no reply in time, a lost connection. `published` if it
    /// (or an earlier attempt of the same request) may have reached the broker.
    Failed {
        attempt: u64,
        error: E,
        published: bool,
    },
    Consumers(Option<u32>),
    Sent(Result<(), E>),
    /// The user's Ctrl-C; `published` if the attempt waited for may have reached the broker.
    Interrupt {
        published: bool,
    },
}

/// Who the submission talks to, and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// The target's name, as outcomes carry it.
    pub target: String,
    /// The target as messages name it (`agent x`, `pool p`).
    pub shown: String,
    /// The target as commands address it (an agent id, or `pool:<name>`): what approvals approve.
    pub addressed: String,
    /// The queue capabilities requests go to (for the notice when nobody consumes it).
    pub capabilities_queue: String,
    pub timing: Timing,
    pub policies: Policies,
    /// Speak script v1 only, without asking (`--protocol v1`).
    pub v1_only: bool,
    /// What the agent said of itself, if known already.
    pub known: Option<AgentKind>,
    /// Decides the retries' jitter.
    pub seed: u64,
}

#[derive(Clone, Debug)]
enum Mode {
    /// Capabilities, a start under `ticket` (script v2) or the agent's own (v1), follow, complete.
    Submit { spec: ScriptSpec, ticket: Ticket },
    /// A start planned beforehand, resumed after line `last_seen`; not completed.
    Planned { plan: PlannedStart, spec: ScriptSpec, last_seen: u64 },
    /// Follows a ticket; not completed.
    Follow,
    /// Cancels a ticket and follows it until it stops.
    Cancel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Negotiate,
    StartV1,
    StartV2,
    /// A status request before following a planned start past its deadline.
    Resume,
    Follow,
    Cancel,
    /// A best-effort cancel or a complete before the end.
    Ending,
    Done,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Capabilities,
    Start,
    Status,
    Cancel { start_sent: bool },
    BestEffortCancel,
}

#[derive(Clone, Debug)]
struct Call {
    purpose: Purpose,
    request: Request,
    retry: Retry,
    not_after: Option<SystemTime>,
    /// The attempt waiting for its reply, if any.
    in_flight: Option<u64>,
    /// When the next attempt goes out, if none is waiting.
    wake: Duration,
    published: bool,
    /// Some published attempt got no answer (no reply in time, or the link lost): it may have
    /// done what it asked, whatever later attempts are answered.
    unanswered: bool,
}

#[derive(Clone, Debug)]
enum Awaiting {
    Consumers { kind: Kind, then: AfterCount },
    Sent { request: Box<Request>, not_after: SystemTime, then: AfterSend },
}

#[derive(Clone, Debug)]
enum AfterCount {
    Capabilities,
    Cancel { request: Box<Request>, not_after: SystemTime, start_sent: bool },
}

#[derive(Clone, Copy, Debug)]
enum AfterSend {
    CancelQueued,
    Complete(ScriptProtocol),
}

/// One submission, from its first request to its outcome.
#[derive(Clone, Debug)]
pub struct Submission<E> {
    config: Config,
    mode: Mode,
    phase: Phase,
    ticket: Option<Ticket>,
    /// The start this submission makes (script v2).
    plan: Option<PlannedStart>,
    protocol: ScriptProtocol,
    follower: LogFollower,
    status: Option<ScriptStatus>,
    /// The policy of the status requests while following.
    follow_policy: RetryPolicy,
    /// Whether an interrupt while following cancels the script.
    interruptible: bool,
    /// The user interrupted; acted on as soon as the machine can.
    interrupted: bool,
    /// Set by a cancel: whether its start was sent and not answered (see [`Outcome::after_cancel`]).
    after_cancel: Option<bool>,
    /// The agent answered with the ticket known (claimed, running or ended): an unknown ticket
    /// later is one its store lost ([`Outcome::lost_by_store`]), not one that never ran.
    seen_known: bool,
    /// Whether the end is completed on the agent (script v1 and v2 submissions).
    complete: bool,
    /// The outcome decided, while a best-effort cancel or a complete goes out.
    ending: Option<Outcome>,
    call: Option<Call>,
    awaiting: Option<Awaiting>,
    /// A legacy agent's next status request, after [`super::requests::V1_POLL`].
    poll_at: Option<Duration>,
    out: VecDeque<Action<E>>,
    next_attempt: u64,
    rng: fastrand::Rng,
    outcome: Option<Outcome>,
}

impl<E: CallError> Submission<E> {
    fn new(config: Config, mode: Mode, ticket: Option<Ticket>) -> Self {
        let rng = fastrand::Rng::with_seed(config.seed);
        let follow_policy = config.policies.script;
        Submission {
            config,
            mode,
            phase: Phase::Negotiate,
            ticket,
            plan: None,
            protocol: ScriptProtocol::V2,
            follower: LogFollower::after(0),
            status: None,
            follow_policy,
            interruptible: true,
            interrupted: false,
            after_cancel: None,
            seen_known: false,
            complete: false,
            ending: None,
            call: None,
            awaiting: None,
            poll_at: None,
            out: VecDeque::new(),
            next_attempt: 0,
            rng,
            outcome: None,
        }
    }

    /// Runs `spec` to its end: capabilities (unless known), a start under `ticket` (on a legacy
    /// agent, under the ticket it makes), follow, complete.
    pub fn submit(config: Config, spec: ScriptSpec, ticket: Ticket, now: Now) -> Self {
        let mut machine = Self::new(config, Mode::Submit { spec, ticket }, None);
        machine.negotiate(now);
        machine
    }

    /// Runs a start planned (and recorded) beforehand and follows it after line `last_seen`,
    /// without completing it. Again with the same plan after a crash, it never runs the script
    /// twice: within the plan's deadline the start is repeated (the agent answers a known
    /// ticket with its status), past it the ticket is only asked for. Script v2 only.
    pub fn run_planned(config: Config, plan: PlannedStart, spec: ScriptSpec, last_seen: u64, now: Now) -> Self {
        let ticket = Some(plan.ticket.clone());
        let mut machine = Self::new(config, Mode::Planned { plan, spec, last_seen }, ticket);
        machine.negotiate(now);
        machine
    }

    /// Follows `ticket` from `status` (seen up to `follower`) until it is complete and every
    /// line is seen, under the script policy; an interrupt cancels it and follows it until it
    /// stops.
    pub fn follow(
        config: Config,
        ticket: Ticket,
        follower: LogFollower,
        status: ScriptStatus,
        protocol: ScriptProtocol,
        now: Now,
    ) -> Self {
        let mut machine = Self::new(config, Mode::Follow, Some(ticket));
        machine.follower = follower;
        // Lines the caller did not pass on: after lines the store lost, which are named.
        machine.accept(&status);
        machine.status = Some(status);
        machine.protocol = protocol;
        machine.phase = Phase::Follow;
        machine.follow_step(now);
        machine
    }

    /// Cancels `ticket` (given by the user) and follows it until it has stopped.
    pub fn cancel(config: Config, ticket: Ticket, protocol: ScriptProtocol, now: Now) -> Self {
        let mut machine = Self::new(config, Mode::Cancel, Some(ticket));
        machine.protocol = protocol;
        machine.begin_cancel(false, None, now);
        machine
    }

    /// What to do next.
    pub fn poll(&mut self, now: Now) -> Action<E> {
        if let Some(action) = self.out.pop_front() {
            return action;
        }
        if let Some(outcome) = &self.outcome {
            return Action::Done(outcome.clone());
        }
        match &self.awaiting {
            Some(Awaiting::Consumers { kind, .. }) => return Action::CountConsumers(*kind),
            Some(Awaiting::Sent { request, not_after, .. }) => {
                return Action::Send { request: request.as_ref().clone(), not_after: *not_after }
            }
            None => {}
        }
        if let Some(at) = self.poll_at {
            if now.mono < at {
                return Action::Sleep(at);
            }
            self.poll_at = None;
            self.status_call(now);
        }
        let Some(call) = &mut self.call else {
            // Unreachable by construction: every phase but the end has a call or an answer due.
            return Action::Sleep(now.mono + self.config.timing.attempt_timeout);
        };
        if let Some(attempt) = call.in_flight {
            return Action::AwaitReply(attempt);
        }
        if now.mono < call.wake {
            return Action::Sleep(call.wake);
        }
        self.next_attempt += 1;
        let attempt = self.next_attempt;
        call.in_flight = Some(attempt);
        let reply_timeout = call.retry.attempt(now.mono);
        let not_after = call.not_after.unwrap_or(now.wall + reply_timeout);
        Action::Call { attempt, request: call.request.clone(), reply_timeout, not_after }
    }

    /// Takes what happened.
    pub fn handle(&mut self, input: Input<E>, now: Now) {
        if self.outcome.is_some() {
            return;
        }
        match input {
            Input::Reply { attempt, reply } => {
                if let Some(call) = self.take_call(attempt) {
                    self.answered(call, Ok(reply), now);
                }
            }
            Input::Failed { attempt, error, published } => {
                let Some(call) = self.call.as_mut().filter(|c| c.in_flight == Some(attempt)) else { return };
                call.in_flight = None;
                call.published |= published;
                call.unanswered |=
                    published && !matches!(error.class(), ErrorClass::Agent(_) | ErrorClass::NoSuchAgent);
                let kind = call.request.kind();
                match call.retry.failed(error, now.mono) {
                    Ok(notice) => {
                        call.wake = now.mono + notice.delay;
                        self.out.push_back(Action::Emit(Event::Retry { request: kind, notice }));
                    }
                    Err(gave_up) => {
                        let call = self.call.take().expect("the call just failed");
                        self.answered(call, Err(gave_up), now);
                    }
                }
            }
            Input::Consumers(count) => match self.awaiting.take() {
                Some(Awaiting::Consumers { then, .. }) => self.counted(then, count, now),
                other => self.awaiting = other,
            },
            Input::Sent(result) => match self.awaiting.take() {
                Some(Awaiting::Sent { then, .. }) => self.sent(then, result),
                other => self.awaiting = other,
            },
            Input::Interrupt { published } => {
                if let Some(call) = self.call.as_mut().filter(|c| c.in_flight.is_some()) {
                    call.published |= published;
                }
                self.interrupt(now);
            }
        }
    }

    /// The outcome, once [`Submission::poll`] has said [`Action::Done`].
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    fn take_call(&mut self, attempt: u64) -> Option<Call> {
        if self.call.as_ref()?.in_flight != Some(attempt) {
            return None;
        }
        self.call.take()
    }

    fn ticket(&self) -> Ticket {
        self.ticket.clone().expect("a ticket once the start is under way")
    }

    fn emit(&mut self, event: Event<E>) {
        self.out.push_back(Action::Emit(event));
    }

    fn begin_call(
        &mut self,
        purpose: Purpose,
        request: Request,
        policy: RetryPolicy,
        extra_wait: Duration,
        not_after: Option<SystemTime>,
        now: Now,
    ) {
        let usual = self.config.timing.attempt_timeout + extra_wait;
        let retry = Retry::new(policy, usual, now.mono, self.rng.u64(..));
        self.call = Some(Call {
            purpose,
            request,
            retry,
            not_after,
            in_flight: None,
            wake: now.mono,
            published: false,
            unanswered: false,
        });
    }

    fn answered(&mut self, call: Call, answer: Result<Reply, GaveUp<E>>, now: Now) {
        match call.purpose {
            Purpose::Capabilities => {
                let kind = AgentKind::from_answer(answer);
                if let Ok(kind) = &kind {
                    self.out.push_back(Action::Learned(kind.clone()));
                }
                self.negotiated(kind.map(Some), now);
            }
            Purpose::Start if self.phase == Phase::StartV1 => self.started_v1(answer, call.published, now),
            Purpose::Start => match answer.and_then(expect_status) {
                Ok(status) => self.following(status, self.config.policies.script, true, now),
                Err(gave_up) => {
                    // Some attempt reached the broker and no answer said it did not start: it may run.
                    // An answer to the last attempt speaks for it only, not for an earlier one that
                    // went unanswered (its reply lost after it claimed and started the script).
                    let answer = matches!(gave_up.error.class(), ErrorClass::Agent(_) | ErrorClass::NoSuchAgent);
                    let started = call.published && (!answer || call.unanswered);
                    let outcome = Outcome::from_error(
                        self.ticket.clone(),
                        &self.config.target,
                        &gave_up.error,
                        gave_up.to_string(),
                        started,
                    );
                    if started {
                        self.best_effort_cancel(outcome, now);
                    } else {
                        self.finish(outcome, now);
                    }
                }
            },
            Purpose::Status => match answer.and_then(expect_status) {
                Ok(status) => {
                    if self.phase == Phase::Resume {
                        self.following(status, self.config.policies.script, true, now);
                    } else {
                        self.accept(&status);
                        self.status = Some(status);
                        self.follow_step(now);
                    }
                }
                // Contact lost for good while following: the script is left as it is, running if
                // it was (as Octopus Tentacle leaves it), so that `status --follow` can pick it up
                // later; the user is told so. A cancel sent now would stop it without the user
                // asking, and they could no longer see how it would have ended.
                Err(gave_up) => {
                    let ticket = self.ticket();
                    let message = match self.after_cancel {
                        Some(_) => format!(
                            "lost contact with the script after cancelling it: {gave_up}; whether it stopped is unknown (ticket {ticket})"
                        ),
                        None => format!(
                            "lost contact with the script: {gave_up}; its outcome is unknown: it was not cancelled and may still be running (ticket {ticket})"
                        ),
                    };
                    let outcome = Outcome::from_error(Some(ticket), &self.config.target, &gave_up.error, message, true);
                    self.finish(outcome, now);
                }
            },
            Purpose::Cancel { start_sent } => match answer.and_then(expect_status) {
                Ok(status) => {
                    self.after_cancel = Some(start_sent);
                    let policy = self.follow_policy;
                    self.following(status, policy, false, now);
                }
                Err(gave_up) => {
                    let (ticket, shown) = (self.ticket(), &self.config.shown);
                    let message = if gave_up.error.agent_error() == Some(ErrorKind::Unsupported) {
                        format!(
                            "{shown} cannot cancel scripts (it predates {}): left ticket {ticket} running; upgrade the agent",
                            call.request.kind()
                        )
                    } else {
                        format!("could not cancel: {gave_up}; the script's outcome is unknown (ticket {ticket})")
                    };
                    let outcome = Outcome::from_error(Some(ticket), &self.config.target, &gave_up.error, message, true);
                    self.finish(outcome, now);
                }
            },
            Purpose::BestEffortCancel => {
                let mut outcome = self.ending.take().expect("the outcome a best-effort cancel ends with");
                // The user is told what was done in their name.
                let cancel = match answer {
                    Ok(_) => "a cancel was sent, which the agent took, so that it does not run unwatched",
                    Err(gave_up) if gave_up.error.agent_error().is_some() => {
                        "a cancel was sent so that it does not run unwatched, which the agent refused"
                    }
                    Err(_) => "a cancel was sent so that it does not run unwatched, and got no answer either",
                };
                outcome.error = outcome.error.map(|error| format!("{error}; {cancel}"));
                self.finish(outcome, now);
            }
        }
    }
}
