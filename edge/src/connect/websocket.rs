//! The broker over a WebSocket, for networks that let only HTTPS out (and proxies that look
//! inside it): a `wss://` broker URL names a WebSocket-to-TCP relay beside the broker (such as
//! websockify), and AMQP travels inside the WebSocket's binary messages.
//!
//! `wss://[USER:PASSWORD@]HOST[:PORT][/PATH][?vhost=VHOST&...]`: the relay's host, port (443
//! unless given) and path; the broker's user and password; the virtual host in `vhost` (`/`
//! unless given); any other query parameter (`heartbeat`, `frame_max`, ...) is the AMQP URL's.
//!
//! The broker client connects through a TCP stream of its own making, so the WebSocket is
//! bridged to one ([`open`]): a loopback connection made for this one link, whose far end this
//! module pumps to and from the WebSocket. The bridge accepts only the connection it made itself.

use super::proxy::{Proxy, ProxyError};
use super::tls::TlsMaterial;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The most read from the broker client before it is sent as one WebSocket message.
const CHUNK: usize = 64 * 1024;

/// A `wss://` broker URL, taken apart.
#[derive(Clone, PartialEq, Eq)]
pub struct WebBroker {
    /// The relay's host and port.
    pub host: String,
    pub port: u16,
    /// The relay's path (`/` unless given).
    pub path: String,
    /// The AMQP URL the broker client is given: the broker's credentials, virtual host and
    /// parameters (its host is the relay's, never dialled: the bridge is).
    pub amqp_url: String,
}

impl std::fmt::Debug for WebBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password the AMQP URL carries.
        write!(f, "WebBroker(wss://{}:{}{})", self.host, self.port, self.path)
    }
}

/// Why a `wss://` URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("bad wss:// broker URL: {0} (wss://[USER:PASSWORD@]HOST[:PORT][/PATH][?vhost=VHOST])")]
pub struct WebUrlError(&'static str);

impl WebBroker {
    /// The URL taken apart when it is a `wss://` URL; `Ok(None)` for any other scheme.
    pub fn parse(url: &str) -> Result<Option<WebBroker>, WebUrlError> {
        let Some(rest) = url.strip_prefix("wss://").or_else(|| url.strip_prefix("WSS://")) else {
            return Ok(None);
        };
        let (before_query, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
        let (authority, path) = before_query.find('/').map_or((before_query, "/"), |at| before_query.split_at(at));
        let (userinfo, hostport) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => (hostport, None),
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(WebUrlError("no host"));
        }
        let port = match port {
            Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or(WebUrlError("bad port"))?,
            None => 443,
        };
        let mut vhost = "%2f".to_owned();
        let mut parameters = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("vhost", value)) => vhost = value.replace('/', "%2f"),
                _ => parameters.push(pair),
            }
        }
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let amqp_host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        let query = if parameters.is_empty() { String::new() } else { format!("?{}", parameters.join("&")) };
        let amqp_url = format!("amqp://{userinfo}{amqp_host}:{port}/{vhost}{query}");
        Ok(Some(WebBroker { host: host.to_owned(), port, path: path.to_owned(), amqp_url }))
    }

    /// `wss://host:port/path`, without credentials: for logs and errors.
    pub fn relay(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("wss://{host}:{}{}", self.port, self.path)
    }
}

/// Opens the WebSocket to `broker`'s relay (through `proxy`'s tunnel when given; TLS with the
/// system's roots and `tls`' CA) and returns the near end of a loopback connection bridged to it.
pub async fn open(broker: &WebBroker, tls: &TlsMaterial, proxy: Option<&Proxy>) -> io::Result<TcpStream> {
    let tcp = match proxy {
        Some(proxy) => proxy.tunnel(&broker.host, broker.port).await.map_err(ProxyError::into_io)?,
        None => TcpStream::connect((broker.host.as_str(), broker.port)).await?,
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.rustls_client_config()?));
    let name = rustls_pki_types::ServerName::try_from(broker.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let secured = connector.connect(name, tcp).await?;
    let mut request = broker.relay().into_client_request().map_err(io::Error::other)?;
    // websockify and its peers relay raw bytes in binary messages under this subprotocol.
    request.headers_mut().insert("Sec-WebSocket-Protocol", "binary".parse().expect("a valid header value"));
    let (socket, _) = tokio_tungstenite::client_async(request, secured).await.map_err(|error| {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the WebSocket relay {} refused: {error}", broker.relay()),
        )
    })?;
    let (near, far) = loopback_pair().await?;
    tokio::spawn(pump(socket, far));
    Ok(near)
}

