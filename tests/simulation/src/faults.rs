//! The faults of a world: their rates, drawn from its seed, and what each does when it strikes.
//! Agents crash (even between a claim and its ack) and restart with their memory lost and the
//! store kept; they lose their broker connection; the store goes down, restarts empty or fails
//! over to a replica that lacks the latest writes; an attacker publishes forged commands.

use crate::agent::{self, SimEnv};
use crate::world::World;
use contracts::agent::flow::environment::Memory;
use contracts::agent::flow::script::recover_lost_runs;
use contracts::entropy::Seeded;
use contracts::store::TicketStore;
use contracts::trust::session::{self, Offer};
use contracts::wire::envelope::Request;
use contracts::wire::messages::{ScriptSpec, StartScriptV2};
use contracts::wire::ticket::Ticket;

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

impl Faults {
    /// The rates of a world, drawn from `rng`.
    pub fn draw(rng: &mut fastrand::Rng, exclude: &Exclude) -> Faults {
        let store_failover = rng.f64() < 0.25 && !exclude.failover;
        Faults {
            reply_loss: rng.f64() * 0.15,
            duplicate: rng.f64() * 0.15,
            long_delay: rng.f64() * 0.1,
            ack_lost: rng.f64() * 0.1,
            crash_after_claim: rng.f64() * 0.05,
            store_failover,
            // A store that may fail over loses recent writes: claims must reach a replica first.
            claim_replicas: u32::from(store_failover),
        }
    }
}

impl World {
    pub fn crash(&mut self, a: usize) {
        if !self.agents[a].alive {
            return;
        }
        self.counts.crashes += 1;
        let seed = self.rng.u64(..);
        let keys = agent::keys(&self.agent_key, &self.trusted, seed);
        let agent = &mut self.agents[a];
        agent.alive = false;
        // Its scripts die with it; their records stay until their leases run out. What its flow
        // remembered and the sessions it agreed are lost.
        agent.runs.clear();
        agent.memory = Memory::default();
        agent.keys = keys;
        let id = agent.id.clone();
        self.log(format!("{id} crashes"));
        let back = self.now + self.rng.u64(500..6_000);
        self.schedule(back, crate::world::Ev::Restart(a));
    }

    /// A new process: new owner id, no memory; recovers the runs of the one before.
    pub fn restart(&mut self, a: usize) {
        let agent = &mut self.agents[a];
        agent.alive = true;
        agent.connected = true;
        agent.instance += 1;
        let (id, owner) = (agent.id.clone(), agent.owner());
        agent.settings.owner = owner.clone();
        self.log(format!("{id} restarts as {owner}"));
        if !self.store.is_down() {
            let now = self.agent_now(a);
            let epoch = agent::ready(self.store.epoch(now)).expect("store up");
            self.agents[a].memory.set_epoch(epoch);
            let recovered = agent::ready(recover_lost_runs(&mut SimEnv::new(self, a, None)));
            recovered.expect("store up");
        }
        self.pump_agent(a);
    }

    pub fn disconnect(&mut self, a: usize) {
        if self.agents[a].connected && self.agents[a].alive {
            self.agents[a].connected = false;
            self.log(format!("{} loses its broker connection", self.agents[a].id));
            let back = self.now + self.rng.u64(200..5_000);
            self.schedule(back, crate::world::Ev::Reconnect(a));
        }
    }

    pub fn reconnect(&mut self, a: usize) {
        self.agents[a].connected = true;
        self.log(format!("{} reconnects", self.agents[a].id));
        self.pump_agent(a);
    }

    pub fn store_down(&mut self) {
        self.store.set_down(true);
        self.log("store down".into());
        let back = self.now + self.rng.u64(200..4_000);
        self.schedule(back, crate::world::Ev::StoreUp);
    }

    pub fn store_up(&mut self) {
        self.store.set_down(false);
        self.log("store up".into());
    }

    pub fn store_restarts_empty(&mut self) {
        self.counts.store_losses += 1;
        self.log("store restarts empty".into());
        self.store.restart_empty();
    }

    pub fn store_fails_over(&mut self) {
        self.counts.store_losses += 1;
        self.log("store fails over, losing writes since the last replication".into());
        self.store.fail_over();
    }

    pub fn replicate(&mut self) {
        self.store.replicate();
        let next = self.now + self.rng.u64(100..1_000);
        self.schedule(next, crate::world::Ev::Replicate);
    }

    /// The attacker: an unsigned start, one signed by an untrusted key, one MAC'd in a session
    /// no agent agreed, or a genuine signed command copied to another agent's queue.
    pub fn forge(&mut self) {
        let queue = self.rng.usize(0..self.queues.len());
        let target = self.queues[queue].name.clone();
        let ticket = Ticket::parse(&format!("forged-{}-{}", self.seed, self.next_msg)).expect("ticket");
        let spec = ScriptSpec { script: "rm -rf /".into(), ..Default::default() };
        let start =
            Request::StartScriptV2(StartScriptV2 { ticket, spec, wait_for_output: None, first_issued_at: None });
        let now = self.now;
        let forgery = self.rng.u8(0..4);
        let target = if forgery == 3 { "someone-else".to_owned() } else { target };
        let (_, bytes) = start.encode(&target, now, Some(now + 60_000), &mut self.entropy).expect("encodes");
        let seal = match forgery {
            0 => None,
            1 => Some(self.attacker.seal_command(&bytes)),
            // MAC'd in a session no agent agreed (its maker knows its key), in the real key's name.
            2 => {
                let offer = Offer::new(&mut self.entropy).expect("random bytes");
                let mut entropy = Seeded::new(self.rng.u64(..));
                let (dispatcher, agent) = (self.key.id(), self.agent_key.id());
                let made_up = session::accept("made-up", offer.share(), dispatcher, agent, &mut entropy);
                Some(made_up.expect("a session").1.seal_command(&bytes))
            }
            // Signed by the real key, but for another agent than the queue's.
            _ => Some(self.key.seal_command(&bytes)),
        };
        self.log(format!("attacker publishes a start to {}", self.queues[queue].name));
        self.publish(queue, bytes, seal, None, now + 60_000, "forged start".into(), true);
    }
}
