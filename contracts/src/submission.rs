//! The dispatcher's submission as a state machine with no I/O: capabilities, start, follow,
//! cancel and complete, with every request repeated under its retry policy. [`Submission::poll`]
//! says what to do next (send a request and wait for its reply, publish one, count a queue's
//! consumers, tell the user something, wait until a time, or end with an [`Outcome`]);
//! [`Submission::handle`] takes what happened (a reply, a failed attempt, a lost connection,
//! the user's Ctrl-C). Time is an input ([`Now`]): the dispatcher drives it with the clock and
//! the broker, the simulator (`tests/simulation`) with its own, and tests with none.

pub use crate::error::{CallError, ErrorClass};
use crate::outcome::Outcome;
use crate::*;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

// ---- retries ----

/// First backoff ceiling; attempt n waits a random time up to `INITIAL_DELAY * 2^n`.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Largest backoff ceiling.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Whether and for how long to retry one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub enabled: bool,
    /// Total time for the request, first attempt included.
    pub duration: Duration,
}

impl RetryPolicy {
    pub const fn new(duration: Duration) -> Self {
        RetryPolicy { enabled: true, duration }
    }

    /// A single attempt, for requests that must not be repeated.
    pub const fn once() -> Self {
        RetryPolicy { enabled: false, duration: Duration::ZERO }
    }
}

/// A retry about to happen, for the user to see.
#[derive(Clone, Debug)]
pub struct RetryNotice<E> {
    /// The attempt that just failed (1 is the first).
    pub attempt: u32,
    pub delay: Duration,
    pub time_left: Duration,
    pub error: E,
}

/// The request failed for good.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{error} (gave up after {} and {attempts} attempt{})", short(round(*elapsed)), if *attempts == 1 { "" } else { "s" })]
pub struct GaveUp<E: fmt::Display> {
    /// The last error an attempt really got.
    pub error: E,
    pub elapsed: Duration,
    pub attempts: u32,
}

impl<E: fmt::Display> GaveUp<E> {
    /// A failure decided without repeating anything (a reply of the wrong kind).
    pub fn at_once(error: E) -> Self {
        GaveUp { error, elapsed: Duration::ZERO, attempts: 1 }
    }
}

