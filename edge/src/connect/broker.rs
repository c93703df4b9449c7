//! Connecting to the broker: one node of the cluster `CUTTLE_AMQP_URL` lists, with a short
//! heartbeat, TLS as configured ([`super::tls`]), and EXTERNAL authentication when a client
//! certificate is presented; straight, through an HTTP proxy's tunnel ([`super::proxy`]), or
//! over a WebSocket for a `wss://` URL ([`super::websocket`]). Which node to try is
//! `contracts::wire::endpoints`' decision; the start of the rotation is drawn here ([`endpoints`]).

use super::proxy::{Proxy, ProxyError, ProxySettings};
use super::tls::{amqp_url_with_auth, TlsMaterial};
use super::websocket::WebBroker;
use async_compat::Compat;
use contracts::wire::endpoints::{AmqpEndpoints, EndpointsError};
use lapin::tcp::AsyncTcpStream;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use std::time::Duration;
use tokio::net::TcpStream;

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
/// unless the URL sets one ([`amqp_url_with_heartbeat`]), `tls` for `amqps://` and `wss://` URLs,
/// EXTERNAL authentication when `tls` presents a client certificate and an `amqps://` URL names
/// no mechanism, through the proxy `proxy` gives for the URL's host, if any. A proxy's refusal
/// is a [`ProxyError`] inside the error's `io::Error` ([`ProxyError::of`]).
pub async fn connect(url: &str, name: &str, tls: &TlsMaterial, proxy: &ProxySettings) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime()?;
    // The connections below are made on this runtime: lapin runs its connector on a thread of
    // its own.
    let handle = tokio::runtime::Handle::current();
    if let Some(web) = WebBroker::parse(url).map_err(invalid)? {
        let uri = parse_uri(&amqp_url_with_heartbeat(&web.amqp_url))?;
        let (tls, via) = (tls.clone(), proxy.for_web(&web.host).cloned());
        let open = async move |_: AMQPUri, _| {
            let (web, tls, via) = (web.clone(), tls.clone(), via.clone());
            Ok(opened_on(&handle, async move { super::websocket::open(&web, &tls, via.as_ref()).await }).await?)
        };
        return Connection::connector(uri, runtime, open, properties).await;
    }
    let url = amqp_url_with_auth(&amqp_url_with_heartbeat(url), tls.client.is_some());
    let uri = parse_uri(&url)?;
    let Some(proxy) = proxy.for_broker(&uri.authority.host).cloned() else {
        return Connection::connect_with_config(&url, properties, tls.amqp_config(), runtime).await;
    };
    let config = tls.amqp_config();
    let open = async move |uri: AMQPUri, _| {
        let (host, port, proxy) = (uri.authority.host.clone(), uri.authority.port, proxy.clone());
        let stream =
            opened_on(&handle, async move { proxy.tunnel(&host, port).await.map_err(ProxyError::into_io) }).await?;
        // TLS runs inside the tunnel, end to end with the broker.
        Ok(match uri.scheme {
            AMQPScheme::AMQP => stream,
            AMQPScheme::AMQPS => stream.into_tls(&uri.authority.host, config.as_ref()).await?,
        })
    };
    Connection::connector(uri, runtime, open, properties).await
}

/// The stream `open` makes, opened on the runtime `handle` (lapin runs a connector on a thread
/// of its own, outside any runtime) and handed to lapin as a plain TCP stream.
async fn opened_on(
    handle: &tokio::runtime::Handle,
    open: impl std::future::Future<Output = std::io::Result<TcpStream>> + Send + 'static,
) -> std::io::Result<AsyncTcpStream<Compat<TcpStream>>> {
    let stream = handle.spawn(open).await.map_err(std::io::Error::other)??;
    Ok(AsyncTcpStream::Plain(Compat::new(stream)))
}

fn parse_uri(url: &str) -> lapin::Result<AMQPUri> {
    url.parse::<AMQPUri>().map_err(|reason| invalid(format!("bad AMQP URL: {reason}")))
}

fn invalid(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> lapin::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error).into()
}

/// Where a connection to the broker node at `url` is dialled: the host and port (the relay's,
/// for a `wss://` URL) and the proxy in the way, if any; `None` for a URL that cannot be used.
fn route(url: &str, proxy: &ProxySettings) -> Option<(String, u16, Option<Proxy>)> {
    match WebBroker::parse(url) {
        Ok(Some(web)) => {
            let via = proxy.for_web(&web.host).cloned();
            Some((web.host, web.port, via))
        }
        Ok(None) => {
            let uri = url.parse::<AMQPUri>().ok()?;
            let via = proxy.for_broker(&uri.authority.host).cloned();
            Some((uri.authority.host, uri.authority.port, via))
        }
        Err(_) => None,
    }
}

/// Why a connect to a broker node got no answer in time ([`why_no_answer`]).
#[derive(Debug)]
pub enum Silence {
    /// The broker's address takes connections (through the proxy, if one is in the way), and the
    /// broker said nothing ([`SILENT_BROKER`]).
    Broker,
    /// Nothing came through the proxy in the way, not even its tunnel.
    Proxy(Proxy),
    /// The broker's address does not answer.
    Unreachable,
}

impl Silence {
    /// Why the connect to `url` got no answer, told without probing: the proxy in the way
    /// (named in the error) if there is one, else the broker's address.
    pub fn unprobed(url: &str, proxy: &ProxySettings) -> Silence {
        route(url, proxy).and_then(|(_, _, via)| via).map_or(Silence::Unreachable, Silence::Proxy)
    }
}

/// Why the connect to the broker node at `url` (through `proxy`'s settings) got no answer
/// within `timeout`: the node's address probed again ([`accepts_tcp`]).
pub async fn why_no_answer(url: &str, proxy: &ProxySettings, timeout: Duration) -> Silence {
    if accepts_tcp(url, proxy, timeout).await {
        return Silence::Broker;
    }
    Silence::unprobed(url, proxy)
}

/// The longest a probe of [`accepts_tcp`] waits: a TCP handshake (or a proxy's CONNECT) takes
/// a round trip or two, and the probe comes after a whole connect timeout already spent.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the broker's address accepts a TCP connection now (through the proxy, if one is in
/// the way; the relay's, for a `wss://` URL), within `timeout` and at most a second: told apart
/// from a broker that cannot be reached at all when its AMQP handshake timed out.
async fn accepts_tcp(amqp_url: &str, proxy: &ProxySettings, timeout: Duration) -> bool {
    let timeout = timeout.min(PROBE_TIMEOUT);
    let Some((host, port, via)) = route(amqp_url, proxy) else { return false };
    let reach = async {
        match via {
            Some(proxy) => proxy.tunnel(&host, port).await.is_ok(),
            None => TcpStream::connect((host.as_str(), port)).await.is_ok(),
        }
    };
    tokio::time::timeout(timeout, reach).await.unwrap_or(false)
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
