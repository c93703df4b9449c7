//! Cuttle's protocol, shared by the dispatcher, the agent and the simulator: the wire, trust,
//! the ticket store's contract and the decisions. No I/O lives here: no file, network,
//! randomness or clock. Randomness comes in as an [`entropy::Entropy`], the time as arguments;
//! the binaries' I/O is theirs and the `edge` crate's.
//!
//! # Layout
//! Each module uses only those in the lines above it (and none of its parents re-exports
//! anything): `entropy` and `time` < `wire` < `trust` < `store` and `metrics` < `agent` and
//! `submission`.
//!
//! - [`entropy`]: where fresh random bytes come from, as the caller gives them.
//! - [`time`]: how time is written, on the wire (Unix ms) and for people; no clock.
//! - [`wire`]: what travels and where: the envelope and its codec, the messages of every service,
//!   statuses, tickets, error replies, exit codes, file transfer, presence announcements, labels,
//!   broker names and limits, the broker nodes of a cluster.
//! - [`trust`]: Ed25519 keys, seals, the trusted-keys and known-agents formats, the checks of
//!   commands, answers and announcements, sessions (a MAC per message), sealed secrets.
//! - [`store`]: the [`store::TicketStore`] trait and its atomicity contract, the record it keeps
//!   per ticket, the in-memory store and the conformance suite every store passes.
//! - [`metrics`]: the metric families both binaries expose.
//! - [`agent`]: the agent's decisions as plain functions; [`agent::flow`]: the order it takes
//!   them in for each delivery, over an environment the agent and the simulator each provide;
//!   [`agent::keys`]: its keys and sessions.
//! - [`submission`]: the dispatcher's submission as a state machine fed replies, failures,
//!   interrupts and the time, with its retries, negotiation, log follower, requests and outcome.
#![forbid(unsafe_code)]

pub mod agent;
pub mod entropy;
pub mod metrics;
pub mod store;
pub mod submission;
pub mod time;
pub mod trust;
pub mod wire;