/// A duration as people read it and write it in flags: `2m30s`, `1h5s`, `2d3h`, `1.5s`, `300ms`
/// (no spaces, tenths of a second below ten seconds, whole seconds above; cut, never rounded up,
/// so a time spent is never overstated). Every duration shown to a person goes through it: a
/// computed one (a timeout cut to a deadline, a jittered delay) would otherwise show as
/// `4s 958ms 344us 974ns`.
pub fn short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    if d < Duration::from_secs(10) {
        let tenths = d.as_millis() / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = d.as_secs();
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    [(days, "d"), (h, "h"), (m, "m"), (s, "s")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// What to do after a failed attempt: retry after a delay (cut to the deadline), or give up.
pub fn next_delay(
    error: &impl CallError,
    policy: RetryPolicy,
    now: Duration,
    deadline: Duration,
    proposed: Duration,
) -> Option<Duration> {
    if !policy.enabled || !error.is_transient() || now >= deadline {
        return None;
    }
    Some(proposed.min(deadline - now))
}

/// How long one attempt may wait for its reply: its usual timeout, cut to what is left of the
/// deadline (but never below a second, so a last attempt is a real one).
pub fn attempt_timeout(usual: Duration, policy: RetryPolicy, now: Duration, deadline: Duration) -> Duration {
    if !policy.enabled {
        return usual;
    }
    usual.min(deadline.saturating_sub(now).max(Duration::from_secs(1)))
}

/// One request's retries: full-jitter exponential backoff (first delay up to 100 ms, doubling,
/// capped at 2 s, so a link that comes back is used again within about a second) until the
/// policy's deadline, which counts from the first attempt. Permanent failures end at once.
/// Times are durations since any origin the driver keeps.
#[derive(Clone, Debug)]
pub struct Retry {
    policy: RetryPolicy,
    usual: Duration,
    started: Duration,
    deadline: Duration,
    ceiling: Duration,
    attempts: u32,
    rng: fastrand::Rng,
}

impl Retry {
    /// `usual` is one attempt's reply timeout; `seed` decides the jitter.
    pub fn new(policy: RetryPolicy, usual: Duration, now: Duration, seed: u64) -> Self {
        Retry {
            policy,
            usual,
            started: now,
            deadline: now + policy.duration,
            ceiling: INITIAL_DELAY,
            attempts: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Counts an attempt made now; its reply timeout.
    pub fn attempt(&mut self, now: Duration) -> Duration {
        self.attempts += 1;
        attempt_timeout(self.usual, self.policy, now, self.deadline)
    }

    /// The last attempt failed with `error`: the retry to make after its delay, or the end.
    pub fn failed<E: CallError>(&mut self, error: E, now: Duration) -> Result<RetryNotice<E>, GaveUp<E>> {
        let proposed = self.ceiling.mul_f64(self.rng.f64());
        self.ceiling = (self.ceiling * 2).min(MAX_DELAY);
        match next_delay(&error, self.policy, now, self.deadline, proposed) {
            Some(delay) => {
                Ok(RetryNotice { attempt: self.attempts, delay, time_left: self.deadline.saturating_sub(now), error })
            }
            None => Err(self.give_up(error, now)),
        }
    }

    /// Ends here with `error` (the user cancelled, say).
    pub fn give_up<E: fmt::Display>(&self, error: E, now: Duration) -> GaveUp<E> {
        GaveUp { error, elapsed: now.saturating_sub(self.started), attempts: self.attempts }
    }
}

/// How long a user's cancel is repeated when retries are off: it must get through even so.
pub const CANCEL_REPEAT: Duration = Duration::from_secs(30);

/// The retry policy of a user's cancel: the command's, or [`CANCEL_REPEAT`] when that one does
/// not retry, since a cancel that does not get through leaves the script running.
pub fn cancel_policy(policy: RetryPolicy) -> RetryPolicy {
    if policy.enabled {
        policy
    } else {
        RetryPolicy::new(CANCEL_REPEAT)
    }
}

/// The retry policies of one submission: for the script's requests, and for the capabilities
/// request that comes first (the machine policy's health-check duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies {
    pub script: RetryPolicy,
    pub health: RetryPolicy,
}

impl From<RetryPolicy> for Policies {
    fn from(policy: RetryPolicy) -> Self {
        Policies { script: policy, health: policy }
    }
}

// ---- negotiation ----

/// The script service to drive an agent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptProtocol {
    /// Dispatcher-made tickets, idempotent requests, retries.
    V2,
    /// The agent makes the ticket; a start must never be repeated; no retries.
    V1,
}

/// What an agent said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentKind {
    Current(Capabilities),
    /// Answered `Unsupported`: an agent from before the capabilities service.
    Legacy,
}

impl AgentKind {
    /// What the answer to a capabilities request says of the agent: an agent that refuses it
    /// as `Unsupported` predates it.
    pub fn from_answer<E: CallError>(answer: Result<Reply, GaveUp<E>>) -> Result<AgentKind, GaveUp<E>> {
        match answer {
            Ok(Reply::Capabilities(caps)) => Ok(AgentKind::Current(caps)),
            Ok(other) => Err(GaveUp::at_once(E::codec(format!("expected capabilities, got {}", other.kind())))),
            Err(gave_up) if gave_up.error.agent_error() == Some(ErrorKind::Unsupported) => Ok(AgentKind::Legacy),
            Err(gave_up) => Err(gave_up),
        }
    }

    /// The newest script service both sides support, if any.
    pub fn script_protocol(&self) -> Option<ScriptProtocol> {
        match self {
            AgentKind::Legacy => Some(ScriptProtocol::V1),
            AgentKind::Current(caps) if caps.supports(SERVICE_SCRIPT_V2) => Some(ScriptProtocol::V2),
            AgentKind::Current(caps) if caps.supports(SERVICE_SCRIPT_V1) => Some(ScriptProtocol::V1),
            AgentKind::Current(_) => None,
        }
    }

    /// Whether the agent masks secrets in output; a legacy agent does not.
    pub fn masks_secrets(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_SECRET_MASKING))
    }

    /// Whether the agent opens secrets sealed to its key ([`crate::sealed`]): secrets go to no
    /// other, since in clear whoever reads the command reads them.
    pub fn opens_sealed_secrets(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_SEALED_SECRETS))
    }
}

