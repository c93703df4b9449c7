//! Deterministic simulation of Cuttle: many dispatchers, agents and pools over a simulated
//! broker (redelivery, delivery limits, loss, duplication, reordering, delay, connection loss),
//! a simulated ticket store (latency, outage, restart empty, failover losing recent writes) and
//! clocks with skew; agents crash and restart, users interrupt and cancel, an attacker publishes
//! unsigned and misaddressed commands. One seed decides everything, so a failing seed replays
//! exactly. The agents serve each delivery with contracts' agent flow
//! ([`contracts::agent::flow`], the code `worker-agent` runs) over the real in-memory
//! [`contracts::store::memory::MemoryStore`], the dispatchers with contracts' real submission machine
//! ([`contracts::submission`]); the invariants are checked at every step.
#![forbid(unsafe_code)]

pub mod agent;
pub mod broker;
pub mod dispatcher;
pub mod faults;
pub mod oracle;
pub mod store;
pub mod world;

use faults::Exclude;
use world::{Counts, World};

/// Trace lines shown for a failing seed.
pub const SHORT_TRACE: usize = 40;

/// What a run of many seeds found.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub counts: Counts,
    pub violations: u64,
    /// FNV-1a over every trace line of every seed, in order.
    pub trace_digest: u64,
    /// The first seed with a violation: its violations and the end of its trace.
    pub failure: Option<Failure>,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Simulates one seed to its end.
pub fn simulate(seed: u64, exclude: &Exclude) -> World {
    let mut world = World::new(seed, exclude);
    world.run();
    world
}

/// Simulates `count` seeds from `first`, stopping at the first one with a violation.
pub fn run(first: u64, count: u64, exclude: &Exclude) -> Summary {
    let mut summary = Summary { trace_digest: 0xcbf2_9ce4_8422_2325, ..Summary::default() };
    for seed in first..first.saturating_add(count) {
        let world = simulate(seed, exclude);
        summary.seeds += 1;
        for line in &world.trace {
            summary.trace_digest = fnv(summary.trace_digest, line.as_bytes());
            summary.trace_digest = fnv(summary.trace_digest, b"\n");
        }
        let c = world.counts;
        let total = &mut summary.counts;
        total.scripts += c.scripts;
        total.dropped += c.dropped;
        total.duplicated += c.duplicated;
        total.reordered += c.reordered;
        total.crashes += c.crashes;
        total.store_losses += c.store_losses;
        if !world.violations.is_empty() {
            summary.violations += world.violations.len() as u64;
            let start = world.trace.len().saturating_sub(SHORT_TRACE);
            summary.failure =
                Some(Failure { seed, violations: world.violations.clone(), trace: world.trace[start..].to_vec() });
            break;
        }
    }
    summary
}

impl Summary {
    /// The one-line JSON report.
    pub fn json(&self) -> String {
        let c = &self.counts;
        format!(
            "{{\"seeds\":{},\"scripts\":{},\"dropped\":{},\"duplicated\":{},\"reordered\":{},\"crashes\":{},\"store_losses\":{},\"violations\":{},\"trace_digest\":\"{:016x}\"}}",
            self.seeds, c.scripts, c.dropped, c.duplicated, c.reordered, c.crashes, c.store_losses, self.violations, self.trace_digest
        )
    }
}
