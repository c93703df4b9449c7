//! Cuttle's protocol, shared by the dispatcher, the agent and the simulator: the wire, trust,
//! the ticket store's contract and the decisions. No I/O lives here: no file, network,
//! randomness or clock. Randomness comes in as an [`entropy::Entropy`], the time as arguments;
//! the binaries' I/O is theirs and the `edge` crate's.
//!
//! # Layout
//! Layers, each module using only those of the layers before it (none re-exports another's items):
//! `entropy`, `time`, `backoff` < `wire` < `trust` < `receipt` < `store`, `metrics` < `agent`, `submission`.
//!
//! - [`entropy`]: fresh random bytes, as the caller gives them ([`entropy::Entropy`]).
//! - [`time`]: time as the wire writes it (Unix ms) and as people read it; no clock.
//! - [`backoff`]: the pauses between attempts of every retry loop (doubling, capped, jitter or not).
//! - [`wire`]: the envelope and every message, status, ticket, error, name and limit on the wire.
//! - [`trust`]: keys, seals, trust files, the checks of trust, sessions, sealed secrets.
//! - [`receipt`]: run receipts an agent signs, chained per agent id, and their offline check.
//! - [`store`]: the ticket store's contract, its record, the in-memory store, the conformance suite.
//! - [`metrics`]: the metric families both binaries expose.
//! - [`agent`]: the agent's decisions, its keys, and its flow for each delivery.
//! - [`submission`]: the dispatcher's submission as a state machine, with its retries and outcome.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backoff;
pub mod entropy;
pub mod metrics;
pub mod receipt;
pub mod store;
pub mod submission;
pub mod time;
pub mod trust;
pub mod wire;
