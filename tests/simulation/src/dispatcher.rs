//! A model of one submission as `dispatcher::orchestrator` makes it (script v2): capabilities,
//! then the start repeated until its deadline, status requests until the script has ended and
//! every line is seen, then a best-effort complete; Ctrl-C before the start was published ends
//! it unsent, after it cancels and follows the script until it stops. Every request retries
//! transient failures like `dispatcher::retry` (full jitter from 100 ms doubling to 2 s, each
//! attempt's reply timeout cut to the deadline but never below a second) until its own
//! deadline. The orchestrator is async code around lapin, so this is a faithful model of it,
//! not the code itself (the agent side runs contracts' real decisions).

use crate::world::World;
use contracts::exit_code;
use contracts::*;

/// How long one attempt waits for its reply (the orchestrator's `attempt_timeout`, shortened).
const ATTEMPT_TIMEOUT: u64 = 2_000;
const INITIAL_DELAY: u64 = 100;
const MAX_DELAY: u64 = 2_000;
/// The pause before asking again when a status brought nothing new (the agent's held wait).
const STATUS_WAIT: u64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Capabilities,
    Start,
    Follow,
    Cancel,
    FollowAfterCancel,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcKind {
    Capabilities,
    Start,
    Status,
    Cancel,
}

/// What the submission told its user, as far as the invariants care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The script's status said it ended with this code (its own, or a negative one).
    Exit(i32),
    /// Interrupted before the start was published: nothing sent, so nothing may run.
    NotSent,
    /// "cancelled before the agent started it; nothing ran".
    NothingRan,
    /// Refused by the agent before any attempt may have started it: nothing ran...
    Refused(ErrorKind),
    /// ...or gave up before the start was published.
    NeverSent(String),
    /// Outcome unknown, said so with the ticket.
    Unknown(String),
    /// The cancel was queued for an agent nobody serves now (told so).
    CancelQueued,
}

