//! The simulated broker: per-queue delivery to connected consumers, one message at a time, with
//! loss, duplication, delays that reorder, expiry, redelivery when an ack is lost or a consumer
//! dies before acking, and a delivery limit.

use crate::world::{Ev, World, DELIVERY_LIMIT};
use contracts::trust::seal::Seal;
use std::collections::VecDeque;
use std::sync::Arc;

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

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "msg#{} {}", self.id, self.label)
    }
}

pub struct Queue {
    pub name: String,
    pub ready: VecDeque<Msg>,
    pub consumers: Vec<usize>,
}

impl World {
    /// Publishes a command: it reaches its queue after a delay, maybe twice. Its id.
    #[allow(clippy::too_many_arguments, reason = "a message's every property, as the real broker takes them")]
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

    pub fn arrive(&mut self, msg: Msg) {
        let queue = msg.queue;
        self.queues[queue].ready.push_back(msg);
        self.pump(queue);
    }

    pub fn pump_agent(&mut self, agent: usize) {
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
}
