//! One simulated world: dispatchers, agents and pools over a simulated broker, ticket store and
//! clock, driven by one seed. The agents' decisions are contracts' ([`contracts::agent`]), their
//! store is [`MemoryStore`], commands are really encoded, signed and checked
//! ([`contracts::trust`]). The dispatchers run contracts' real submission machine
//! ([`contracts::submission`], see [`crate::dispatcher`]).

use crate::dispatcher::Sub;
use crate::oracle::Oracle;
use contracts::agent::{self, CompleteDecision, Recovery, StartDecision, SKIP_LOGS};
use contracts::session::{self, KeyShare, Offer, SessionCache, SessionTable};
use contracts::store::{Cancel, Claim, ClaimReplication, Epoch, MemoryData, MemoryStore, Release, TicketStore};
use contracts::trust::{check_command_header, check_command_seal, Identity, Refusal, Seal, SecretKey, TrustedKeys};
use contracts::*;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const LEASE_TTL: Duration = Duration::from_millis(3_000);
pub const RECORD_TTL: Duration = Duration::from_secs(3_600);
pub const TOMBSTONE_TTL_MS: u64 = 3_600_000;
/// Deliveries of one message before the broker dead-letters it (`x-delivery-limit`).
pub const DELIVERY_LIMIT: u32 = 4;
/// What every clock (agents', dispatchers', each with its skew) reads when the simulation
/// begins: the store's data began at 0, ten minutes before, so only an epoch made by a store
/// that lost its data in the simulation is younger than the clock-skew allowance.
pub const CLOCK_ORIGIN_MS: u64 = 600_000;

/// Runs a future of the memory store, which is always ready.
pub fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => unreachable!("memory store futures are always ready"),
    }
}

/// Fault rates of one world, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Faults {
    pub reply_loss: f64,
    pub duplicate: f64,
    pub long_delay: f64,
    pub ack_lost: f64,
    pub crash_after_claim: f64,
    pub store_failover: bool,
    pub claim_replicas: u32,
}

/// Faults left out of a run (`--exclude`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Exclude {
    /// The store failing over to a replica that lacks recent writes.
    pub failover: bool,
    /// The store restarting empty.
    pub restart_empty: bool,
}

impl Exclude {
    /// Parses `failover,restart-empty` (either, both, or empty).
    pub fn parse(list: &str) -> Result<Exclude, String> {
        let mut exclude = Exclude::default();
        for fault in list.split(',').filter(|f| !f.is_empty()) {
            match fault {
                "failover" => exclude.failover = true,
                "restart-empty" => exclude.restart_empty = true,
                other => return Err(format!("unknown fault {other:?} (failover, restart-empty)")),
            }
        }
        Ok(exclude)
    }
}

/// A command in the broker.
#[derive(Clone)]
pub struct Msg {
    pub id: u64,
    pub queue: usize,
    pub bytes: Arc<Vec<u8>>,
    pub seal: Option<Seal>,
    /// Injected by the simulated attacker: must never run anything.
    pub forged: bool,
    /// The submission and attempt it belongs to, for the reply.
    pub sub: Option<(usize, u64)>,
    /// When the broker drops it (AMQP expiration), true time.
    pub expires: u64,
    pub deliveries: u32,
    pub label: String,
}

pub struct Queue {
    pub name: String,
    pub ready: VecDeque<Msg>,
    pub consumers: Vec<usize>,
}

/// A run of a script on an agent.
pub struct Run {
    pub ticket: String,
    pub keys: contracts::store::TicketKeys,
    pub record: agent::TicketRecord,
    pub raw: String,
    pub lines_total: u64,
    pub exit: i32,
    pub step_ms: u64,
    pub next_seq: u64,
    pub spawned: bool,
    pub cancelled: bool,
    pub pending: Vec<LogLine>,
    pub ended: Option<i32>,
    pub forged: bool,
}

pub struct Agent {
    pub id: String,
    pub pool: Option<String>,
    pub instance: u32,
    pub alive: bool,
    pub connected: bool,
    pub skew: i64,
    pub epoch: Option<Epoch>,
    pub runs: BTreeMap<String, Run>,
    pub unconfirmed: BTreeSet<String>,
    /// The sessions dispatchers agreed with this process (lost when it crashes).
    pub sessions: SessionTable,
}

impl Agent {
    pub fn owner(&self) -> String {
        format!("{}/{}", self.id, self.instance)
    }
}

#[derive(Debug)]
pub enum Ev {
    Submit(usize),
    Arrive(Msg),
    /// An answer to the message `msg`, with the agent's share when it accepted the session the
    /// message offered.
    Reply {
        sub: usize,
        attempt: u64,
        msg: u64,
        reply: Reply,
        share: Option<KeyShare>,
    },
    Timeout {
        sub: usize,
        attempt: u64,
    },
    Wake(usize),
    Interrupt(usize),
    RunStep {
        agent: usize,
        instance: u32,
        ticket: String,
    },
    Crash(usize),
    Restart(usize),
    Disconnect(usize),
    Reconnect(usize),
    DispatcherLinkLost(usize),
    StoreDown,
    StoreUp,
    StoreRestartEmpty,
    StoreFailover,
    Replicate,
    Forge,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "msg#{} {}", self.id, self.label)
    }
}

