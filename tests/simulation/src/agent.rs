//! The simulated agents: each delivery is served by contracts' agent flow
//! ([`contracts::agent::flow`]), the very code `worker-agent` runs, with the world as its
//! environment ([`SimEnv`]): the simulated store, the agent's skewed clock, simulated scripts
//! (a run steps through its lines on the world's events), a long poll answered by holding the
//! reply, and the crash after a claim as the flow's fault hook. What the flow notes is traced,
//! and what the scripts do is told to the oracle.

use crate::broker::Msg;
use crate::store::SimStore;
use crate::world::{Ev, World, CLOCK_ORIGIN_MS, LEASE_TTL, RECORD_TTL, TOMBSTONE_TTL_MS};
use contracts::agent::flow::environment::{Delivery, Environment, Launch, Memory, Note, Served, Settings, Step};
use contracts::agent::flow::serve::serve;
use contracts::agent::keys::AgentKeys;
use contracts::entropy::Seeded;
use contracts::store::record::TicketRecord;
use contracts::store::{Release, TicketKeys, TicketStore};
use contracts::trust::files::TrustedKeys;
use contracts::trust::keys::SecretKey;
use contracts::trust::sessions::Declined;
use contracts::trust::verify::Refusal;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::exit_code;
use contracts::wire::messages::{ScriptSpec, SERVICE_CAPABILITIES, SERVICE_SCRIPT_V2};
use contracts::wire::status::{LogLine, LogStream};
use contracts::wire::ticket::Ticket;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// Runs a future of the flow over the simulated world, which is always ready: the flow waits
/// only on the environment, and the simulated one answers at once.
pub fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => unreachable!("the simulated world answers every wait at once"),
    }
}

/// A run of a script on an agent.
pub struct Run {
    pub ticket: String,
    pub keys: TicketKeys,
    pub record: TicketRecord,
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
    /// What the flow knows of this process (its owner id changes with each restart).
    pub settings: Settings,
    /// What the flow remembers between requests (lost when it crashes).
    pub memory: Memory,
    /// Its keys and the sessions dispatchers agreed with it (lost when it crashes).
    pub keys: AgentKeys,
    pub runs: BTreeMap<String, Run>,
}

impl Agent {
    pub fn owner(&self) -> String {
        format!("{}/{}", self.id, self.instance)
    }
}

/// What the flow knows of a simulated agent process.
pub fn settings(id: &str, pool: Option<&str>, owner: String, claim_replicas: u32) -> Settings {
    Settings {
        agent_id: id.to_owned(),
        pool: pool.map(str::to_owned),
        owner,
        legacy: false,
        services: vec![SERVICE_CAPABILITIES.into(), SERVICE_SCRIPT_V2.into()],
        version: "sim".into(),
        claim_replicas,
        record_ttl: RECORD_TTL,
        lease_ttl: LEASE_TTL,
        tombstone_ttl: Duration::from_millis(TOMBSTONE_TTL_MS),
        run_as: Default::default(),
        limits: Default::default(),
        labels: Default::default(),
    }
}

/// A process's keys: the agents' key, the dispatchers' it trusts, no session yet.
pub fn keys(key: &SecretKey, trusted: &TrustedKeys, seed: u64) -> AgentKeys {
    AgentKeys::new(Some(key.clone()), trusted.clone(), false, Box::new(Seeded::new(seed)))
}

/// The world as the flow's environment, for one delivery to agent `a` (or none: its recovery
/// when it restarts).
pub struct SimEnv<'w, 'm> {
    pub world: &'w mut World,
    pub a: usize,
    pub msg: Option<&'m Msg>,
    /// The agent's clock when the delivery arrived: the world does not move while it is served.
    pub now: u64,
    /// How long the reply is held (a long poll with nothing new): the flow's waiting clock.
    pub held: u64,
}

impl<'w, 'm> SimEnv<'w, 'm> {
    pub fn new(world: &'w mut World, a: usize, msg: Option<&'m Msg>) -> SimEnv<'w, 'm> {
        let now = world.agent_now(a);
        SimEnv { world, a, msg, now, held: 0 }
    }

    /// A line of the trace about this agent.
    fn trace(&mut self, what: String) {
        let line = format!("{} {what}", self.world.agents[self.a].id);
        self.world.log(line);
    }

    /// A line of the trace about this agent refusing the delivery, and why.
    fn refuses(&mut self, why: &dyn std::fmt::Display) {
        let msg = self.msg.map(|msg| format!("{msg:?}")).unwrap_or_default();
        self.trace(format!("refuses {msg}: {why}"));
    }
}

/// A refusal as the trace names it: keys and sessions are random, so without their ids.
fn refusal_reason(refusal: &Refusal) -> String {
    match refusal {
        Refusal::UntrustedKey(_) => "signed by a key this agent does not trust".to_owned(),
        Refusal::BadSignature(_) => "a signature that does not verify".to_owned(),
        Refusal::UnknownSession(_) => "MAC'd in a session this agent does not hold".to_owned(),
        Refusal::BadMac(_) => "a MAC that does not verify".to_owned(),
        other => other.to_string(),
    }
}

impl Environment for SimEnv<'_, '_> {
    type Store = SimStore;
    type Instant = u64;

    fn store(&self) -> &SimStore {
        &self.world.store
    }

    fn settings(&self) -> &Settings {
        &self.world.agents[self.a].settings
    }

    fn memory(&self) -> &Memory {
        &self.world.agents[self.a].memory
    }

    fn keys(&self) -> &AgentKeys {
        &self.world.agents[self.a].keys
    }

    fn now_ms(&self) -> u64 {
        self.now
    }

    fn deadline(&self, wait: Duration) -> u64 {
        self.held + wait.as_millis() as u64
    }

