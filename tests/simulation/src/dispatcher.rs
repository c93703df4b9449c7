//! One submission as the dispatcher makes it: contracts' real [`Submission`] machine (the one
//! `dispatcher::orchestrator` drives over RabbitMQ), driven here over the simulated broker and
//! clock. Its requests are really encoded and signed, or MAC'd in a session agreed with the agent
//! as `dispatcher::rpc` does (contracts' `session`: offered in a signed request, a request the
//! agent refuses for a session it lost sent again signed); its replies are the simulated agents',
//! its timeouts, lost links and Ctrl-C are the world's events; what it shows the user (lines,
//! outcome) is checked against what really happened.

use crate::world::{Ev, World};
use contracts::submission::error::{CallError, ErrorClass, Unexpected};
use contracts::submission::follow::lost_lines_notice;
use contracts::submission::machine::{Action, Config, Event, Input, Now, Submission};
use contracts::submission::outcome::{exit, Outcome as Told, OutcomeKind, NOT_SENT_MESSAGE};
use contracts::submission::retry::{RetryPolicy, Timing};
use contracts::time::unix_millis;
use contracts::trust::seal::SessionId;
use contracts::trust::session::Offer;
use contracts::trust::sessions::Plan;
use contracts::wire::envelope::KeyShare;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::messages::{Kind, ScriptSpec};
use contracts::wire::status::LogLine;
use contracts::wire::ticket::Ticket;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

/// How long one attempt waits for its reply (the dispatcher's `attempt_timeout`, shortened).
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2_000);
/// How long an agent may hold a status request for new output (shortened).
pub const STATUS_WAIT: Duration = Duration::from_millis(300);

/// The submissions' timing in the simulation.
fn timing() -> Timing {
    Timing { attempt_timeout: ATTEMPT_TIMEOUT, status_wait: STATUS_WAIT, start_wait: Duration::ZERO }
}

/// What can go wrong with one simulated attempt.
#[derive(Clone, Debug)]
pub enum SimError {
    NoReply,
    ConnectionLost,
    Agent(ErrorReply),
    Unexpected(Unexpected),
    Unrepeatable(Box<SimError>),
    Cancelled,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::NoReply => write!(f, "no reply"),
            SimError::ConnectionLost => write!(f, "connection lost"),
            SimError::Agent(error) => write!(f, "{:?}: {}", error.kind, error.message),
            SimError::Unexpected(reply) => write!(f, "{reply}"),
            SimError::Unrepeatable(error) => write!(f, "{error}"),
            SimError::Cancelled => write!(f, "cancelled by the user"),
        }
    }
}

impl CallError for SimError {
    fn class(&self) -> ErrorClass {
        match self {
            SimError::Agent(error) => ErrorClass::Agent(error.kind),
            SimError::Cancelled => ErrorClass::Cancelled,
            _ => ErrorClass::Other,
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            SimError::NoReply | SimError::ConnectionLost => true,
            SimError::Agent(error) => error.kind.is_transient(),
            _ => false,
        }
    }

    fn unexpected(reply: Unexpected) -> Self {
        SimError::Unexpected(reply)
    }

    fn agent(_target: String, error: ErrorReply) -> Self {
        SimError::Agent(error)
    }

    fn unrepeatable(error: Self) -> Self {
        SimError::Unrepeatable(Box::new(error))
    }

    fn cancelled() -> Self {
        SimError::Cancelled
    }
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
    /// Failed without the script running, by what the dispatcher says (refused, never sent).
    Failed(String),
    /// Outcome unknown, said so with the ticket.
    Unknown(String),
    /// The cancel was queued for an agent nobody serves now (told so).
    CancelQueued,
}

impl Outcome {
    /// What the machine's outcome says, in the invariants' terms.
    fn of(told: &Told) -> Outcome {
        let message = told.error.clone().unwrap_or_default();
        match told.exit_code {
            Some(_) if message == "cancelled before the agent started it; nothing ran" => Outcome::NothingRan,
            Some(code) => Outcome::Exit(code),
            None if told.process_exit == exit::NOT_SENT && message == NOT_SENT_MESSAGE => Outcome::NotSent,
            None if told.outcome == OutcomeKind::Unknown => Outcome::Unknown(message),
            None if told.outcome == OutcomeKind::Cancelled && message.starts_with("cancel queued") => {
                Outcome::CancelQueued
            }
            None => Outcome::Failed(message),
        }
    }

