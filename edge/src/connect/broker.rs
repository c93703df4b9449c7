//! Connecting to the broker: one node of the cluster `CUTTLE_AMQP_URL` lists, with a short
//! heartbeat, TLS as configured ([`super::tls`]), and EXTERNAL authentication when a client
//! certificate is presented. Which node to try is `contracts::wire::endpoints`' decision; the start of
//! the rotation is drawn here ([`endpoints`]).

use super::tls::{amqp_url_with_auth, TlsMaterial};
use contracts::wire::endpoints::{AmqpEndpoints, EndpointsError};
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

/// What either side reports when the broker accepted a TCP connection but the AMQP handshake got
/// no answer in time: a broker out of file handles accepts sockets and then waits for a handle
/// before it speaks, silently, with no alarm (measured on RabbitMQ 3.10).
pub const SILENT_BROKER: &str = "the broker accepted the connection but did not answer: is it out of file descriptors?";

/// AMQP heartbeat, in seconds, when the URL sets none: a dead connection is noticed within
/// about two of them, not after the broker's default of a minute.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 5;

/// The broker URL with a short heartbeat added unless it sets one itself.
pub fn amqp_url_with_heartbeat(url: &str) -> String {
    let has_heartbeat = url.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("heartbeat=")));
    if has_heartbeat {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={DEFAULT_HEARTBEAT_SECS}")
}

/// The broker nodes of `list` (one URL, or a cluster's separated by commas), starting at a
/// random one so that a fleet spreads over the cluster.
pub fn endpoints(list: &str) -> Result<AmqpEndpoints, EndpointsError> {
    AmqpEndpoints::parse(list, |len| fastrand::usize(..len))
}

/// Connects to the broker node at `url` under the connection name `name`: the heartbeat added
/// unless the URL sets one ([`amqp_url_with_heartbeat`]), `tls` for `amqps://` URLs, and EXTERNAL
/// authentication when `tls` presents a client certificate and the URL names no mechanism.
pub async fn connect(url: &str, name: &str, tls: &TlsMaterial) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let url = amqp_url_with_auth(&amqp_url_with_heartbeat(url), tls.client.is_some());
    Connection::connect_with_config(&url, properties, tls.amqp_config(), lapin::runtime::default_runtime()?).await
}

/// Whether the broker's address accepts a TCP connection now: told apart from a broker that
/// cannot be reached at all when its AMQP handshake timed out.
pub async fn accepts_tcp(amqp_url: &str, timeout: Duration) -> bool {
    let Ok(uri) = amqp_url.parse::<lapin::uri::AMQPUri>() else { return false };
    let address = (uri.authority.host.as_str(), uri.authority.port);
    matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_added_only_when_missing() {
        assert_eq!(amqp_url_with_heartbeat("amqp://h/%2f"), "amqp://h/%2f?heartbeat=5");
        assert_eq!(amqp_url_with_heartbeat("amqp://h/%2f?frame_max=8192"), "amqp://h/%2f?frame_max=8192&heartbeat=5");
        assert_eq!(amqp_url_with_heartbeat("amqp://h/%2f?heartbeat=30"), "amqp://h/%2f?heartbeat=30");
    }

    #[test]
    fn random_starts_spread_over_the_list() {
        let endpoints = endpoints("a,b,c").unwrap();
        assert!(endpoints.urls().iter().any(|url| url == endpoints.current()));
    }
}
