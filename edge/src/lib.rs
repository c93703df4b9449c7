//! How Cuttle touches the outside, shared by both binaries: `contracts` is the protocol, with no
//! file, network, randomness or clock of its own; this crate is where those come from.
//!
//! # Layout
//! - [`connect`]: every connection to the broker and to the ticket store (and the service's
//!   journal), TLS included: the binaries connect only through it.
//! - [`keys`]: key files (the agent's and the dispatcher's secret key, trusted-keys and
//!   known-agents files), read and written; their formats are `contracts::trust`'s (`keys`, `files`).
//! - [`entropy`]: the operating system's random source, passed into `contracts` wherever a
//!   fresh secret, ticket or message id is made.
//! - [`clock`]: the time an operation took, for the metrics `contracts` defines.
//! - [`args`]: flags both binaries take alike (the proxy's), defined once.
#![forbid(unsafe_code)]

pub mod args;
pub mod clock;
pub mod connect;
pub mod entropy;
pub mod keys;
