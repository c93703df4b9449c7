//! HTTP proxies: a connection that may not go straight to its destination goes through an HTTP
//! proxy's tunnel (`CONNECT host:port`), with Basic authentication when the proxy asks for it.
//! Whatever the connection carries (AMQP, TLS, a WebSocket) runs end to end inside the tunnel:
//! the proxy sees the destination's name and port and nothing else.
//!
//! Which proxy, if any ([`ProxySettings::resolve`]): `--proxy URL` (or `CUTTLE_PROXY`) for every
//! destination; otherwise the conventional variables, `ALL_PROXY` (`all_proxy`) for the broker and
//! `HTTPS_PROXY` (`https_proxy`, then `ALL_PROXY`) for a `wss://` broker URL; in every case except
//! the destinations `NO_PROXY` (`no_proxy`) names ([`NoProxy`]). A proxy's password comes from the
//! URL in the environment or from a file (`--proxy-credentials FILE`), never from the command
//! line (where every user of the machine can read it), and is never shown: a [`Proxy`] prints as
//! `http://host:port`.

use base64::Engine;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// The longest answer head read from a proxy: a CONNECT's answer is a status line and a few
/// headers; more is not a proxy speaking HTTP.
const MAX_ANSWER_HEAD: usize = 16 * 1024;

/// One HTTP proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

/// A user and password for a proxy's Basic authentication.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: String,
    password: Zeroizing<String>,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials: this is what logs and errors show.
        write!(f, "http://{}", authority(&self.host, self.port))
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self}, credentials: {})", self.credentials.is_some())
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why the proxy settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("{source_name}: {reason} (a proxy URL is http://HOST:PORT)")]
    BadUrl { source_name: &'static str, reason: String },
    #[error("{source_name}: Cuttle tunnels through HTTP proxies only (http://HOST:PORT), not {scheme}://")]
    UnsupportedScheme { source_name: &'static str, scheme: String },
    #[error("--proxy must not carry a password: the command line is readable by every user of the machine; put `USER:PASSWORD` in a file given by --proxy-credentials, or the URL in CUTTLE_PROXY")]
    CredentialsOnCommandLine,
    #[error("--proxy-credentials {}: {reason}", path.display())]
    CredentialsFile { path: std::path::PathBuf, reason: String },
    #[error("--proxy-credentials is given but no proxy is: set --proxy, CUTTLE_PROXY or ALL_PROXY")]
    CredentialsWithoutProxy,
}

/// The proxies in effect: which one, if any, a connection to a destination goes through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// For the broker (`amqp://`, `amqps://`).
    broker: Option<Proxy>,
    /// For a `wss://` broker URL.
    web: Option<Proxy>,
    no_proxy: NoProxy,
}