impl Outcome {
    /// Whether this outcome tells the user the script did not run.
    pub fn says_nothing_ran(&self) -> bool {
        match self {
            Outcome::NotSent | Outcome::NothingRan | Outcome::NeverSent(_) => true,
            // The agent's StoreReset refusal says the ticket may have run in the data it lost.
            Outcome::Refused(kind) => *kind != ErrorKind::StoreReset,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rpc {
    pub kind: RpcKind,
    pub deadline: u64,
    /// The attempt whose reply is awaited (0: none, in backoff).
    pub attempt: u64,
    pub ceiling: u64,
    pub last_error: String,
}

#[derive(Clone, Debug)]
pub struct Sub {
    pub id: usize,
    pub dispatcher: usize,
    pub queue: usize,
    pub target: String,
    pub ticket: String,
    pub spec: ScriptSpec,
    pub policy_ms: u64,
    pub phase: Phase,
    pub rpc: Option<Rpc>,
    attempts: u64,
    /// Some start attempt may have reached the broker.
    pub published: bool,
    /// Ctrl-C came before any start was published.
    pub interrupted_before_publish: bool,
    pub issued_at: u64,
    pub not_after: u64,
    cancel_not_after: u64,
    /// The cancel stops a start not answered yet (an unknown ticket then means nothing ran).
    cancel_before_answer: bool,
    /// The follower's next expected line.
    pub next: u64,
    pub outcome: Option<Outcome>,
}

/// What a script does, written into its spec so the agent's run can read it back.
pub fn plan_of(spec: &ScriptSpec) -> (u64, i32, u64) {
    let mut numbers = spec.script.split(';').filter_map(|part| part.split('=').nth(1));
    let lines = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let exit = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let step = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    (lines, exit, step)
}

impl Sub {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        dispatcher: usize,
        queue: usize,
        target: String,
        ticket: String,
        lines: u64,
        exit: i32,
        step_ms: u64,
        policy_ms: u64,
    ) -> Sub {
        let spec = ScriptSpec { script: format!("lines={lines};exit={exit};step={step_ms}"), ..Default::default() };
        Sub {
            id,
            dispatcher,
            queue,
            target,
            ticket,
            spec,
            policy_ms,
            phase: Phase::Waiting,
            rpc: None,
            attempts: 0,
            published: false,
            interrupted_before_publish: false,
            issued_at: 0,
            not_after: 0,
            cancel_not_after: 0,
            cancel_before_answer: false,
            next: 1,
            outcome: None,
        }
    }
}

fn dispatcher_now(world: &World, s: usize) -> u64 {
    world.now.saturating_add_signed(world.dispatcher_skew[world.subs[s].dispatcher]).max(1)
}

pub fn submit(world: &mut World, s: usize) {
    if world.subs[s].phase != Phase::Waiting {
        return;
    }
    world.log(format!("submission {s} of {} to {}", world.subs[s].ticket, world.subs[s].target));
    world.subs[s].phase = Phase::Capabilities;
    begin(world, s, RpcKind::Capabilities);
}

fn begin(world: &mut World, s: usize, kind: RpcKind) {
    let deadline = world.now + world.subs[s].policy_ms;
    world.subs[s].rpc = Some(Rpc { kind, deadline, attempt: 0, ceiling: INITIAL_DELAY, last_error: String::new() });
    send_attempt(world, s);
}

fn ticket_of(world: &World, s: usize) -> Ticket {
    Ticket::parse(&world.subs[s].ticket).expect("simulated tickets are valid")
}

/// Publishes one attempt of the current request and waits for its reply.
fn send_attempt(world: &mut World, s: usize) {
    let now = dispatcher_now(world, s);
    let rpc = world.subs[s].rpc.clone().expect("a request in progress");
    let timeout = ATTEMPT_TIMEOUT.min(rpc.deadline.saturating_sub(world.now).max(1_000));
    let ticket = ticket_of(world, s);
    let sub = &mut world.subs[s];
    sub.attempts += 1;
    let attempt = sub.attempts;
    let last = sub.next - 1;
    let (request, not_after) = match rpc.kind {
        RpcKind::Capabilities => (Request::GetCapabilities(GetCapabilities {}), now + timeout),
        RpcKind::Start => {
            sub.published = true;
            let start = StartScriptV2 {
                ticket,
                spec: sub.spec.clone(),
                wait_for_output: None,
                first_issued_at: Some(sub.issued_at),
            };
            (Request::StartScriptV2(start), sub.not_after)
        }
        RpcKind::Status => {
            (Request::GetStatusV2(GetStatusV2 { ticket, last_log_sequence: last, wait: None }), now + timeout)
        }
        RpcKind::Cancel => {
            (Request::CancelScriptV2(CancelScriptV2 { ticket, last_log_sequence: last }), sub.cancel_not_after)
        }
    };
    sub.rpc.as_mut().expect("a request").attempt = attempt;
    let (queue, target) = (sub.queue, sub.target.clone());
    let (_, bytes) = request.encode(&target, now, Some(not_after)).expect("requests encode");
    let seal = Some(world.key.seal_command(&bytes));
    let expires = world.now + not_after.saturating_sub(now);
    let label = format!("{:?} {} #{attempt}", rpc.kind, world.subs[s].ticket);
    world.publish(queue, bytes, seal, Some((s, attempt)), expires, label, false);
    let at = world.now + timeout;
    world.schedule(at, crate::world::Ev::Timeout { sub: s, attempt });
}

/// Publishes a request nobody waits for (best-effort cancel, complete).
fn send_once(world: &mut World, s: usize, request: Request) {
    let now = dispatcher_now(world, s);
    let not_after = now + world.subs[s].policy_ms.max(ATTEMPT_TIMEOUT);
    let (queue, target) = (world.subs[s].queue, world.subs[s].target.clone());
    let (_, bytes) = request.encode(&target, now, Some(not_after)).expect("requests encode");
    let seal = Some(world.key.seal_command(&bytes));
    let label = format!("{:?} {}", request.kind(), world.subs[s].ticket);
    let expires = world.now + not_after - now;
    world.publish(queue, bytes, seal, None, expires, label, false);
}

fn current(world: &World, s: usize, attempt: u64) -> bool {
    world.subs[s].rpc.as_ref().is_some_and(|rpc| rpc.attempt == attempt && attempt != 0)
}

pub fn on_reply(world: &mut World, s: usize, attempt: u64, reply: Reply) {
    if !current(world, s, attempt) || world.subs[s].phase == Phase::Done {
        return;
    }
    match reply {
        Reply::Error(error) if error.kind.is_transient() => {
            failed_attempt(world, s, format!("{:?}: {}", error.kind, error.message))
        }
        Reply::Error(error) => give_up(world, s, Some(error)),
        reply => succeeded(world, s, reply),
    }
}

pub fn on_timeout(world: &mut World, s: usize, attempt: u64) {
    if current(world, s, attempt) && world.subs[s].phase != Phase::Done {
        failed_attempt(world, s, "no reply".into());
    }
}

/// The dispatcher's broker link died: every attempt waiting on it fails at once.
pub fn link_lost(world: &mut World, d: usize) {
    world.log(format!("dispatcher {d} loses its broker link"));
    for s in 0..world.subs.len() {
        let waiting = world.subs[s].rpc.as_ref().is_some_and(|rpc| rpc.attempt != 0);
        if world.subs[s].dispatcher == d && waiting && world.subs[s].phase != Phase::Done {
            failed_attempt(world, s, "connection lost".into());
        }
    }
}

/// A transient failure: retry after a jittered delay, cut to the deadline, or give up at it.
fn failed_attempt(world: &mut World, s: usize, error: String) {
    let now = world.now;
    let rpc = world.subs[s].rpc.as_mut().expect("a request");
    rpc.attempt = 0;
    rpc.last_error = error;
    if now >= rpc.deadline {
        give_up(world, s, None);
        return;
    }
    let ceiling = rpc.ceiling;
    rpc.ceiling = (rpc.ceiling * 2).min(MAX_DELAY);
    let left = rpc.deadline - now;
    let delay = ((ceiling as f64 * world.rng.f64()) as u64).min(left);
    world.schedule(now + delay, crate::world::Ev::Wake(s));
}

pub fn wake(world: &mut World, s: usize) {
    match (&world.subs[s].rpc, world.subs[s].phase) {
        (_, Phase::Done | Phase::Waiting) => {}
        (Some(rpc), _) if rpc.attempt == 0 => send_attempt(world, s),
        (None, Phase::Follow | Phase::FollowAfterCancel) => begin(world, s, RpcKind::Status),
        _ => {}
    }
}

fn give_up(world: &mut World, s: usize, agent_error: Option<ErrorReply>) {
    let rpc = world.subs[s].rpc.take().expect("a request");
    let ticket = world.subs[s].ticket.clone();
    let error = agent_error.as_ref().map_or(rpc.last_error.clone(), |e| format!("{:?}: {}", e.kind, e.message));
    world.log(format!("submission {s} gives up {:?}: {error}", rpc.kind));
    let outcome = match rpc.kind {
        RpcKind::Capabilities => Outcome::NeverSent(error),
        RpcKind::Start => {
            let started = world.subs[s].published && agent_error.is_none();
            if started {
                best_effort_cancel(world, s);
                Outcome::Unknown(format!("{error}; its outcome is unknown (ticket {ticket})"))
            } else {
                match agent_error {
                    Some(e) => Outcome::Refused(e.kind),
                    None => Outcome::NeverSent(error),
                }
            }
        }
        RpcKind::Status => {
            best_effort_cancel(world, s);
            Outcome::Unknown(format!("lost contact with the script: {error} (ticket {ticket})"))
        }
        RpcKind::Cancel => Outcome::Unknown(format!("could not cancel: {error} (ticket {ticket})")),
    };
    finish(world, s, outcome);
}

fn best_effort_cancel(world: &mut World, s: usize) {
    let ticket = ticket_of(world, s);
    send_once(world, s, Request::CancelScriptV2(CancelScriptV2 { ticket, last_log_sequence: 0 }));
}

fn succeeded(world: &mut World, s: usize, reply: Reply) {
    let kind = world.subs[s].rpc.take().expect("a request").kind;
    match (kind, reply) {
        (RpcKind::Capabilities, Reply::Capabilities(_)) => {
            let now = dispatcher_now(world, s);
            let sub = &mut world.subs[s];
            sub.issued_at = now;
            sub.not_after = now + sub.policy_ms.max(ATTEMPT_TIMEOUT);
            sub.phase = Phase::Start;
            begin(world, s, RpcKind::Start);
        }
        (RpcKind::Start | RpcKind::Status | RpcKind::Cancel, Reply::ScriptStatus(status)) => {
            if kind == RpcKind::Start {
                world.subs[s].phase = Phase::Follow;
            }
            if kind == RpcKind::Cancel {
                world.subs[s].phase = Phase::FollowAfterCancel;
            }
            follow(world, s, status);
        }
        (kind, other) => {
            world.violation(format!("submission {s}: {kind:?} answered with {:?}", other.kind()));
        }
    }
}

/// Takes the new lines in order (as `LogFollower`), and ends once the script has ended and
/// every line was seen; else asks again.
fn follow(world: &mut World, s: usize, status: ScriptStatus) {
    let ticket = world.subs[s].ticket.clone();
    let mut fresh = false;
    for line in &status.logs {
        let next = world.subs[s].next;
        if line.seq < next {
            continue;
        }
        if line.seq > next {
            break;
        }
        fresh = true;
        world.subs[s].next += 1;
        let expected = format!("{}:{}", ticket.to_lowercase(), line.seq);
        if line.text != expected {
            world.violation(format!(
                "submission {s} got line {} as {:?}, the script wrote {expected:?}",
                line.seq, line.text
            ));
        }
        if line.seq > world.oracle.lines_of(&ticket) {
            world.violation(format!("submission {s} got line {} of {ticket}, which the script never wrote", line.seq));
        }
    }
    let sub = &world.subs[s];
    if status.is_complete() && status.next_log_sequence <= sub.next {
        let code = status.exit_code.unwrap_or(exit_code::FATAL);
        let outcome =
            if sub.phase == Phase::FollowAfterCancel && sub.cancel_before_answer && code == exit_code::UNKNOWN_TICKET {
                Outcome::NothingRan
            } else {
                Outcome::Exit(code)
            };
        let ticket = ticket_of(world, s);
        send_once(world, s, Request::CompleteScriptV2(CompleteScriptV2 { ticket }));
        finish(world, s, outcome);
        return;
    }
    let pause = if fresh { 10 } else { STATUS_WAIT };
    let at = world.now + pause;
    world.schedule(at, crate::world::Ev::Wake(s));
}

/// Ctrl-C: before the start was published the submission ends unsent; after, the script is
/// cancelled and followed until it stops.
pub fn interrupt(world: &mut World, s: usize) {
    world.log(format!("user interrupts submission {s}"));
    match world.subs[s].phase {
        Phase::Waiting | Phase::Capabilities => {
            world.subs[s].interrupted_before_publish = true;
            world.subs[s].rpc = None;
            finish(world, s, Outcome::NotSent);
        }
        Phase::Start if !world.subs[s].published => {
            world.subs[s].interrupted_before_publish = true;
            world.subs[s].rpc = None;
            finish(world, s, Outcome::NotSent);
        }
        Phase::Start | Phase::Follow => cancel_and_follow(world, s),
        Phase::Cancel | Phase::FollowAfterCancel | Phase::Done => {}
    }
}

fn cancel_and_follow(world: &mut World, s: usize) {
    let consumers = world.queues[world.subs[s].queue]
        .consumers
        .iter()
        .filter(|&&a| world.agents[a].alive && world.agents[a].connected)
        .count();
    world.subs[s].rpc = None;
    if consumers == 0 {
        best_effort_cancel(world, s);
        finish(world, s, Outcome::CancelQueued);
        return;
    }
    let now = dispatcher_now(world, s);
    let sub = &mut world.subs[s];
    sub.cancel_before_answer = sub.phase == Phase::Start;
    sub.cancel_not_after = now + sub.policy_ms.max(ATTEMPT_TIMEOUT);
    sub.phase = Phase::Cancel;
    begin(world, s, RpcKind::Cancel);
}

fn finish(world: &mut World, s: usize, outcome: Outcome) {
    world.log(format!("submission {s} ends: {outcome:?}"));
    world.subs[s].phase = Phase::Done;
    world.subs[s].rpc = None;
    let seen = world.subs[s].next - 1;
    let ticket = world.subs[s].ticket.clone();
    for problem in world.oracle.check_outcome(&ticket, &outcome, seen) {
        world.violation(format!("submission {s}: {problem}"));
    }
    world.subs[s].outcome = Some(outcome);
}