/// What the user is told when nobody consumes the queue a capabilities request goes to.
pub fn no_consumer_notice(queue: &str, policy: RetryPolicy, timing: Timing) -> String {
    let wait = if policy.enabled { policy.duration } else { timing.attempt_timeout };
    format!("no agent is consuming {queue}; waiting up to {}", short(wait))
}

// ---- following ----

/// Following a script's log: lines are passed on once each, in sequence order, with no gap.
/// Replies can repeat lines (a retried status request) or, in principle, skip ahead; a line is
/// only passed on when every line before it has been.
#[derive(Clone, Debug)]
pub struct LogFollower {
    /// The sequence number of the next line to pass on.
    next: u64,
}

impl LogFollower {
    /// Starts after `last_seen` (0 to get every line).
    pub fn after(last_seen: u64) -> Self {
        LogFollower { next: last_seen + 1 }
    }

    /// The last sequence number passed on; what to ask for next.
    pub fn last_seen(&self) -> u64 {
        self.next - 1
    }

    /// The new lines of a reply, in order; repeats are dropped, and lines after a gap are left
    /// for the next request to bring again.
    pub fn accept<'a>(&mut self, status: &'a ScriptStatus) -> Vec<&'a LogLine> {
        let mut new = Vec::new();
        for line in &status.logs {
            if line.seq < self.next {
                continue;
            }
            if line.seq > self.next {
                break;
            }
            new.push(line);
            self.next += 1;
        }
        new
    }

    /// Whether a completed status leaves nothing more to fetch.
    pub fn has_everything(&self, status: &ScriptStatus) -> bool {
        status.is_complete() && status.next_log_sequence <= self.next
    }
}

// ---- the submission ----

/// Timing of the requests a submission makes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long one attempt waits for a reply (on top of any wait asked of the agent).
    pub attempt_timeout: Duration,
    /// How long the agent may hold a status request for new output.
    pub status_wait: Duration,
    /// How long the agent may hold the start reply for first output or the end.
    pub start_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            attempt_timeout: Duration::from_secs(10),
            status_wait: Duration::from_secs(5),
            start_wait: Duration::from_millis(500),
        }
    }
}

/// How often a legacy (v1) agent is asked for status: it cannot hold the request.
pub const V1_POLL: Duration = Duration::from_millis(250);

/// A start planned under a ticket chosen (and recorded, by the service) before anything is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStart {
    pub ticket: Ticket,
    /// When the first start was issued (`first_issued_at` on the wire).
    pub issued_at: SystemTime,
    /// The agent refuses the start after this, and the dispatcher stops repeating it.
    pub not_after: SystemTime,
}

impl PlannedStart {
    /// A start of `ticket` under `policy`, issued `now`. The agent must not start the script
    /// after we stop trying: a copy stuck in a queue expires there, and the agent refuses one
    /// past this deadline.
    pub fn new(ticket: Ticket, policy: RetryPolicy, timing: Timing, now: SystemTime) -> Self {
        PlannedStart { ticket, issued_at: now, not_after: now + policy.duration.max(timing.attempt_timeout) }
    }
}

/// The request that tells the agent a ticket's output is no longer needed, once its end was seen.
pub fn complete_request(protocol: ScriptProtocol, ticket: &Ticket, outcome: &Outcome) -> Option<Request> {
    outcome.exit_code?;
    let ticket = ticket.clone();
    Some(match protocol {
        ScriptProtocol::V2 => Request::CompleteScriptV2(CompleteScriptV2 { ticket }),
        ScriptProtocol::V1 => Request::CompleteScriptV1(CompleteScriptV1 { ticket }),
    })
}