/// What the proxy settings are read from; `env` answers an environment variable's value.
pub struct ProxySources<'a> {
    /// `--proxy`, as given on the command line or by `CUTTLE_PROXY`.
    pub flag: Option<&'a str>,
    /// `--proxy-credentials`.
    pub credentials_file: Option<&'a Path>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl ProxySettings {
    /// No proxy: every connection goes straight to its destination.
    pub fn direct() -> ProxySettings {
        ProxySettings::default()
    }

    /// Every destination but those `no_proxy` names goes through `proxy`.
    pub fn through(proxy: Proxy, no_proxy: NoProxy) -> ProxySettings {
        ProxySettings { broker: Some(proxy.clone()), web: Some(proxy), no_proxy }
    }

    /// The settings `sources` give (the module's documentation says in which order).
    pub fn resolve(sources: &ProxySources<'_>) -> Result<ProxySettings, ProxyConfigError> {
        let env = |name: &str| (sources.env)(name).filter(|value| !value.trim().is_empty());
        let either = |upper: &'static str, lower: &'static str| {
            env(upper).map(|v| (upper, v)).or_else(|| env(lower).map(|v| (lower, v)))
        };
        let (mut broker, mut web) = match sources.flag.filter(|flag| !flag.trim().is_empty()) {
            Some(flag) => {
                // CUTTLE_PROXY reaches here as the flag's value; only a value typed on the
                // command line is refused a password.
                let from_env = env("CUTTLE_PROXY").is_some_and(|value| value == flag);
                let source_name = if from_env { "CUTTLE_PROXY" } else { "--proxy" };
                let proxy = Proxy::parse(source_name, flag)?;
                if !from_env && proxy.credentials.is_some() {
                    return Err(ProxyConfigError::CredentialsOnCommandLine);
                }
                (Some(proxy.clone()), Some(proxy))
            }
            None => {
                let all = either("ALL_PROXY", "all_proxy").map(|(name, v)| Proxy::parse(name, &v)).transpose()?;
                let https = either("HTTPS_PROXY", "https_proxy").map(|(name, v)| Proxy::parse(name, &v)).transpose()?;
                (all.clone(), https.or(all))
            }
        };
        if let Some(path) = sources.credentials_file {
            let credentials = Credentials::read(path)?;
            if broker.is_none() && web.is_none() {
                return Err(ProxyConfigError::CredentialsWithoutProxy);
            }
            for proxy in [&mut broker, &mut web].into_iter().flatten() {
                proxy.credentials = Some(credentials.clone());
            }
        }
        let no_proxy = either("NO_PROXY", "no_proxy").map(|(_, v)| NoProxy::parse(&v)).unwrap_or_default();
        Ok(ProxySettings { broker, web, no_proxy })
    }

    /// The proxy a connection to the broker at `host` goes through, if any.
    pub fn for_broker(&self, host: &str) -> Option<&Proxy> {
        self.broker.as_ref().filter(|_| !self.no_proxy.names(host))
    }

    /// The proxy a connection to the WebSocket relay at `host` goes through, if any.
    pub fn for_web(&self, host: &str) -> Option<&Proxy> {
        self.web.as_ref().filter(|_| !self.no_proxy.names(host))
    }

    /// Whether any proxy is set.
    pub fn is_set(&self) -> bool {
        self.broker.is_some() || self.web.is_some()
    }
}

impl Proxy {
    /// Parses a proxy URL, `http://[USER:PASSWORD@]HOST:PORT` (the scheme may be left out; the
    /// port defaults to 80 as for any HTTP URL, though proxies seldom listen there).
    pub fn parse(source_name: &'static str, url: &str) -> Result<Proxy, ProxyConfigError> {
        let bad = |reason: &str| ProxyConfigError::BadUrl { source_name, reason: reason.to_owned() };
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(ProxyConfigError::UnsupportedScheme { source_name, scheme: scheme.to_ascii_lowercase() })
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(bad("a proxy URL has no path"));
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, rest),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("no host"))?;
        let port = match port {
            Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("bad port"))?,
            None => 80,
        };
        let credentials = userinfo
            .map(|userinfo| {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode =
                    |part: &str| percent_decode(part).ok_or_else(|| bad("bad percent-encoding in the credentials"));
                Ok::<_, ProxyConfigError>(Credentials {
                    user: decode(user)?,
                    password: Zeroizing::new(decode(password)?),
                })
            })
            .transpose()?;
        Ok(Proxy { host: host.to_owned(), port, credentials })
    }

    /// Opens a tunnel through this proxy to `host:port`: a TCP connection to the proxy on which,
    /// once this returns, every byte goes to and comes from the destination.
    pub async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let target = authority(host, port);
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Unreachable { proxy: self.to_string(), source })?;
        // Small writes in turn: the CONNECT, then the protocol's first bytes.
        let _ = stream.set_nodelay(true);
        let request = self.connect_request(&target);
        stream.write_all(request.as_bytes()).await.map_err(|source| self.lost(source))?;
        let head = read_answer_head(&mut stream).await.map_err(|source| self.lost(source))?;
        answer_of(&head, self, &target)?;
        Ok(stream)
    }

    /// The CONNECT request for `target`, with Basic credentials when the proxy has some.
    fn connect_request(&self, target: &str) -> Zeroizing<String> {
        let mut request = Zeroizing::new(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"));
        if let Some(credentials) = &self.credentials {
            let pair = Zeroizing::new(format!("{}:{}", credentials.user, credentials.password.as_str()));
            let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
            request.push_str("Proxy-Authorization: Basic ");
            request.push_str(&encoded);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request
    }

    fn lost(&self, source: std::io::Error) -> ProxyError {
        ProxyError::Lost { proxy: self.to_string(), source }
    }
}

/// Reads the proxy's answer head, up to and with its blank line, one byte at a time: whatever
/// follows is the destination's and must stay in the socket for the protocol that reads next.
async fn read_answer_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_ANSWER_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "an answer head too long for HTTP"));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed the connection without an answer",
            ));
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// What a CONNECT's answer `head` means: `Ok` when the tunnel is open (any 2xx).
fn answer_of(head: &[u8], proxy: &Proxy, target: &str) -> Result<(), ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut answer = httparse::Response::new(&mut headers);
    let garbled = || ProxyError::Garbled { proxy: proxy.to_string() };
    match answer.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(garbled()),
    }
    let status = answer.code.ok_or_else(garbled)?;
    let sent_credentials = proxy.credentials.is_some();
    // The proxy's words, kept short and printable: they end up in a log line.
    let reason: String = answer.reason.unwrap_or("").chars().filter(|c| !c.is_control()).take(100).collect();
    let proxy = proxy.to_string();
    let target = target.to_owned();
    match status {
        200..=299 => Ok(()),
        // 407 asks for credentials; some proxies (tinyproxy) answer 401 to wrong ones.
        401 | 407 => Err(ProxyError::NeedsCredentials { proxy, status, sent: sent_credentials }),
        403 => Err(ProxyError::Forbidden { proxy, target, reason }),
        _ => Err(ProxyError::Refused { proxy, target, status, reason }),
    }
}

