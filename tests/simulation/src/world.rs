//! One simulated world: dispatchers, agents and pools over a simulated broker
//! ([`crate::broker`]), ticket store ([`crate::store`]) and clock, with its faults
//! ([`crate::faults`]), driven by one seed: the events and their order. The agents serve each
//! delivery with contracts' agent flow ([`contracts::agent::flow`], see [`crate::agent`]), the
//! dispatchers run contracts' real submission machine ([`contracts::submission`], see
//! [`crate::dispatcher`]); commands are really encoded, signed and checked
//! ([`contracts::trust`]), and the invariants are checked as each thing happens
//! ([`crate::oracle`]).

use crate::agent::{self, Agent};
use crate::broker::{Msg, Queue};
use crate::dispatcher::Sub;
pub use crate::faults::{Exclude, Faults};
use crate::oracle::Oracle;
use crate::store::SimStore;
use contracts::agent::flow::environment::Memory;
use contracts::entropy::Seeded;
use contracts::store::TicketStore;
use contracts::trust::files::TrustedKeys;
use contracts::trust::keys::SecretKey;
use contracts::trust::sessions::SessionCache;
use contracts::wire::envelope::KeyShare;
use contracts::wire::envelope::Reply;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
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
    pub store: SimStore,
    pub faults: Faults,
    pub oracle: Oracle,
    pub key: SecretKey,
    pub attacker: SecretKey,
    pub trusted: TrustedKeys,
    /// The key the agents answer under (the sessions they agree name it).
    pub agent_key: SecretKey,
    /// Each dispatcher's sessions with the agents.
    pub sessions: Vec<SessionCache>,
    /// Where keys, session shares and message ids come from.
    pub entropy: Seeded,
    pub(crate) next_msg: u64,
    pub(crate) last_arrival: BTreeMap<usize, u64>,
}

impl World {
    pub fn new(seed: u64, exclude: &Exclude) -> World {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Keys, shares and message ids from a generator of their own, so that they leave the
        // world's draws (its faults and timings) as they are.
        let mut entropy = Seeded::new(!seed);
        let key = SecretKey::generate(&mut entropy).expect("a key");
        let attacker = SecretKey::generate(&mut entropy).expect("a key");
        let agent_key = SecretKey::generate(&mut entropy).expect("a key");
        let trusted = TrustedKeys::of([*key.public()]);
        let faults = Faults::draw(&mut rng, exclude);
        let store = SimStore::new(rng.u64(..));
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
            store,
            faults,
            oracle: Oracle::default(),
            key,
            attacker,
            trusted,
            agent_key,
            entropy,
            sessions: Vec::new(),
            next_msg: 0,
            last_arrival: BTreeMap::new(),
        };
        // The store has been in use since long before: its data began when the clocks read 0.
        agent::ready(world.store.epoch(0)).expect("store up");
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
        let settings = agent::settings(&id, pool.as_deref(), format!("{id}/0"), self.faults.claim_replicas);
        let keys = agent::keys(&self.agent_key, &self.trusted, self.rng.u64(..));
        self.agents.push(Agent {
            id,
            pool,
            instance: 0,
            alive: true,
            connected: true,
            skew,
            settings,
            memory: Memory::default(),
            keys,
            runs: BTreeMap::new(),
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
        self.trace.push(format!("{:>6} {}", self.now, without_random_ids(what)));
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
            self.store.set_now(at);
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
            Ev::Disconnect(a) => self.disconnect(a),
            Ev::Reconnect(a) => self.reconnect(a),
            Ev::DispatcherLinkLost(d) => crate::dispatcher::link_lost(self, d),
            Ev::StoreDown => self.store_down(),
            Ev::StoreUp => self.store_up(),
            Ev::StoreRestartEmpty => self.store_restarts_empty(),
            Ev::StoreFailover => self.store_fails_over(),
            Ev::Replicate => self.replicate(),
            Ev::Forge => self.forge(),
        }
    }
}

/// Key and session ids are random (keys, and the message ids sessions are derived under, come
/// from the system): a line of the trace names none, so that a seed's trace is the same every
/// time. The agent's answers name them in their text (a refusal of a session it does not hold),
/// which a submission may tell its user: there each becomes `<id>`.
fn without_random_ids(line: String) -> String {
    const ID_DIGITS: usize = 16;
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if line.split(|c: char| !is_hex(c)).all(|run| run.len() < ID_DIGITS) {
        return line;
    }
    let mut out = String::with_capacity(line.len());
    let mut run = String::new();
    for c in line.chars().chain(std::iter::once('\n')) {
        if is_hex(c) {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() >= ID_DIGITS { "<id>" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}