/// The cancel of `ticket` in the script service `protocol`; `first_issued_at` that of the start
/// it stops when that start was sent and not answered yet (see [`CancelScriptV2`]).
pub fn cancel_request(
    protocol: ScriptProtocol,
    ticket: &Ticket,
    last_log_sequence: u64,
    first_issued_at: Option<u64>,
) -> Request {
    let ticket = ticket.clone();
    match protocol {
        ScriptProtocol::V2 => Request::CancelScriptV2(CancelScriptV2 { ticket, last_log_sequence, first_issued_at }),
        ScriptProtocol::V1 => Request::CancelScriptV1(CancelScriptV1 { ticket, last_log_sequence }),
    }
}

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
    /// A legacy agent's next status request, after [`V1_POLL`].
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

    // ---- capabilities ----

    fn negotiate(&mut self, now: Now) {
        self.phase = Phase::Negotiate;
        if self.config.v1_only {
            return self.negotiated(Ok(None), now);
        }
        if let Some(kind) = self.config.known.clone() {
            return self.negotiated(Ok(Some(kind)), now);
        }
        self.awaiting = Some(Awaiting::Consumers { kind: Kind::GetCapabilities, then: AfterCount::Capabilities });
    }

    fn counted(&mut self, then: AfterCount, count: Option<u32>, now: Now) {
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
    fn negotiated(&mut self, kind: Result<Option<AgentKind>, GaveUp<E>>, now: Now) {
        let target = self.config.target.clone();
        let protocol = match &kind {
            Ok(None) => Ok(ScriptProtocol::V1),
            Ok(Some(kind)) => kind.script_protocol().ok_or_else(|| {
                let message = format!("{} supports no script service this dispatcher knows", self.config.shown);
                GaveUp::at_once(E::codec(message))
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
        let secrets_refused = |spec: &ScriptSpec| {
            let why = why_no_secrets.clone().filter(|_| !spec.secret_env.is_empty())?;
            Some(E::agent(target.clone(), ErrorReply::new(ErrorKind::Unsupported, why)))
        };
        match self.mode.clone() {
            Mode::Submit { spec, ticket } => {
                let protocol = match protocol {
                    Ok(protocol) => protocol,
                    Err(g) => {
                        return self.finish(Outcome::from_error(None, &target, &g.error, g.to_string(), false), now)
                    }
                };
                if let Some(error) = secrets_refused(&spec) {
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
            Mode::Planned { plan, spec, last_seen } => {
                let ticket = Some(plan.ticket.clone());
                if !spec.secret_env.is_empty() {
                    if let Err(g) = &kind {
                        let message = g.error.to_string();
                        return self.finish(Outcome::from_error(ticket, &target, &g.error, message, false), now);
                    }
                }
                if let Some(error) = secrets_refused(&spec) {
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

    fn start_v2(&mut self, plan: PlannedStart, spec: ScriptSpec, now: Now) {
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
    fn started_v1(&mut self, answer: Result<Reply, GaveUp<E>>, published: bool, now: Now) {
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
        let error = if reached { E::unrepeatable(error.to_string()) } else { error };
        let message = if reached { format!("{error}; its outcome is unknown") } else { error.to_string() };
        let mut outcome = Outcome::from_error(None, &target, &error, message, reached);
        if answered {
            // Refused, even if only for now: its start is never repeated.
            outcome.process_exit = crate::outcome::exit::REJECTED;
        }
        self.finish(outcome, now);
    }

    // ---- following ----

    /// A status that starts (or resumes) following, under `policy`.
    fn following(&mut self, status: ScriptStatus, policy: RetryPolicy, interruptible: bool, now: Now) {
        self.phase = Phase::Follow;
        self.follow_policy = policy;
        self.interruptible = interruptible;
        self.accept(&status);
        self.status = Some(status);
        self.follow_step(now);
    }

    /// Takes a reply's new lines. The agent answers from where the follower stands, with the
    /// lines its store holds in order, so a line missing before one it sends is a line the
    /// store lost (a failover to a replica without the latest writes, a restart without
    /// persistence): the user is told which, and the follow goes on after them, so it still
    /// ends (waiting for them would wait forever). So are lines missing after the last one a
    /// completed status brings, up to the number its run recorded it wrote
    /// ([`ScriptStatus::lines_written`]): a lost tail, with no later line to show the gap.
    fn accept(&mut self, status: &ScriptStatus) {
        self.seen_known |= !(status.is_complete() && status.exit_code == Some(exit_code::UNKNOWN_TICKET));
        loop {
            for line in self.follower.accept(status) {
                self.out.push_back(Action::Emit(Event::Log(line.clone())));
            }
            let next = self.follower.last_seen() + 1;
            let after_gap = status.logs.iter().map(|line| line.seq).find(|&seq| seq > next);
            let tail_end = status.lines_written.filter(|&written| status.is_complete() && written >= next);
            let Some(lost_to) = after_gap.map(|seq| seq - 1).or(tail_end) else { return };
            self.emit(Event::Notice(lost_lines_notice(&self.ticket(), next, lost_to)));
            self.follower = LogFollower::after(lost_to);
        }
    }

    /// The next status request, or the end once the script is complete and every line seen.
    fn follow_step(&mut self, now: Now) {
        if self.interruptible && self.interrupted {
            return self.begin_cancel(false, None, now);
        }
        let status = self.status.as_ref().expect("a status while following");
        if self.follower.has_everything(status) {
            let code = status.exit_code.unwrap_or(exit_code::FATAL);
            let outcome = if code == exit_code::UNKNOWN_TICKET && self.seen_known {
                Outcome::lost_by_store(self.ticket(), &self.config.target)
            } else {
                self.after_cancel(Outcome::from_exit_code(self.ticket(), &self.config.target, code))
            };
            return self.finish(outcome, now);
        }
        if self.protocol == ScriptProtocol::V1 && status.logs.is_empty() {
            self.poll_at = Some(now.mono + V1_POLL);
            return;
        }
        self.status_call(now);
    }

    fn status_call(&mut self, now: Now) {
        let (ticket, last_log_sequence) = (self.ticket(), self.follower.last_seen());
        let wait = self.config.timing.status_wait;
        let request = match self.protocol {
            ScriptProtocol::V2 => {
                Request::GetStatusV2(GetStatusV2 { ticket, last_log_sequence, wait: Some(wait.as_millis() as u64) })
            }
            ScriptProtocol::V1 => Request::GetStatusV1(GetStatusV1 { ticket, last_log_sequence }),
        };
        self.begin_call(Purpose::Status, request, self.follow_policy, wait, None, now);
    }

    fn after_cancel(&self, outcome: Outcome) -> Outcome {
        match self.after_cancel {
            Some(start_sent) => outcome.after_cancel(start_sent),
            None => outcome,
        }
    }

    // ---- cancel ----

    fn interrupt(&mut self, now: Now) {
        let published = self.call.as_ref().is_some_and(|call| call.published);
        match self.phase {
            Phase::Negotiate => self.finish(Outcome::not_sent(self.ticket.clone(), &self.config.target), now),
            Phase::StartV1 if !published => self.finish(Outcome::not_sent(None, &self.config.target), now),
            // The start may have reached the agent, which makes the ticket: its answer names the
            // script to cancel (following it then sees the interrupt at once).
            Phase::StartV1 | Phase::Resume => self.interrupted = true,
            Phase::StartV2 if !published => {
                self.finish(Outcome::not_sent(self.ticket.clone(), &self.config.target), now)
            }
            // The start may have reached the agent: cancel it there, so it can never run. The
            // cancel lives in the queue as long as the start could.
            Phase::StartV2 => {
                let not_after = self.plan.as_ref().map(|plan| plan.not_after);
                self.begin_cancel(true, not_after, now);
            }
            Phase::Follow if self.interruptible => {
                self.interrupted = true;
                self.begin_cancel(false, None, now);
            }
            Phase::Follow | Phase::Cancel | Phase::Ending | Phase::Done => {}
        }
    }

    /// Cancels the script and follows it until it has stopped, without further interrupts. The
    /// cancel is repeated until the agent answers it (see [`cancel_policy`]), on v1 as well:
    /// unlike its start, a cancel is idempotent. When no agent consumes the queue, the cancel is
    /// left there, behind the start, and the user told so at once: the agent stops the script
    /// when it returns. `start_sent`: the start was sent and not answered yet; `not_after`: how
    /// long the start lives (else as long as such a start would, from now).
    fn begin_cancel(&mut self, start_sent: bool, not_after: Option<SystemTime>, now: Now) {
        self.phase = Phase::Cancel;
        self.interruptible = false;
        self.call = None;
        self.poll_at = None;
        let policy = self.follow_policy;
        let lives = policy.duration.max(cancel_policy(policy).duration).max(self.config.timing.attempt_timeout);
        let not_after = not_after.unwrap_or(now.wall + lives);
        let first_issued_at = self.plan.as_ref().filter(|_| start_sent).map(|plan| unix_millis(plan.issued_at));
        let request = cancel_request(self.protocol, &self.ticket(), self.follower.last_seen(), first_issued_at);
        let kind = request.kind();
        self.awaiting = Some(Awaiting::Consumers {
            kind,
            then: AfterCount::Cancel { request: Box::new(request), not_after, start_sent },
        });
    }

    /// One cancel, without retries, after a start got no answer (it may run, or start later from
    /// a copy in the queue, while nobody follows it): if it gets through, the script does not go
    /// on unwatched. Then the end, with `outcome`, which says that a cancel was sent.
    fn best_effort_cancel(&mut self, outcome: Outcome, now: Now) {
        self.phase = Phase::Ending;
        self.ending = Some(outcome);
        let request = cancel_request(self.protocol, &self.ticket(), 0, None);
        self.begin_call(Purpose::BestEffortCancel, request, RetryPolicy::once(), Duration::ZERO, None, now);
    }

    // ---- the end ----

    fn sent(&mut self, then: AfterSend, result: Result<(), E>) {
        let (target, ticket) = (self.config.target.clone(), self.ticket());
        match then {
            AfterSend::CancelQueued => {
                let outcome = match result {
                    Ok(()) => {
                        let message =
                            format!("cancel queued; the agent will stop the script when it returns (ticket {ticket})");
                        Outcome::from_error(Some(ticket), &target, &E::cancelled(), message, false)
                    }
                    Err(error) => {
                        let message = format!(
                            "could not queue the cancel: {error}; the script's outcome is unknown (ticket {ticket})"
                        );
                        Outcome::from_error(Some(ticket), &target, &error, message, true)
                    }
                };
                self.done(outcome);
            }
            AfterSend::Complete(protocol) => {
                if let Err(error) = result {
                    let notice = match protocol {
                        ScriptProtocol::V2 => {
                            format!("could not complete ticket {ticket} (the agent cleans it up later): {error}")
                        }
                        ScriptProtocol::V1 => format!("could not complete ticket {ticket}: {error}"),
                    };
                    self.emit(Event::Notice(notice));
                }
                let outcome = self.ending.take().expect("the outcome a complete ends with");
                self.done(outcome);
            }
        }
    }

    /// The outcome is decided: a submission completes the ticket whose end it saw first
    /// (published, not waited for, since nothing the user sees depends on it).
    fn finish(&mut self, outcome: Outcome, now: Now) {
        self.call = None;
        let complete = self
            .ticket
            .as_ref()
            .filter(|_| self.complete)
            .and_then(|ticket| complete_request(self.protocol, ticket, &outcome));
        let Some(request) = complete else { return self.done(outcome) };
        self.phase = Phase::Ending;
        let timing = self.config.timing;
        let lives = match self.protocol {
            ScriptProtocol::V2 => self.config.policies.script.duration.max(timing.attempt_timeout),
            ScriptProtocol::V1 => timing.attempt_timeout,
        };
        self.ending = Some(outcome);
        let then = AfterSend::Complete(self.protocol);
        self.awaiting = Some(Awaiting::Sent { request: Box::new(request), not_after: now.wall + lives, then });
    }

    fn done(&mut self, outcome: Outcome) {
        self.phase = Phase::Done;
        self.call = None;
        self.awaiting = None;
        self.poll_at = None;
        self.outcome = Some(outcome);
    }
}

/// What the user is told of lines `from` to `to` that the agent's store lost (before later
/// lines, or the script's last ones).
pub fn lost_lines_notice(ticket: &Ticket, from: u64, to: u64) -> String {
    let (lines, were) =
        if from == to { (format!("line {from}"), "was") } else { (format!("lines {from} to {to}"), "were") };
    format!("{lines} of ticket {ticket} {were} lost by the agent's ticket store (it lost recent writes)")
}

/// The status a script-service reply must carry.
pub fn expect_status<E: CallError>(reply: Reply) -> Result<ScriptStatus, GaveUp<E>> {
    match reply {
        Reply::ScriptStatus(status) => Ok(status),
        other => Err(GaveUp::at_once(E::codec(format!("expected a script status, got {}", other.kind())))),
    }
}
