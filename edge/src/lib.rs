//! How Cuttle touches the outside, shared by both binaries: `contracts` is the protocol, with no
//! file, network, randomness or clock of its own; this crate is where those come from.
//!
//! # Layout
//! - [`connect`]: every connection to the broker and to the ticket store (and the service's
//!   journal), TLS included: the binaries connect only through it.
//! - [`keys`]: key files (the agent's and the dispatcher's secret key, trusted-keys and
//!   known-agents files), read and written; their formats are `contracts::trust`'s.
#![forbid(unsafe_code)]

pub mod connect;
pub mod keys;