/// Two ends of one loopback TCP connection; only the connection made here is accepted (another
/// local process connecting first to the listener is turned away).
async fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let near = TcpStream::connect(listener.local_addr()?).await?;
    let ours = near.local_addr()?;
    for _ in 0..16 {
        let (far, peer) = listener.accept().await?;
        if peer == ours {
            let _ = near.set_nodelay(true);
            let _ = far.set_nodelay(true);
            return Ok((near, far));
        }
        tracing::warn!(%peer, "a stranger connected to the WebSocket bridge's loopback listener; turned away");
    }
    Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the WebSocket bridge's loopback listener was flooded"))
}

/// Carries bytes both ways between the loopback connection and the WebSocket until either
/// ends; then both are closed, and the broker client sees its connection lost.
async fn pump<S>(socket: tokio_tungstenite::WebSocketStream<S>, far: TcpStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_relay, mut from_relay) = socket.split();
    let (mut from_client, mut to_client) = far.into_split();
    let upstream = async {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let read = from_client.read(&mut buffer).await?;
            if read == 0 {
                let _ = to_relay.send(Message::Close(None)).await;
                return Ok::<_, io::Error>(());
            }
            to_relay.send(Message::binary(buffer[..read].to_vec())).await.map_err(io::Error::other)?;
        }
    };
    let downstream = async {
        while let Some(message) = from_relay.next().await {
            match message.map_err(io::Error::other)? {
                Message::Binary(bytes) => to_client.write_all(&bytes).await?,
                Message::Close(_) => break,
                // Pings are answered by the WebSocket layer; text is no part of a byte stream.
                Message::Text(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "text from the relay")),
                _ => {}
            }
        }
        Ok::<_, io::Error>(())
    };
    let ended = tokio::select! {
        ended = upstream => ended,
        ended = downstream => ended,
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "the WebSocket bridge ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wss_url_gives_the_relay_and_the_amqp_url() {
        let broker = WebBroker::parse("wss://u:p@relay.example/amqp?vhost=prod&heartbeat=10").unwrap().unwrap();
        assert_eq!((broker.host.as_str(), broker.port, broker.path.as_str()), ("relay.example", 443, "/amqp"));
        assert_eq!(broker.amqp_url, "amqp://u:p@relay.example:443/prod?heartbeat=10");
        assert_eq!(broker.relay(), "wss://relay.example:443/amqp");
        assert!(!format!("{broker:?}").contains(":p@"));
        let broker = WebBroker::parse("wss://127.0.0.1:8443").unwrap().unwrap();
        assert_eq!((broker.port, broker.path.as_str()), (8443, "/"));
        assert_eq!(broker.amqp_url, "amqp://127.0.0.1:8443/%2f");
        let broker = WebBroker::parse("wss://[::1]:9/x?vhost=/").unwrap().unwrap();
        assert_eq!((broker.host.as_str(), broker.amqp_url.as_str()), ("::1", "amqp://[::1]:9/%2f"));
        assert!(WebBroker::parse("amqp://h/%2f").unwrap().is_none());
        assert!(WebBroker::parse("wss://:443/").is_err());
        assert!(WebBroker::parse("wss://h:0/").is_err());
    }

    #[tokio::test]
    async fn the_bridge_is_one_loopback_connection() {
        let (mut near, mut far) = loopback_pair().await.unwrap();
        assert_eq!(near.local_addr().unwrap(), far.peer_addr().unwrap());
        near.write_all(b"AMQP").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"AMQP");
    }
}
