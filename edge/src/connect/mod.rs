//! Connecting to the outside: the broker ([`broker`]) and the ticket store or the service's
//! journal ([`store`]), with the TLS settings both take ([`tls`]). Both binaries connect only
//! through here, so that a way of reaching them is added in one place: the broker through an HTTP
//! proxy ([`proxy`]) or over a WebSocket ([`websocket`]).
//!
//! The submodules depend one way: [`broker`] uses [`proxy`], [`websocket`] and [`tls`];
//! [`websocket`] uses [`proxy`] and [`tls`]; [`store`] uses [`tls`]; nothing here uses its parent.
//!
//! The ticket store and the journal are always dialled directly: Redis's clients (the
//! connection manager, Sentinel, the pool) redial on their own and take no connector of ours,
//! and a relay in between would break the TLS name check. An agent whose network lets out only
//! a proxy keeps its tickets on its own disk (`--store local`).

pub mod broker;
pub mod proxy;
pub mod store;
pub mod tls;
pub mod websocket;