    /// Whether this outcome tells the user the script did not run.
    pub fn says_nothing_ran(&self) -> bool {
        match self {
            Outcome::NotSent | Outcome::NothingRan => true,
            // The agent's StoreReset refusal says the ticket may have run in the data it lost.
            Outcome::Failed(message) => !message.contains("StoreReset"),
            _ => false,
        }
    }
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
    machine: Option<Submission<SimError>>,
    /// The attempt waiting for its reply.
    in_flight: Option<u64>,
    /// How that attempt's request was sealed.
    sealed: Option<Sealed>,
    /// When the machine is woken next.
    wake: Option<u64>,
    /// Some start attempt was published.
    pub published: bool,
    /// Ctrl-C came before any start was published.
    pub interrupted_before_publish: bool,
    /// The last line shown to the user.
    pub seen: u64,
    /// The user was told lines are lost, up to this one.
    lost_to: u64,
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
    #[allow(clippy::too_many_arguments, reason = "a submission's every setting, given once where the world makes it")]
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
            machine: None,
            in_flight: None,
            sealed: None,
            wake: None,
            published: false,
            interrupted_before_publish: false,
            seen: 0,
            lost_to: 0,
            outcome: None,
        }
    }
}

fn dispatcher_now(world: &World, s: usize) -> u64 {
    (world.now + crate::world::CLOCK_ORIGIN_MS).saturating_add_signed(world.dispatcher_skew[world.subs[s].dispatcher])
}

/// The time as submission `s` sees it: the world's for deadlines, its dispatcher's skewed clock
/// for what goes on the wire.
fn now(world: &World, s: usize) -> Now {
    Now { mono: Duration::from_millis(world.now), wall: UNIX_EPOCH + Duration::from_millis(dispatcher_now(world, s)) }
}

pub fn submit(world: &mut World, s: usize) {
    if world.subs[s].machine.is_some() || world.subs[s].outcome.is_some() {
        return;
    }
    world.log(format!("submission {s} of {} to {}", world.subs[s].ticket, world.subs[s].target));
    let sub = &world.subs[s];
    let config = Config {
        target: sub.target.clone(),
        shown: sub.target.clone(),
        addressed: sub.target.clone(),
        capabilities_queue: sub.target.clone(),
        timing: timing(),
        policies: RetryPolicy::new(Duration::from_millis(sub.policy_ms)).into(),
        v1_only: false,
        known: None,
        seed: world.rng.u64(..),
    };
    let ticket = Ticket::parse(&sub.ticket).expect("simulated tickets are valid");
    let machine = Submission::submit(config, sub.spec.clone(), ticket, now(world, s));
    world.subs[s].machine = Some(machine);
    pump(world, s);
}

/// Feeds `input` to the submission's machine and does what it says next.
fn feed(world: &mut World, s: usize, input: Input<SimError>) {
    let now = now(world, s);
    if let Some(machine) = world.subs[s].machine.as_mut() {
        machine.handle(input, now);
    }
    pump(world, s);
}

/// A request in flight as `dispatcher::rpc` sealed it: what to do with the answer's share, and
/// with a refusal of its session.
#[derive(Clone, Debug)]
struct Sealed {
    /// The broker message: an answer to an earlier one (a copy of the request before it went
    /// again, signed) is not this request's, as `dispatcher::rpc` matches answers by correlation id.
    msg: u64,
    request: Request,
    not_after: u64,
    message_id: String,
    offer: Option<std::sync::Arc<Offer>>,
    session: Option<SessionId>,
    signed_again: bool,
}