/// Counters reported with `--json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub scripts: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub crashes: u64,
    pub store_losses: u64,
}

pub struct World {
    pub seed: u64,
    pub now: u64,
    pub rng: fastrand::Rng,
    events: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slots: Vec<Option<Ev>>,
    free: Vec<usize>,
    next_event: u64,
    pub trace: Vec<String>,
    pub counts: Counts,
    pub violations: Vec<String>,
    pub queues: Vec<Queue>,
    pub agents: Vec<Agent>,
    pub subs: Vec<Sub>,
    pub dispatcher_skew: Vec<i64>,
    pub store: MemoryStore,
    pub store_clock: Arc<AtomicU64>,
    pub store_down: bool,
    pub replica: MemoryData,
    pub faults: Faults,
    pub oracle: Oracle,
    pub key: SecretKey,
    pub attacker: SecretKey,
    pub trusted: TrustedKeys,
    /// The key the agents answer under (the sessions they agree name it).
    pub agent_key: SecretKey,
    /// Each dispatcher's sessions with the agents.
    pub sessions: Vec<SessionCache>,
    next_msg: u64,
    last_arrival: BTreeMap<usize, u64>,
    /// How long the agent holds the reply it just made (a waiting status with nothing new).
    hold: u64,
    /// The share of the session the agent just accepted, for the reply it just made.
    share: Option<KeyShare>,
}