/// Why a tunnel through a proxy could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot reach the proxy {proxy}: {source}")]
    Unreachable { proxy: String, source: std::io::Error },
    #[error("the proxy {proxy} asks for credentials ({status}){}", if *.sent { ": it refused the ones given (--proxy-credentials, or the proxy URL in the environment)" } else { ": give them with --proxy-credentials FILE (USER:PASSWORD) or in the proxy URL of CUTTLE_PROXY or ALL_PROXY" })]
    NeedsCredentials { proxy: String, status: u16, sent: bool },
    #[error("the proxy {proxy} forbids a tunnel to {target} (403 {reason}): ask its administrators to allow CONNECT to that host and port")]
    Forbidden { proxy: String, target: String, reason: String },
    #[error("the proxy {proxy} could not open a tunnel to {target} ({status} {reason})")]
    Refused { proxy: String, target: String, status: u16, reason: String },
    #[error("the proxy {proxy} closed the connection or failed before answering: {source}")]
    Lost { proxy: String, source: std::io::Error },
    #[error("the proxy {proxy} answered something other than HTTP")]
    Garbled { proxy: String },
}

impl ProxyError {
    /// Whether no retry mends this: the proxy refuses us (credentials, a forbidden destination)
    /// until its settings or ours change. A proxy that is down, or cannot reach the broker now
    /// (502, 503, 504), may let us through later.
    pub fn is_setting(&self) -> bool {
        matches!(self, ProxyError::NeedsCredentials { .. } | ProxyError::Forbidden { .. })
    }

    /// The proxy error behind `error`, if a proxy is what failed: found in its chain of sources
    /// (lapin carries it inside an `io::Error`).
    pub fn of<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ProxyError> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(proxy) = error.downcast_ref::<ProxyError>() {
                return Some(proxy);
            }
            let content = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|inner| inner as _);
            next = content.or_else(|| error.source());
        }
        None
    }

    /// As an `io::Error`, the form lapin's connector returns.
    pub fn into_io(self) -> std::io::Error {
        let kind = match &self {
            ProxyError::Unreachable { source, .. } | ProxyError::Lost { source, .. } => source.kind(),
            ProxyError::NeedsCredentials { .. } | ProxyError::Forbidden { .. } => std::io::ErrorKind::PermissionDenied,
            ProxyError::Refused { .. } => std::io::ErrorKind::ConnectionRefused,
            ProxyError::Garbled { .. } => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, self)
    }
}

impl Credentials {
    /// Reads `USER:PASSWORD` from the first line of `path`.
    fn read(path: &Path) -> Result<Credentials, ProxyConfigError> {
        let fail = |reason: String| ProxyConfigError::CredentialsFile { path: path.to_owned(), reason };
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?);
        let line = text.lines().next().unwrap_or("").trim();
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(Credentials { user: user.to_owned(), password: Zeroizing::new(password.to_owned()) })
            }
            _ => Err(fail("its first line must be USER:PASSWORD".to_owned())),
        }
    }
}