pub fn on_reply(world: &mut World, s: usize, attempt: u64, msg: u64, reply: Reply, share: Option<KeyShare>) {
    if world.subs[s].in_flight != Some(attempt) {
        return;
    }
    if world.subs[s].sealed.as_ref().is_some_and(|sealed| sealed.msg != msg) {
        return;
    }
    if let Some(sealed) = world.subs[s].sealed.take() {
        let (d, target, now) = (world.subs[s].dispatcher, world.subs[s].target.clone(), dispatcher_now(world, s));
        if let Some(offer) = &sealed.offer {
            let (dispatcher_key, agent_key) = (world.key.id(), world.agent_key.id());
            let completed = share.map(|share| offer.complete(&sealed.message_id, &share, dispatcher_key, agent_key));
            let refused = matches!(reply, Reply::Error(_));
            // A share that agrees none leaves the agent signed to, as the cache decides.
            let _ = world.sessions[d].offer_answered(&target, completed, refused, now);
        }
        if let (Some(session), Reply::Error(error)) = (sealed.session, &reply) {
            if error.kind == ErrorKind::UnknownSession {
                world.sessions[d].forget(&target, session);
                if !sealed.signed_again {
                    world.log(format!("submission {s}: the agent lost the session; the request goes again, signed"));
                    publish(world, s, &sealed.request, sealed.not_after, Some(attempt), true);
                    return;
                }
            }
        }
    }
    world.subs[s].in_flight = None;
    let input = match reply {
        Reply::Error(error) => Input::Failed { attempt, error: SimError::Agent(error), published: true },
        reply => Input::Reply { attempt, reply },
    };
    feed(world, s, input);
}

/// The attempt in flight got no answer: an offer it made may be made again.
fn unanswered(world: &mut World, s: usize) {
    if let Some(Sealed { offer: Some(_), .. }) = world.subs[s].sealed.take() {
        let (d, target) = (world.subs[s].dispatcher, world.subs[s].target.clone());
        world.sessions[d].unanswered(&target);
    }
}

pub fn on_timeout(world: &mut World, s: usize, attempt: u64) {
    if world.subs[s].in_flight == Some(attempt) {
        world.subs[s].in_flight = None;
        unanswered(world, s);
        feed(world, s, Input::Failed { attempt, error: SimError::NoReply, published: true });
    }
}

/// The dispatcher's broker link died: every attempt waiting on it fails at once.
pub fn link_lost(world: &mut World, d: usize) {
    world.log(format!("dispatcher {d} loses its broker link"));
    for s in 0..world.subs.len() {
        if world.subs[s].dispatcher != d {
            continue;
        }
        if let Some(attempt) = world.subs[s].in_flight.take() {
            unanswered(world, s);
            feed(world, s, Input::Failed { attempt, error: SimError::ConnectionLost, published: true });
        }
    }
}

pub fn wake(world: &mut World, s: usize) {
    if world.subs[s].wake.is_some_and(|at| at <= world.now) {
        world.subs[s].wake = None;
        pump(world, s);
    }
}

/// Ctrl-C: the machine decides (before the start was published the submission ends unsent;
/// after, the script is cancelled and followed until it stops).
pub fn interrupt(world: &mut World, s: usize) {
    if world.subs[s].outcome.is_some() {
        return;
    }
    world.log(format!("user interrupts submission {s}"));
    if !world.subs[s].published {
        world.subs[s].interrupted_before_publish = true;
    }
    if world.subs[s].machine.is_none() {
        return finish(world, s, Outcome::NotSent);
    }
    let published = world.subs[s].in_flight.is_some();
    feed(world, s, Input::Interrupt { published });
}

/// Does what the machine says until it waits.
fn pump(world: &mut World, s: usize) {
    loop {
        let now = now(world, s);
        let Some(machine) = world.subs[s].machine.as_mut() else { return };
        match machine.poll(now) {
            Action::Call { attempt, request, reply_timeout, not_after } => {
                let sub = &mut world.subs[s];
                sub.published |= request.kind() == Kind::StartScriptV2;
                sub.in_flight = Some(attempt);
                publish(world, s, &request, unix_millis(not_after), Some(attempt), false);
                let at = world.now + reply_timeout.as_millis() as u64;
                world.schedule(at, Ev::Timeout { sub: s, attempt });
            }
            Action::Send { request, not_after } => {
                publish(world, s, &request, unix_millis(not_after), None, false);
                let now = self::now(world, s);
                world.subs[s].machine.as_mut().expect("a machine").handle(Input::Sent(Ok(())), now);
            }
            Action::CountConsumers(_) => {
                let queue = world.subs[s].queue;
                let consumers = world.queues[queue]
                    .consumers
                    .iter()
                    .filter(|&&a| world.agents[a].alive && world.agents[a].connected)
                    .count();
                let now = self::now(world, s);
                let machine = world.subs[s].machine.as_mut().expect("a machine");
                machine.handle(Input::Consumers(Some(consumers as u32)), now);
            }
            Action::Emit(Event::Log(line)) => shown(world, s, &line),
            Action::Emit(Event::Notice(notice)) => {
                lost_told(world, s, &notice);
                world.log(format!("submission {s}: {notice}"));
            }
            Action::Emit(_) | Action::Learned(_) | Action::LegacyNotice(_) => {}
            Action::AwaitReply(_) => return,
            Action::Sleep(until) => {
                let at = until.as_nanos().div_ceil(1_000_000) as u64;
                if world.subs[s].wake.is_none_or(|wake| wake > at) {
                    world.subs[s].wake = Some(at);
                    world.schedule(at, Ev::Wake(s));
                }
                return;
            }
            Action::Done(told) => {
                world.subs[s].in_flight = None;
                return finish(world, s, Outcome::of(&told));
            }
        }
    }
}