    fn reached(&self, deadline: u64) -> bool {
        self.held >= deadline
    }

    /// Nothing new comes while the world stands still: a long poll holds its reply for the
    /// whole wait, answered with what the store holds when it arrived.
    async fn wait_for_news(&mut self, _ticket_key: &str, _last_seq: u64, deadline: u64, only_fresh: bool) {
        if !only_fresh {
            self.held = self.held.max(deadline);
        }
    }

    async fn admit(&mut self, _starts: bool) -> bool {
        true
    }

    fn launch(&mut self, launch: Launch) {
        let forged = self.msg.is_some_and(|msg| msg.forged);
        self.world.launch(self.a, launch.keys, launch.record, &launch.spec, forged);
    }

    fn cancel_run(&mut self, ticket_key: &str) -> bool {
        let run = self.world.agents[self.a].runs.get_mut(ticket_key);
        run.map(|run| run.cancelled = true).is_some()
    }

    async fn clean(&mut self, _ticket_key: &str) {}

    async fn transfer(&mut self, request: Request) -> Reply {
        Reply::Error(ErrorReply::new(ErrorKind::Unsupported, format!("{:?}", request.kind())))
    }

    fn new_ticket(&mut self) -> Ticket {
        Ticket::parse(&format!("v1-{}", self.msg.map_or(0, |msg| msg.id))).expect("a ticket")
    }

    /// The crash between a claim and its ack.
    fn go_on(&mut self, _step: Step) -> bool {
        if self.world.rng.f64() < self.world.faults.crash_after_claim {
            self.world.crash(self.a);
            return false;
        }
        true
    }

    fn note(&mut self, note: Note<'_>) {
        match note {
            Note::Rejected { error } => self.refuses(error),
            Note::Refused { refusal, .. } => self.refuses(&refusal_reason(refusal)),
            Note::SessionAgreed { .. } => self.trace("agrees a session".into()),
            Note::SessionDeclined { declined, .. } => {
                // As for refusals: the trace names why without the (random) key id.
                let why = match declined {
                    Declined::TooManyOffers(_) => "the key's offers remembered are at the bound".into(),
                    other => other.to_string(),
                };
                self.trace(format!("agrees no session: {why}"));
            }
            Note::EpochChanged { current, .. } => self.trace(format!("sees a new store epoch {}", current.value)),
            Note::StartDecided { ticket, decision } => self.trace(format!("start {ticket}: {decision:?}")),
            Note::CancelStored { ticket, stored, .. } => self.trace(format!("cancel {ticket}: {stored:?}")),
            Note::Completed { ticket } => {
                self.world.log(format!("{ticket} completed: tombstone"));
                self.world.oracle.completed(&ticket.store_key());
            }
            Note::ReportedLost { ticket, .. } => self.trace(format!("reports {ticket} lost")),
            _ => {}
        }
    }
}

impl World {
    pub fn agent_now(&self, agent: usize) -> u64 {
        (self.now + CLOCK_ORIGIN_MS).saturating_add_signed(self.agents[agent].skew)
    }

    /// One delivery to an agent, served by the flow; `true` if it must be redelivered (the ack
    /// was lost, or the agent crashed before acking).
    pub fn deliver(&mut self, a: usize, msg: &Msg) -> bool {
        let delivery = Delivery { body: &msg.bytes, seal: Ok(msg.seal.clone()) };
        let mut env = SimEnv::new(self, a, Some(msg));
        let served = ready(serve(&mut env, delivery));
        let hold = env.held;
        let Served::Answered { reply, answer, .. } = served else {
            // Crashed while handling (after its claim): never acked, no reply.
            return true;
        };
        if let Some((sub, attempt)) = msg.sub {
            if self.rng.f64() < self.faults.reply_loss {
                self.counts.dropped += 1;
                let id = self.agents[a].id.clone();
                self.log(format!("reply of {id} to {msg:?} lost"));
            } else {
                let at = self.now + hold + self.rng.u64(1..50) + self.delay();
                self.schedule(at, Ev::Reply { sub, attempt, msg: msg.id, reply, share: answer.key_share });
            }
        }
        self.rng.f64() < self.faults.ack_lost
    }

    /// Starts the simulated script of `spec` (its plan written in it) on agent `a`.
    fn launch(&mut self, a: usize, keys: TicketKeys, record: TicketRecord, spec: &ScriptSpec, forged: bool) {
        let (lines_total, exit, step_ms) = crate::dispatcher::plan_of(spec);
        let ticket = keys.ticket.clone();
        let raw = record.encode();
        let run = Run {
            ticket: ticket.clone(),
            keys,
            record,
            raw,
            lines_total,
            exit,
            step_ms,
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

    /// One step of a run: the cancel check before the script starts, then one line of output
    /// (or its end), the lease renewed each time, writes repeated while the store is down.
    pub fn run_step(&mut self, a: usize, instance: u32, ticket: &str) {
        if !self.agents[a].alive || self.agents[a].instance != instance {
            return;
        }
        let owner = self.agents[a].owner();
        let down = self.store.is_down();
        let now = self.agent_now(a);
        let Some(run) = self.agents[a].runs.get_mut(ticket) else { return };
        let mut events = Vec::new();
        if !down {
            let renewal = ready(self.store.renew_lease(&run.keys, &owner, LEASE_TTL)).expect("store up");
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
                ready(self.store.append_logs(&run.keys, &run.pending, RECORD_TTL)).expect("store up");
                run.pending.clear();
            }
            if let Some(exit) = run.ended {
                let done = run.record.completed(exit);
                let ended = Release::Ended { lines_written: run.next_seq - 1 };
                let written =
                    ready(self.store.compare_and_set(&run.keys, &run.raw, &done, None, ended)).expect("store up");
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