/// The destinations reached directly whatever proxy is set (`NO_PROXY`): comma-separated host
/// names, each also naming its subdomains (`example.com` and `.example.com` both name
/// `broker.example.com`), IP addresses, networks (`10.0.0.0/8`), and `*` for everything. A port
/// after an entry is ignored: a broker is named by its host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    everything: bool,
    names: Vec<String>,
    networks: Vec<(IpAddr, u8)>,
}

impl NoProxy {
    pub fn parse(list: &str) -> NoProxy {
        let mut no_proxy = NoProxy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                no_proxy.everything = true;
                continue;
            }
            if let Some((address, bits)) = entry.split_once('/') {
                if let (Ok(address), Ok(bits)) = (address.parse::<IpAddr>(), bits.parse::<u8>()) {
                    no_proxy.networks.push((address, bits));
                }
                continue;
            }
            let host = split_host_port(entry).map_or(entry, |(host, _)| host);
            let name = host.trim_start_matches("*.").trim_start_matches('.').to_ascii_lowercase();
            if !name.is_empty() {
                no_proxy.names.push(name);
            }
        }
        no_proxy
    }

    /// Whether `host` (a name or an address, as in a URL) is to be reached directly.
    pub fn names(&self, host: &str) -> bool {
        if self.everything {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        if let Ok(address) = host.parse::<IpAddr>() {
            let in_network = |(network, bits): &(IpAddr, u8)| in_network(address, *network, *bits);
            return self.networks.iter().any(in_network)
                || self.names.iter().any(|name| name.parse::<IpAddr>().is_ok_and(|named| named == address));
        }
        self.names.iter().any(|name| host == *name || host.ends_with(&format!(".{name}")))
    }
}

/// Whether `address` lies in `network/bits`.
fn in_network(address: IpAddr, network: IpAddr, bits: u8) -> bool {
    let prefix = |value: u128, width: u32| if bits == 0 { 0 } else { value >> (width - u32::from(bits).min(width)) };
    match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => prefix(u32::from(a).into(), 32) == prefix(u32::from(n).into(), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => prefix(u128::from(a), 128) == prefix(u128::from(n), 128),
        _ => false,
    }
}

/// `host[:port]` or `[v6]:port` split; `None` without a host.
fn split_host_port(hostport: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':');
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        // More than one colon without brackets: an IPv6 address without a port.
        Some((host, _)) if host.contains(':') => (hostport, None),
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    };
    (!host.is_empty()).then_some((host, port))
}