/// Publishes one request of submission `s`, its reply (if any) to `attempt`, sealed as
/// `dispatcher::rpc` does: in the session agreed with the agent, else signed, offering one (never
/// to a pool; and a request that gets no answer only ever uses a session already agreed).
fn publish(world: &mut World, s: usize, request: &Request, not_after: u64, attempt: Option<u64>, signed_again: bool) {
    let now = dispatcher_now(world, s);
    let (queue, target, d) = (world.subs[s].queue, world.subs[s].target.clone(), world.subs[s].dispatcher);
    let pinned = [world.agent_key.id()];
    let plan = match attempt {
        None => world.sessions[d].established(&target, &pinned, now).map_or(Plan::Sign, Plan::Mac),
        Some(_) => world.sessions[d].plan(&target, &pinned, now),
    };
    let offer =
        matches!(plan, Plan::Offer).then(|| std::sync::Arc::new(Offer::new(&mut world.entropy).expect("random bytes")));
    let share = offer.as_deref().map(Offer::share);
    let (header, bytes) =
        request.encode_offering(&target, now, Some(not_after), share, &mut world.entropy).expect("requests encode");
    let (seal, session) = match &plan {
        Plan::Mac(session) => (session.seal_command(&bytes), Some(session.id())),
        Plan::Offer | Plan::Sign => (world.key.seal_command(&bytes), None),
    };
    let seal = Some(seal);
    let expires = world.now + not_after.saturating_sub(now);
    let label = match attempt {
        Some(attempt) => format!("{:?} {} #{attempt}", request.kind(), world.subs[s].ticket),
        None => format!("{:?} {}", request.kind(), world.subs[s].ticket),
    };
    let msg = world.publish(queue, bytes, seal, attempt.map(|a| (s, a)), expires, label, false);
    if attempt.is_some() {
        let message_id = header.message_id;
        let sealed = Sealed { msg, request: request.clone(), not_after, message_id, offer, session, signed_again };
        world.subs[s].sealed = Some(sealed);
    }
}

/// Lines the user is told the store lost: up to where.
fn lost_told(world: &mut World, s: usize, notice: &str) {
    let ticket = world.subs[s].ticket.clone();
    let seen = world.subs[s].seen.max(world.subs[s].lost_to);
    let told = (seen + 1..=world.oracle.lines_of(&ticket))
        .rev()
        .find(|&to| notice == lost_lines_notice(&Ticket::parse(&ticket).expect("a ticket"), seen + 1, to));
    if let Some(to) = told {
        world.subs[s].lost_to = to;
    }
}

/// A line shown to the user: it must be the script's, the next one (or the first after lines
/// it was told are lost).
fn shown(world: &mut World, s: usize, line: &LogLine) {
    let ticket = world.subs[s].ticket.clone();
    let sub = &mut world.subs[s];
    let expected = sub.seen.max(sub.lost_to) + 1;
    sub.seen = line.seq;
    if line.seq != expected {
        world.violation(format!("submission {s} showed line {} where line {expected} was next", line.seq));
    }
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

fn finish(world: &mut World, s: usize, outcome: Outcome) {
    world.log(format!("submission {s} ends: {outcome:?}"));
    world.subs[s].machine = None;
    // Lines named lost count as seen: the user was told of them.
    let seen = world.subs[s].seen.max(world.subs[s].lost_to);
    let ticket = world.subs[s].ticket.clone();
    for problem in world.oracle.check_outcome(&ticket, &outcome, seen) {
        world.violation(format!("submission {s}: {problem}"));
    }
    world.subs[s].outcome = Some(outcome);
}
