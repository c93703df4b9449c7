//! Connecting to the outside: the broker ([`broker`]) and the ticket store or the service's
//! journal ([`store`]), with the TLS settings both take ([`tls`]). Both binaries connect only
//! through here, so that a way of reaching them (a proxy, say) is added in one place.
//!
//! The submodules depend one way: [`broker`] and [`store`] use [`tls`]; nothing here uses its
//! parent.

pub mod broker;
pub mod store;
pub mod tls;