/// Decodes `%XX` escapes; `None` when one is malformed or the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(flag: Option<&str>, vars: &[(&str, &str)]) -> Result<ProxySettings, ProxyConfigError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |name: &str| vars.get(name).cloned();
        ProxySettings::resolve(&ProxySources { flag, credentials_file: None, env: &env })
    }

    #[test]
    fn the_flag_comes_before_the_environment_and_no_proxy_exempts() {
        let settings =
            resolve(Some("http://p:3128"), &[("ALL_PROXY", "http://q:1"), ("NO_PROXY", "direct.example")]).unwrap();
        assert_eq!(settings.for_broker("broker.example").unwrap().to_string(), "http://p:3128");
        assert_eq!(settings.for_web("relay.example").unwrap().to_string(), "http://p:3128");
        assert!(settings.for_broker("direct.example").is_none());
        assert!(settings.for_broker("a.direct.example").is_none());
        // Loopback too goes through an explicit proxy unless named.
        assert!(settings.for_broker("127.0.0.1").is_some());
    }

    #[test]
    fn all_proxy_serves_the_broker_and_https_proxy_the_web_relay() {
        let settings = resolve(None, &[("all_proxy", "http://a:1"), ("HTTPS_PROXY", "http://h:2")]).unwrap();
        assert_eq!(settings.for_broker("b").unwrap().to_string(), "http://a:1");
        assert_eq!(settings.for_web("r").unwrap().to_string(), "http://h:2");
        let settings = resolve(None, &[("ALL_PROXY", "http://a:1")]).unwrap();
        assert_eq!(settings.for_web("r").unwrap().to_string(), "http://a:1");
        let settings = resolve(None, &[("HTTPS_PROXY", "http://h:2")]).unwrap();
        assert!(settings.for_broker("b").is_none(), "HTTPS_PROXY is for https and wss only");
        assert!(!resolve(None, &[]).unwrap().is_set());
    }

    #[test]
    fn a_password_on_the_command_line_is_refused_and_never_shown() {
        assert!(matches!(
            resolve(Some("http://u:secret@p:3128"), &[]),
            Err(ProxyConfigError::CredentialsOnCommandLine)
        ));
        let settings =
            resolve(Some("http://u:s%40cret@p:3128"), &[("CUTTLE_PROXY", "http://u:s%40cret@p:3128")]).unwrap();
        let proxy = settings.for_broker("b").unwrap();
        assert_eq!(proxy.credentials.as_ref().unwrap().password.as_str(), "s@cret");
        assert!(!format!("{proxy} {proxy:?} {settings:?}").contains("cret"));
        let request = proxy.connect_request("b:5672");
        assert!(request.contains("Proxy-Authorization: Basic dTpzQGNyZXQ=\r\n"), "{}", request.as_str());
    }

    #[test]
    fn only_http_proxies_are_taken() {
        assert!(matches!(
            resolve(None, &[("ALL_PROXY", "socks5://p:1080")]),
            Err(ProxyConfigError::UnsupportedScheme { .. })
        ));
        assert!(matches!(resolve(Some("https://p:3128"), &[]), Err(ProxyConfigError::UnsupportedScheme { .. })));
        assert!(matches!(resolve(Some("http://p:notaport"), &[]), Err(ProxyConfigError::BadUrl { .. })));
        assert_eq!(resolve(Some("p:3128"), &[]).unwrap().for_broker("b").unwrap().to_string(), "http://p:3128");
        assert_eq!(
            resolve(Some("http://[::1]:3128/"), &[]).unwrap().for_broker("b").unwrap().to_string(),
            "http://[::1]:3128"
        );
    }

    #[test]
    fn no_proxy_names_hosts_domains_addresses_and_networks() {
        let no_proxy = NoProxy::parse(" .corp.example, broker:5672,10.0.0.0/8, ::1 ,fd00::/8");
        assert!(no_proxy.names("a.corp.example") && no_proxy.names("corp.example") && no_proxy.names("BROKER"));
        assert!(!no_proxy.names("notcorp.example") && !no_proxy.names("broker2"));
        assert!(no_proxy.names("10.1.2.3") && !no_proxy.names("11.1.2.3"));
        assert!(no_proxy.names("[::1]") && no_proxy.names("fd12::1") && !no_proxy.names("fe80::1"));
        assert!(NoProxy::parse("*").names("anything"));
        assert!(!NoProxy::default().names("anything"));
    }

    fn answer(head: &str) -> Result<(), ProxyError> {
        let proxy = Proxy::parse("--proxy", "http://p:3128").unwrap();
        answer_of(head.as_bytes(), &proxy, "b:5672")
    }

    #[test]
    fn each_refusal_says_what_it_is() {
        assert!(answer("HTTP/1.1 200 Connection established\r\n\r\n").is_ok());
        assert!(answer("HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n").is_ok());
        let needs = answer("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").unwrap_err();
        assert!(needs.is_setting() && needs.to_string().contains("--proxy-credentials"), "{needs}");
        // tinyproxy answers wrong credentials so.
        let wrong = answer("HTTP/1.0 401 Unauthorized\r\n\r\n").unwrap_err();
        assert!(wrong.is_setting() && wrong.to_string().contains("asks for credentials (401)"), "{wrong}");
        let forbidden = answer("HTTP/1.1 403 Access violation\r\n\r\n").unwrap_err();
        assert!(forbidden.is_setting() && forbidden.to_string().contains("b:5672"), "{forbidden}");
        let bad_gateway = answer("HTTP/1.1 502 Bad Gateway\r\n\r\n").unwrap_err();
        assert!(!bad_gateway.is_setting() && bad_gateway.to_string().contains("502"), "{bad_gateway}");
        assert!(matches!(answer("SSH-2.0-OpenSSH\r\n\r\n"), Err(ProxyError::Garbled { .. })));
    }

    #[test]
    fn the_error_is_found_inside_the_broker_clients_error() {
        let error = lapin::Error::from(ProxyError::Garbled { proxy: "http://p:1".into() }.into_io());
        assert!(matches!(ProxyError::of(&error), Some(ProxyError::Garbled { .. })));
        let plain = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(ProxyError::of(&plain).is_none());
    }
}