impl World {
    pub fn new(seed: u64, exclude: &Exclude) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        let store_clock = Arc::new(AtomicU64::new(0));
        let key = SecretKey::generate().expect("a key");
        let attacker = SecretKey::generate().expect("a key");
        let trusted = TrustedKeys::of([*key.public()]);
        let store_failover = rng.f64() < 0.25 && !exclude.failover;
        let faults = Faults {
            reply_loss: rng.f64() * 0.15,
            duplicate: rng.f64() * 0.15,
            long_delay: rng.f64() * 0.1,
            ack_lost: rng.f64() * 0.1,
            crash_after_claim: rng.f64() * 0.05,
            store_failover,
            // A store that may fail over loses recent writes: claims must reach a replica first.
            claim_replicas: u32::from(store_failover),
        };
        let mut world = World {
            seed,
            now: 0,
            rng,
            events: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_event: 0,
            trace: Vec::new(),
            counts: Counts::default(),
            violations: Vec::new(),
            queues: Vec::new(),
            agents: Vec::new(),
            subs: Vec::new(),
            dispatcher_skew: Vec::new(),
            store: MemoryStore::new(store_clock.clone()),
            store_clock,
            store_down: false,
            replica: MemoryData::default(),
            faults,
            oracle: Oracle::default(),
            key,
            attacker,
            trusted,
            agent_key: SecretKey::generate().expect("a key"),
            sessions: Vec::new(),
            next_msg: 0,
            last_arrival: BTreeMap::new(),
            hold: 0,
            share: None,
        };
        // The store has been in use since long before: its data began when the clocks read 0.
        ready(world.store.epoch(0)).expect("memory store");
        world.build(exclude);
        world
    }

    /// Agents, pools, dispatchers, submissions and faults, drawn from the seed.
    fn build(&mut self, exclude: &Exclude) {
        let solo = self.rng.usize(1..=2);
        let pools = self.rng.usize(0..=2);
        for a in 0..solo {
            let id = format!("agent-{a}");
            self.add_agent(id, None);
        }
        for p in 0..pools {
            let pool = format!("pool{p}");
            let queue = self.queues.len();
            self.queues.push(Queue { name: format!("pool:{pool}"), ready: VecDeque::new(), consumers: Vec::new() });
            for w in 0..self.rng.usize(2..=3) {
                let agent = self.add_agent(format!("{pool}-w{w}"), Some(pool.clone()));
                self.queues[queue].consumers.push(agent);
            }
        }
        let dispatchers = self.rng.usize(1..=3);
        for _ in 0..dispatchers {
            let skew = self.rng.i64(-2_000..=2_000);
            self.dispatcher_skew.push(skew);
            self.sessions.push(SessionCache::default());
        }
        let subs = self.rng.usize(2..=6);
        for s in 0..subs {
            let queue = self.rng.usize(0..self.queues.len());
            let dispatcher = self.rng.usize(0..dispatchers);
            let lines = self.rng.u64(0..=4);
            let exit = self.rng.i32(0..=3);
            let step_ms = self.rng.u64(50..=400);
            let at = self.rng.u64(0..5_000);
            let ticket = format!("sim-{}-{s}", self.seed);
            let target = self.queues[queue].name.clone();
            let policy_ms = self.rng.u64(8_000..=20_000);
            self.subs.push(Sub::new(s, dispatcher, queue, target, ticket, lines, exit, step_ms, policy_ms));
            self.schedule(at, Ev::Submit(s));
            if self.rng.f64() < 0.25 {
                let when = at + self.rng.u64(0..3_000);
                self.schedule(when, Ev::Interrupt(s));
            }
        }
        for a in 0..self.agents.len() {
            if self.rng.f64() < 0.3 {
                let when = self.rng.u64(0..10_000);
                self.schedule(when, Ev::Crash(a));
            }
            if self.rng.f64() < 0.3 {
                let when = self.rng.u64(0..10_000);
                self.schedule(when, Ev::Disconnect(a));
            }
        }
        for d in 0..dispatchers {
            if self.rng.f64() < 0.2 {
                let when = self.rng.u64(0..10_000);
                self.schedule(when, Ev::DispatcherLinkLost(d));
            }
        }
        if self.rng.f64() < 0.25 {
            let when = self.rng.u64(0..10_000);
            self.schedule(when, Ev::StoreDown);
        }
        if self.rng.f64() < 0.1 {
            let when = self.rng.u64(0..10_000);
            if !exclude.restart_empty {
                self.schedule(when, Ev::StoreRestartEmpty);
            }
        }
        if self.faults.store_failover {
            let when = self.rng.u64(0..10_000);
            self.schedule(when, Ev::StoreFailover);
            self.schedule(0, Ev::Replicate);
        }
        for _ in 0..self.rng.usize(0..=3) {
            let when = self.rng.u64(0..10_000);
            self.schedule(when, Ev::Forge);
        }
    }

    fn add_agent(&mut self, id: String, pool: Option<String>) -> usize {
        let index = self.agents.len();
        let skew = self.rng.i64(-2_000..=2_000);
        self.queues.push(Queue { name: id.clone(), ready: VecDeque::new(), consumers: vec![index] });
        self.agents.push(Agent {
            id,
            pool,
            instance: 0,
            alive: true,
            connected: true,
            skew,
            epoch: None,
            runs: BTreeMap::new(),
            sessions: SessionTable::default(),
            unconfirmed: BTreeSet::new(),
        });
        index
    }

    pub fn schedule(&mut self, at: u64, event: Ev) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(event);
                slot
            }
            None => {
                self.slots.push(Some(event));
                self.slots.len() - 1
            }
        };
        self.next_event += 1;
        self.events.push(Reverse((at.max(self.now), self.next_event, slot)));
    }

    pub fn log(&mut self, what: String) {
        self.trace.push(format!("{:>6} {what}", self.now));
    }

    pub fn violation(&mut self, what: String) {
        self.log(format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    /// Runs until nothing is left to happen, or the horizon; then checks every submission ended.
    pub fn run(&mut self) {
        const HORIZON: u64 = 600_000;
        while let Some(Reverse((at, _, slot))) = self.events.pop() {
            if at > HORIZON || !self.violations.is_empty() {
                break;
            }
            self.now = at;
            self.store_clock.store(at, Ordering::SeqCst);
            let event = self.slots[slot].take().expect("scheduled event");
            self.free.push(slot);
            self.handle(event);
        }
        for s in 0..self.subs.len() {
            if self.subs[s].outcome.is_none() && self.violations.is_empty() {
                self.violation(format!("submission {} ({}) never ended", s, self.subs[s].ticket));
            }
        }
    }

    fn handle(&mut self, event: Ev) {
        match event {
            Ev::Submit(s) => crate::dispatcher::submit(self, s),
            Ev::Arrive(msg) => self.arrive(msg),
            Ev::Reply { sub, attempt, msg, reply, share } => {
                crate::dispatcher::on_reply(self, sub, attempt, msg, reply, share)
            }
            Ev::Timeout { sub, attempt } => crate::dispatcher::on_timeout(self, sub, attempt),
            Ev::Wake(s) => crate::dispatcher::wake(self, s),
            Ev::Interrupt(s) => crate::dispatcher::interrupt(self, s),
            Ev::RunStep { agent, instance, ticket } => self.run_step(agent, instance, &ticket),
            Ev::Crash(a) => self.crash(a),
            Ev::Restart(a) => self.restart(a),
            Ev::Disconnect(a) => {
                if self.agents[a].connected && self.agents[a].alive {
                    self.agents[a].connected = false;
                    self.log(format!("{} loses its broker connection", self.agents[a].id));
                    let back = self.now + self.rng.u64(200..5_000);
                    self.schedule(back, Ev::Reconnect(a));
                }
            }
            Ev::Reconnect(a) => {
                self.agents[a].connected = true;
                self.log(format!("{} reconnects", self.agents[a].id));
                self.pump_agent(a);
            }
            Ev::DispatcherLinkLost(d) => crate::dispatcher::link_lost(self, d),
            Ev::StoreDown => {
                self.store_down = true;
                self.log("store down".into());
                let back = self.now + self.rng.u64(200..4_000);
                self.schedule(back, Ev::StoreUp);
            }
            Ev::StoreUp => {
                self.store_down = false;
                self.log("store up".into());
            }
            Ev::StoreRestartEmpty => {
                self.counts.store_losses += 1;
                self.log("store restarts empty".into());
                self.store.clear();
                self.replica = MemoryData::default();
            }
            Ev::StoreFailover => {
                self.counts.store_losses += 1;
                self.log("store fails over, losing writes since the last replication".into());
                self.store.restore(self.replica.clone());
            }
            Ev::Replicate => {
                self.replica = self.store.snapshot();
                let next = self.now + self.rng.u64(100..1_000);
                self.schedule(next, Ev::Replicate);
            }
            Ev::Forge => self.forge(),
        }
    }

    // ---- broker ----

    /// Publishes a command: it reaches its queue after a delay, maybe twice. Its id.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        queue: usize,
        bytes: Vec<u8>,
        seal: Option<Seal>,
        sub: Option<(usize, u64)>,
        expires: u64,
        label: String,
        forged: bool,
    ) -> u64 {
        self.next_msg += 1;
        let msg =
            Msg { id: self.next_msg, queue, bytes: Arc::new(bytes), seal, forged, sub, expires, deliveries: 0, label };
        let copies = if self.rng.f64() < self.faults.duplicate { 2 } else { 1 };
        if copies == 2 {
            self.counts.duplicated += 1;
        }
        for _ in 0..copies {
            let delay = self.delay();
            let at = self.now + delay;
            let last = self.last_arrival.entry(queue).or_insert(0);
            if at < *last {
                self.counts.reordered += 1;
            }
            *last = (*last).max(at);
            self.schedule(at, Ev::Arrive(msg.clone()));
        }
        msg.id
    }

    pub fn delay(&mut self) -> u64 {
        if self.rng.f64() < self.faults.long_delay {
            self.rng.u64(500..3_000)
        } else {
            self.rng.u64(1..30)
        }
    }

    fn arrive(&mut self, msg: Msg) {
        let queue = msg.queue;
        self.queues[queue].ready.push_back(msg);
        self.pump(queue);
    }

    fn pump_agent(&mut self, agent: usize) {
        let queues: Vec<usize> =
            (0..self.queues.len()).filter(|&q| self.queues[q].consumers.contains(&agent)).collect();
        for q in queues {
            self.pump(q);
        }
    }

    /// Delivers what a queue holds to its connected consumers, one message at a time.
    fn pump(&mut self, queue: usize) {
        loop {
            let ready: Vec<usize> = self.queues[queue]
                .consumers
                .iter()
                .copied()
                .filter(|&a| self.agents[a].alive && self.agents[a].connected)
                .collect();
            if ready.is_empty() {
                return;
            }
            let Some(mut msg) = self.queues[queue].ready.pop_front() else { return };
            if self.now > msg.expires {
                self.counts.dropped += 1;
                self.log(format!("{msg:?} expired in {}", self.queues[queue].name));
                continue;
            }
            msg.deliveries += 1;
            if msg.deliveries > DELIVERY_LIMIT {
                self.counts.dropped += 1;
                self.log(format!("{msg:?} dead-lettered after {DELIVERY_LIMIT} deliveries"));
                continue;
            }
            let agent = ready[self.rng.usize(0..ready.len())];
            let requeue = self.deliver(agent, &msg);
            if requeue {
                self.counts.dropped += 1;
                self.queues[queue].ready.push_front(msg);
                // Redelivered once the consumer's channel is replaced.
                let again = self.now + self.rng.u64(50..500);
                self.schedule(again, Ev::Reconnect(agent));
                self.agents[agent].connected = false;
                return;
            }
        }
    }

    // ---- the agent ----

    fn agent_now(&self, agent: usize) -> u64 {
        (self.now + CLOCK_ORIGIN_MS).saturating_add_signed(self.agents[agent].skew)
    }

    /// One delivery to an agent; `true` if it must be redelivered (the ack was lost or the
    /// agent crashed before acking).
    fn deliver(&mut self, a: usize, msg: &Msg) -> bool {
        let agent_now = self.agent_now(a);
        let id = self.agents[a].id.clone();
        let reply = self.agent_handle(a, msg, agent_now);
        let hold = std::mem::take(&mut self.hold);
        let share = self.share.take();
        if !self.agents[a].alive {
            // Crashed while handling (after its claim): never acked, no reply.
            return true;
        }
        if let (Some(reply), Some((sub, attempt))) = (reply, msg.sub) {
            if self.rng.f64() < self.faults.reply_loss {
                self.counts.dropped += 1;
                self.log(format!("reply of {id} to {msg:?} lost"));
            } else {
                let at = self.now + hold + self.rng.u64(1..50) + self.delay();
                self.schedule(at, Ev::Reply { sub, attempt, msg: msg.id, reply, share });
            }
        }
        self.rng.f64() < self.faults.ack_lost
    }

    fn unavailable() -> Reply {
        Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, "ticket store unavailable; nothing was started"))
    }

    /// The agent's answer to one command: the checks of `broker.rs` and the decisions of
    /// contracts' `agent` module, as `worker-agent/src/service.rs` drives them.
    fn agent_handle(&mut self, a: usize, msg: &Msg, now: u64) -> Option<Reply> {
        let session = match &msg.seal {
            Some(Seal::Mac { session, .. }) => self.agents[a].sessions.get(*session, now),
            _ => None,
        };
        let origin = check_command_seal(&self.trusted, false, Ok(msg.seal.clone()), &msg.bytes, session.as_ref());
        // Keys and sessions are random, so the trace names the refusal without their ids.
        let (origin, header, request) = match origin
            .map_err(|refusal| {
                let reason = match refusal {
                    Refusal::UntrustedKey(_) => "signed by a key this agent does not trust".to_owned(),
                    Refusal::BadSignature(_) => "a signature that does not verify".to_owned(),
                    Refusal::UnknownSession(_) => "MAC'd in a session this agent does not hold".to_owned(),
                    Refusal::BadMac(_) => "a MAC that does not verify".to_owned(),
                    ref other => other.to_string(),
                };
                (refusal.answered_as(), reason)
            })
            .and_then(|origin| {
                let (header, request) =
                    Request::decode(&msg.bytes).map_err(|e| (ErrorKind::NotAuthorized, e.to_string()))?;
                Ok((origin, header, request))
            }) {
            Ok(decoded) => decoded,
            Err((kind, refusal)) => {
                self.log(format!("{} refuses {msg:?}: {refusal}", self.agents[a].id));
                return Some(Reply::Error(ErrorReply::new(kind, refusal)));
            }
        };
        let pool = self.agents[a].pool.clone();
        let me = Identity { agent_id: &self.agents[a].id, pool: pool.as_deref() };
        if let Err(refusal) = check_command_header(&header, me, now) {
            let id = self.agents[a].id.clone();
            self.log(format!("{id} refuses {msg:?}: {refusal}"));
            return Some(Reply::Error(ErrorReply::new(ErrorKind::NotAuthorized, refusal.to_string())));
        }
        if let Err(expired) = agent::check_fresh(header.not_after, now) {
            return Some(Reply::Error(expired));
        }
        // As broker.rs: a command that passed every check may offer a session.
        let me = Identity { agent_id: &self.agents[a].id, pool: pool.as_deref() };
        if let Some(offer) = session::offered(origin, &header, &msg.bytes, me) {
            match self.agents[a].sessions.accept(&offer, self.agent_key.id(), now, &mut session::SystemEntropy) {
                Ok((share, _)) => {
                    self.log(format!("{} agrees a session", self.agents[a].id));
                    self.share = Some(share);
                }
                Err(declined) => {
                    // As for refusals: the trace names why without the (random) key id.
                    let why = match declined {
                        session::Declined::TooManyOffers(_) => "the key's offers remembered are at the bound".into(),
                        other => other.to_string(),
                    };
                    self.log(format!("{} agrees no session: {why}", self.agents[a].id));
                }
            }
        }
        Some(match request {
            Request::GetCapabilities(_) => Reply::Capabilities(Capabilities {
                services: vec![SERVICE_CAPABILITIES.into(), SERVICE_SCRIPT_V2.into()],
                agent_version: "sim".into(),
            }),
            Request::StartScriptV2(start) => {
                let first = start.first_issued_at.unwrap_or(header.issued_at);
                self.start(a, msg, start.ticket, start.spec, header.not_after, first, now)
            }
            Request::GetStatusV2(s) => {
                let reply = self.status(&s.ticket, s.last_log_sequence);
                let nothing_new = matches!(&reply, Reply::ScriptStatus(st) if st.logs.is_empty() && !st.is_complete());
                if s.wait.is_some() && nothing_new {
                    // The agent holds a waiting status request until there is new output (here,
                    // the whole wait).
                    self.hold = crate::dispatcher::STATUS_WAIT.as_millis() as u64;
                }
                reply
            }
            Request::CancelScriptV2(c) => self.cancel(a, &c.ticket, c.last_log_sequence, c.first_issued_at, now),
            Request::CompleteScriptV2(c) => self.complete(&c.ticket, now),
            other => Reply::Error(ErrorReply::new(ErrorKind::Unsupported, format!("{:?}", other.kind()))),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        a: usize,
        msg: &Msg,
        ticket: Ticket,
        spec: ScriptSpec,
        not_after: Option<u64>,
        first_issued_at: u64,
        now: u64,
    ) -> Reply {
        if self.store_down {
            return Self::unavailable();
        }
        let keys = self.store.keys(&ticket.store_key());
        let digest = spec.digest();
        let owner = self.agents[a].owner();
        let record =
            agent::claim_record(&owner, &self.agents[a].id, digest.clone(), spec.mutex().is_some(), not_after, now);
        let claim = loop {
            let epoch = match self.agents[a].epoch.clone() {
                Some(epoch) => epoch,
                None => {
                    let epoch = ready(self.store.epoch(now)).expect("memory store");
                    self.agents[a].epoch = Some(epoch.clone());
                    epoch
                }
            };
            if let Err(refused) = agent::check_issued_since(Some(first_issued_at), epoch.created_ms) {
                return Reply::Error(refused);
            }
            match ready(self.store.claim(&keys, &record, RECORD_TTL, LEASE_TTL, &epoch)).expect("memory store") {
                Claim::EpochChanged => {
                    let current = ready(self.store.epoch(now)).expect("memory store");
                    self.log(format!("{} sees a new store epoch {}", self.agents[a].id, current.value));
                    self.agents[a].epoch = Some(current);
                }
                other => break other,
            }
        };
        let unconfirmed = self.agents[a].unconfirmed.contains(&keys.ticket);
        let decision = agent::decide_start(&claim, &digest, &owner, self.faults.claim_replicas, unconfirmed);
        self.log(format!("{} start {}: {:?}", self.agents[a].id, ticket, decision));
        if self.rng.f64() < self.faults.crash_after_claim {
            self.crash(a);
            return Self::unavailable();
        }
        match (decision, claim) {
            (StartDecision::Run, _) => self.launch(a, keys, record, &spec, msg.forged),
            (StartDecision::Confirm, Claim::Existing { record: existing, raw, .. }) => {
                if let Err(refused) = self.confirm_and_launch(a, keys, raw, existing, &spec, msg.forged) {
                    return refused;
                }
            }
            (StartDecision::Confirm, _) => {
                self.agents[a].unconfirmed.insert(keys.ticket.clone());
                let raw = record.encode();
                if let Err(refused) = self.confirm_and_launch(a, keys, raw, record, &spec, msg.forged) {
                    return refused;
                }
            }
            (StartDecision::Cancelled, _) => return Reply::ScriptStatus(agent::cancelled_status(&ticket)),
            (StartDecision::Conflict(conflict), _) => return Reply::Error(conflict),
            (StartDecision::Status, _) => {}
        }
        self.status(&ticket, 0)
    }

    /// The replicas of a store that may fail over: a claim is confirmed once a replication
    /// carried it (Redis `WAIT`); the decision on the answer is contracts'.
    fn confirm_and_launch(
        &mut self,
        a: usize,
        keys: contracts::store::TicketKeys,
        raw: String,
        record: agent::TicketRecord,
        spec: &ScriptSpec,
        forged: bool,
    ) -> Result<(), Reply> {
        let standing =
            ready(self.store.read(&keys, SKIP_LOGS)).expect("memory store").record.is_some_and(|(_, r)| r == raw);
        let replication = self.replicate(standing);
        match agent::check_replicated(&replication, self.faults.claim_replicas, Duration::from_secs(1)) {
            Ok(_) => {
                if self.agents[a].unconfirmed.remove(&keys.ticket) {
                    self.launch(a, keys, record, spec, forged);
                }
                Ok(())
            }
            Err(refused) => {
                if replication == ClaimReplication::Lost {
                    self.agents[a].unconfirmed.remove(&keys.ticket);
                }
                Err(Reply::Error(refused))
            }
        }
    }

    fn launch(
        &mut self,
        a: usize,
        keys: contracts::store::TicketKeys,
        record: agent::TicketRecord,
        spec: &ScriptSpec,
        forged: bool,
    ) {
        let plan = crate::dispatcher::plan_of(spec);
        let ticket = keys.ticket.clone();
        let raw = record.encode();
        let run = Run {
            ticket: ticket.clone(),
            keys,
            record,
            raw,
            lines_total: plan.0,
            exit: plan.1,
            step_ms: plan.2,
            next_seq: 1,
            spawned: false,
            cancelled: false,
            pending: Vec::new(),
            ended: None,
            forged,
        };
        self.agents[a].runs.insert(ticket.clone(), run);
        let instance = self.agents[a].instance;
        let at = self.now + 1;
        self.schedule(at, Ev::RunStep { agent: a, instance, ticket });
    }

    fn status(&mut self, ticket: &Ticket, last_seq: u64) -> Reply {
        if self.store_down {
            return Self::unavailable();
        }
        let keys = self.store.keys(&ticket.store_key());
        let view = ready(self.store.read(&keys, last_seq)).expect("memory store");
        Reply::ScriptStatus(agent::status_from(ticket, last_seq, view))
    }

    /// The agent's cancel, answered as `contracts::agent::cancel_answer` says, once a tombstone
    /// it answers with is on the replicas (`contracts::agent::cancel_awaits_replication`).
    fn cancel(&mut self, a: usize, ticket: &Ticket, last_seq: u64, first_issued_at: Option<u64>, now: u64) -> Reply {
        match self.cancel_and_read(a, ticket, last_seq, now) {
            Reply::ScriptStatus(status) if agent::cancel_awaits_replication(&status, self.faults.claim_replicas) => {
                match self.confirm_tombstone(ticket) {
                    Ok(()) => self.answer_cancel(Reply::ScriptStatus(status), first_issued_at, now),
                    Err(refused) => Reply::Error(refused),
                }
            }
            other => self.answer_cancel(other, first_issued_at, now),
        }
    }

    /// Whether the replicas hold the record a cancel found (its tombstone): once a replication
    /// carried it (Redis `WAIT`), as for a claim; the decision on the answer is contracts'.
    fn confirm_tombstone(&mut self, ticket: &Ticket) -> Result<(), ErrorReply> {
        let keys = self.store.keys(&ticket.store_key());
        let standing = ready(self.store.read(&keys, SKIP_LOGS)).expect("memory store").record.is_some();
        let replication = self.replicate(standing);
        agent::check_tombstone_replicated(&replication, self.faults.claim_replicas, Duration::from_secs(1))
    }

    /// A write confirmed on the replicas (Redis `WAIT` after it): lost if it no longer
    /// `standing`, else carried by a replication now, or not yet.
    fn replicate(&mut self, standing: bool) -> ClaimReplication {
        if !standing {
            ClaimReplication::Lost
        } else if self.rng.f64() < 0.7 {
            self.replica = self.store.snapshot();
            ClaimReplication::Acked(1)
        } else {
            ClaimReplication::Acked(0)
        }
    }

    fn answer_cancel(&mut self, reply: Reply, first_issued_at: Option<u64>, now: u64) -> Reply {
        match reply {
            Reply::ScriptStatus(status) if !self.store_down => {
                let epoch = ready(self.store.epoch(now)).expect("memory store");
                agent::cancel_answer(status, first_issued_at, epoch.created_ms)
                    .map_or_else(Reply::Error, Reply::ScriptStatus)
            }
            other => other,
        }
    }

    fn cancel_and_read(&mut self, a: usize, ticket: &Ticket, last_seq: u64, now: u64) -> Reply {
        let key = ticket.store_key();
        if let Some(run) = self.agents[a].runs.get_mut(&key) {
            run.cancelled = true;
            return self.status(ticket, last_seq);
        }
        if self.store_down {
            return Self::unavailable();
        }
        let keys = self.store.keys(&key);
        let tombstone = agent::cancel_tombstone(&self.agents[a].owner(), &self.agents[a].id, now);
        let cancel = ready(self.store.cancel(&keys, &tombstone, RECORD_TTL, LEASE_TTL * 4)).expect("memory store");
        let id = self.agents[a].id.clone();
        self.log(format!("{id} cancel {ticket}: {cancel:?}"));
        if cancel == Cancel::Flagged {
            if let Some(run) = self.agents[a].runs.get_mut(&key) {
                run.cancelled = true;
            }
        }
        self.status(ticket, last_seq)
    }

    fn complete(&mut self, ticket: &Ticket, now: u64) -> Reply {
        if self.store_down {
            return Self::unavailable();
        }
        let keys = self.store.keys(&ticket.store_key());
        let view = ready(self.store.read(&keys, SKIP_LOGS)).expect("memory store");
        let record = view.record.as_ref().map(|(r, _)| r);
        if let CompleteDecision::Tombstone { tombstone, ttl_ms } =
            agent::decide_complete(record, view.lease_alive, now, TOMBSTONE_TTL_MS)
        {
            let raw = view.record.as_ref().map_or("", |(_, raw)| raw.as_str());
            let ttl = Some(Duration::from_millis(ttl_ms));
            if ready(self.store.compare_and_set(&keys, raw, &tombstone, ttl, Release::LeaseAndOutput))
                .expect("memory store")
            {
                self.log(format!("{ticket} completed: tombstone"));
                self.oracle.completed(&ticket.store_key());
            }
        }
        let view = ready(self.store.read(&keys, SKIP_LOGS)).expect("memory store");
        Reply::ScriptStatus(agent::status_without_logs(ticket, view))
    }

    /// One step of a run: the cancel check before the script starts, then one line of output
    /// (or its end), the lease renewed each time, writes repeated while the store is down.
    fn run_step(&mut self, a: usize, instance: u32, ticket: &str) {
        if !self.agents[a].alive || self.agents[a].instance != instance {
            return;
        }
        let owner = self.agents[a].owner();
        let down = self.store_down;
        let now = self.agent_now(a);
        let Some(run) = self.agents[a].runs.get_mut(ticket) else { return };
        let mut events = Vec::new();
        if !down {
            let renewal = ready(self.store.renew_lease(&run.keys, &owner, LEASE_TTL)).expect("memory store");
            if renewal.cancel_requested {
                run.cancelled = true;
            }
        }
        if !run.spawned && run.ended.is_none() {
            if run.cancelled {
                run.ended = Some(exit_code::CANCELLED);
            } else {
                run.spawned = true;
                events.push(RunEvent::Spawned { forged: run.forged });
            }
        } else if run.ended.is_none() {
            if run.cancelled {
                run.ended = Some(exit_code::CANCELLED);
            } else if run.next_seq <= run.lines_total {
                let seq = run.next_seq;
                run.next_seq += 1;
                run.pending.push(LogLine { seq, stream: LogStream::Stdout, text: format!("{ticket}:{seq}"), at: now });
                events.push(RunEvent::Line(seq));
            } else {
                run.ended = Some(run.exit);
            }
        }
        let mut finished = false;
        if !down {
            if !run.pending.is_empty() {
                ready(self.store.append_logs(&run.keys, &run.pending, RECORD_TTL)).expect("memory store");
                run.pending.clear();
            }
            if let Some(exit) = run.ended {
                let done = run.record.completed(exit);
                let ended = Release::Ended { lines_written: run.next_seq - 1 };
                let written =
                    ready(self.store.compare_and_set(&run.keys, &run.raw, &done, None, ended)).expect("memory store");
                finished = true;
                events.push(RunEvent::Ended { exit, written });
            }
        }
        let step = run.step_ms;
        if finished {
            self.agents[a].runs.remove(ticket);
        } else {
            let at = self.now + step;
            self.schedule(at, Ev::RunStep { agent: a, instance, ticket: ticket.to_owned() });
        }
        for event in events {
            self.on_run_event(a, ticket, event);
        }
    }

    fn on_run_event(&mut self, a: usize, ticket: &str, event: RunEvent) {
        let id = self.agents[a].id.clone();
        match event {
            RunEvent::Line(seq) => self.oracle.line(ticket, seq),
            RunEvent::Ended { exit, written } => {
                let recorded = if written { "recorded" } else { "record changed under it" };
                self.log(format!("{id} run of {ticket} ended with {exit} ({recorded})"));
                self.oracle.ended(ticket, exit);
            }
            RunEvent::Spawned { forged } => {
                self.counts.scripts += 1;
                self.log(format!("{id} SPAWNS {ticket}"));
                for problem in self.oracle.spawned(ticket, &id, forged, &self.subs) {
                    self.violation(problem);
                }
            }
        }
    }

    fn crash(&mut self, a: usize) {
        if !self.agents[a].alive {
            return;
        }
        self.counts.crashes += 1;
        let agent = &mut self.agents[a];
        agent.alive = false;
        // Its scripts die with it; their records stay until their leases run out.
        agent.runs.clear();
        agent.unconfirmed.clear();
        agent.epoch = None;
        agent.sessions = SessionTable::default();
        let id = agent.id.clone();
        self.log(format!("{id} crashes"));
        let back = self.now + self.rng.u64(500..6_000);
        self.schedule(back, Ev::Restart(a));
    }

    /// A new process: new owner id, no memory; recovers the runs of the one before.
    fn restart(&mut self, a: usize) {
        let agent = &mut self.agents[a];
        agent.alive = true;
        agent.connected = true;
        agent.instance += 1;
        let (id, owner) = (agent.id.clone(), agent.owner());
        self.log(format!("{id} restarts as {owner}"));
        if !self.store_down {
            let now = self.agent_now(a);
            self.agents[a].epoch = Some(ready(self.store.epoch(now)).expect("memory store"));
            for ticket in ready(self.store.running_tickets(&id)).expect("memory store") {
                let keys = self.store.keys(&ticket);
                let view = ready(self.store.read(&keys, SKIP_LOGS)).expect("memory store");
                match (agent::recover_run(view.record.as_ref().map(|(r, _)| r), &owner), view.record) {
                    (Recovery::ReportLost(lost), Some((_, raw))) => {
                        ready(self.store.compare_and_set(&keys, &raw, &lost, None, Release::Lease))
                            .expect("memory store");
                        self.log(format!("{id} reports {ticket} lost"));
                    }
                    _ => ready(self.store.forget_running(&id, &ticket)).expect("memory store"),
                }
            }
        }
        self.pump_agent(a);
    }

    /// The attacker: an unsigned start, one signed by an untrusted key, one MAC'd in a session
    /// no agent agreed, or a genuine signed command copied to another agent's queue.
    fn forge(&mut self) {
        let queue = self.rng.usize(0..self.queues.len());
        let target = self.queues[queue].name.clone();
        let ticket = Ticket::parse(&format!("forged-{}-{}", self.seed, self.next_msg)).expect("ticket");
        let spec = ScriptSpec { script: "rm -rf /".into(), ..Default::default() };
        let start =
            Request::StartScriptV2(StartScriptV2 { ticket, spec, wait_for_output: None, first_issued_at: None });
        let now = self.now;
        let forgery = self.rng.u8(0..4);
        let target = if forgery == 3 { "someone-else".to_owned() } else { target };
        let (_, bytes) = start.encode(&target, now, Some(now + 60_000)).expect("encodes");
        let seal = match forgery {
            0 => None,
            1 => Some(self.attacker.seal_command(&bytes)),
            // MAC'd in a session no agent agreed (its maker knows its key), in the real key's name.
            2 => {
                let offer = Offer::new().expect("random bytes");
                let made_up = session::accept(
                    "made-up",
                    offer.share(),
                    self.key.id(),
                    self.agent_key.id(),
                    &mut session::SystemEntropy,
                );
                Some(made_up.expect("a session").1.seal_command(&bytes))
            }
            // Signed by the real key, but for another agent than the queue's.
            _ => Some(self.key.seal_command(&bytes)),
        };
        self.log(format!("attacker publishes a start to {}", self.queues[queue].name));
        self.publish(queue, bytes, seal, None, now + 60_000, "forged start".into(), true);
    }
}

/// What a run step tells the oracle.
enum RunEvent {
    /// The script's process started (after the last cancel check).
    Spawned {
        forged: bool,
    },
    Line(u64),
    /// It ended with `exit`; `written` if its record took the end.
    Ended {
        exit: i32,
        written: bool,
    },
}
