//! Which requests come from this service's own site. A web page open in a browser on the
//! service's machine can make the browser send requests to it; these checks refuse what no page
//! of the service sends, before anything is read or run:
//!
//! - **Host** (421): the name the browser used must name the service: its listen address (any
//!   loopback address or `localhost` when it listens on loopback; any IP address when it listens
//!   on all of them), a name given with `--allowed-host`, or the host of `--public-url`, on the
//!   port they say. DNS rebinding (a page's own name made to resolve to the service's address)
//!   puts the page's name there, so it cannot read `/v1/tickets` and their output. `/healthz` and
//!   `/metrics` skip it: probes and scrapers use whatever name they were given, and neither route
//!   holds a ticket, a target or a script.
//! - **Origin** (403): a request that carries one must come from a page of the service (an
//!   origin whose host and port it answers to, or exactly `--public-url`'s); `null` (sandboxed
//!   frames, `data:` pages) never does. Browsers send `Origin` with every `POST` and every
//!   cross-origin `fetch`; scripts and `curl` send none.
//! - **Fetch metadata** (403): `Sec-Fetch-Site: cross-site` or `same-site` on anything but a link
//!   followed (a `GET` navigation): the browser says the request comes from another origin.

use axum::http::{Method, StatusCode};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// A host as a `Host` header, an origin or a flag names it: an IP address or a DNS name
/// (lowercase, without a trailing dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostName {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostName::Ip(ip) => write!(f, "{ip}"),
            HostName::Name(name) => f.write_str(name),
        }
    }
}

/// A host and, if given, a port: `NAME[:PORT]`, `IP[:PORT]`, `[IPv6][:PORT]`. A `Host` header's
/// value, an origin's part after the scheme, and what `--allowed-host` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    pub host: HostName,
    /// None: not given (a `Host` or origin on its scheme's default port; any port in
    /// `--allowed-host`).
    pub port: Option<u16>,
}

impl Authority {
    pub fn parse(raw: &str) -> Result<Authority, String> {
        let invalid = |why: &str| format!("{:?} is not NAME[:PORT] ({why})", shown(raw));
        if raw.is_empty() {
            return Err(invalid("empty"));
        }
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (ip, after) = rest.split_once(']').ok_or_else(|| invalid("no `]` after the IPv6 address"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| invalid("not an IPv6 address in the brackets"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| invalid("`:PORT` must follow `]`"))?),
            };
            (HostName::Ip(IpAddr::V6(ip)), port)
        } else {
            let (name, port) = match raw.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (raw, None),
            };
            if name.contains(':') {
                return Err(invalid("an IPv6 address goes in brackets: [::1]:7480"));
            }
            (host_name(name).ok_or_else(|| invalid("a host is letters, digits, `-`, `_` and dots"))?, port)
        };
        let port =
            port.map(|p| p.parse::<u16>().map_err(|_| invalid("the port is not a number up to 65535"))).transpose()?;
        Ok(Authority { host, port })
    }

    /// Whether this pattern (an `--allowed-host`) admits `name`, whose missing port stands for
    /// one of `defaults`.
    fn admits(&self, name: &Authority, defaults: &[u16]) -> bool {
        self.host == name.host && self.port.is_none_or(|port| has_port(name, port, defaults))
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// `name` (no brackets, no port) as a host: an IPv4 address, or a DNS name.
fn host_name(name: &str) -> Option<HostName> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(HostName::Ip(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| !label.is_empty())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid.then_some(HostName::Name(name))
}

/// Whether `name`'s port is `port`; a missing one stands for any of `defaults`.
fn has_port(name: &Authority, port: u16, defaults: &[u16]) -> bool {
    name.port.map_or(defaults.contains(&port), |given| given == port)
}

/// The ports a `Host` without one may stand for: plain HTTP's, or HTTPS's through a proxy that
/// terminates TLS in front of the service.
const HOST_DEFAULT_PORTS: [u16; 2] = [80, 443];

/// `http` or `https`: the schemes a page of the service can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(raw: &str) -> Option<Scheme> {
        match raw.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `scheme://host[:port]`: an origin, or `--public-url` (which may end with `/`, nothing more).
fn parse_origin(raw: &str) -> Option<(Scheme, Authority)> {
    let (scheme, rest) = raw.split_once("://")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@', '\\']) {
        return None;
    }
    Some((Scheme::parse(scheme)?, Authority::parse(authority).ok()?))
}

/// The URL browsers reach the service at (`--public-url`), when a proxy stands in front of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl PublicUrl {
    pub fn parse(raw: &str) -> Result<PublicUrl, String> {
        let (scheme, authority) = parse_origin(raw.trim()).ok_or_else(|| {
            format!(
                "{:?} is not http(s)://HOST[:PORT]: the URL browsers reach the service at, without a path (it is served at the root)",
                shown(raw)
            )
        })?;
        Ok(PublicUrl { scheme, authority })
    }

    /// Whether the service is reached over TLS: then its login cookie is `Secure`.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::Https
    }

    fn port(&self) -> u16 {
        self.authority.port.unwrap_or(self.scheme.default_port())
    }

    /// Its host and port, as an `--allowed-host` would name them.
    fn as_pattern(&self) -> Authority {
        Authority { host: self.authority.host.clone(), port: Some(self.port()) }
    }

    fn is_origin(&self, scheme: Scheme, name: &Authority) -> bool {
        scheme == self.scheme
            && name.host == self.authority.host
            && has_port(name, self.port(), &[scheme.default_port()])
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority)
    }
}

/// Why a request was refused, and what to do if it was not an attack.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "this service does not answer to the name {host:?} (the request's Host); it answers to {known}. If {host:?} is a name of this service, start it with --allowed-host {host} (or CUTTLE_ALLOWED_HOSTS); nothing was read or run"
    )]
    Host { host: String, known: String },
    #[error("the request names no host (no Host header); it must name one of {known}; nothing was read or run")]
    NoHost { known: String },
    #[error(
        "refused a request from a page of {origin:?}, which is not this service ({known}); nothing was read or run. If that page is the service's own behind a proxy, start it with --public-url URL or --allowed-host NAME[:PORT]"
    )]
    Origin { origin: String, known: String },
    #[error(
        "refused a request the browser says comes from another site (Sec-Fetch-Site: {site}): only this service's own pages may use it; nothing was read or run"
    )]
    CrossSite { site: String },
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::Host { .. } | Refusal::NoHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Origin { .. } | Refusal::CrossSite { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// What the checks read of a request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen<'a> {
    pub method: &'a Method,
    /// The request target's authority if absolute, else the `Host` header.
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub fetch_site: Option<&'a str>,
    pub fetch_mode: Option<&'a str>,
    /// `/healthz` or `/metrics`, which any name may reach.
    pub probe: bool,
}

/// The names and origins the service answers to.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    /// The bound address (its real port, also when asked for port 0).
    listen: SocketAddr,
    allowed: Vec<Authority>,
    public: Option<PublicUrl>,
}

impl Site {
    pub(crate) fn new(listen: SocketAddr, allowed: Vec<Authority>, public: Option<PublicUrl>) -> Site {
        Site { listen, allowed, public }
    }

    /// Whether browsers reach the service over TLS (`--public-url https://...`).
    pub(crate) fn is_https(&self) -> bool {
        self.public.as_ref().is_some_and(PublicUrl::is_https)
    }

    /// The checks, in order: Host, Origin, fetch metadata.
    pub(crate) fn check(&self, seen: &Seen<'_>) -> Result<(), Refusal> {
        if !seen.probe {
            self.check_host(seen.host)?;
        }
        self.check_origin(seen.origin)?;
        check_fetch_site(seen.method, seen.fetch_site, seen.fetch_mode)
    }

    fn check_host(&self, host: Option<&str>) -> Result<(), Refusal> {
        let raw = host.ok_or_else(|| Refusal::NoHost { known: self.answers_to() })?;
        let named = Authority::parse(raw).ok().is_some_and(|name| {
            self.names_listen_address(&name, &HOST_DEFAULT_PORTS)
                || self
                    .allowed
                    .iter()
                    .chain(self.public.as_ref().map(PublicUrl::as_pattern).as_ref())
                    .any(|pattern| pattern.admits(&name, &HOST_DEFAULT_PORTS))
        });
        match named {
            true => Ok(()),
            false => Err(Refusal::Host { host: shown(raw), known: self.answers_to() }),
        }
    }

    fn check_origin(&self, origin: Option<&str>) -> Result<(), Refusal> {
        let Some(raw) = origin else { return Ok(()) };
        let own = parse_origin(raw).is_some_and(|(scheme, name)| {
            let defaults = [scheme.default_port()];
            self.public.as_ref().is_some_and(|public| public.is_origin(scheme, &name))
                || self.names_listen_address(&name, &defaults)
                || self.allowed.iter().any(|pattern| pattern.admits(&name, &defaults))
        });
        match own {
            true => Ok(()),
            false => Err(Refusal::Origin { origin: shown(raw), known: self.answers_to() }),
        }
    }

    /// Whether `name` names the listen address: its IP (any loopback one, or `localhost`, on
    /// loopback; any IP, or `localhost`, when listening on all addresses, which cannot all be
    /// known) on its port.
    fn names_listen_address(&self, name: &Authority, defaults: &[u16]) -> bool {
        let listen = self.listen.ip();
        let local = listen.is_loopback() || listen.is_unspecified();
        has_port(name, self.listen.port(), defaults)
            && match &name.host {
                HostName::Name(name) => local && name == "localhost",
                HostName::Ip(ip) if listen.is_unspecified() => !ip.is_unspecified(),
                HostName::Ip(ip) if listen.is_loopback() => ip.is_loopback(),
                HostName::Ip(ip) => *ip == listen,
            }
    }

    /// The names it answers to, for messages: `localhost:7480, any loopback address on port 7480, ...`.
    pub(crate) fn answers_to(&self) -> String {
        let (ip, port) = (self.listen.ip(), self.listen.port());
        let mut names = vec![if ip.is_unspecified() {
            format!("localhost:{port} and any IP address of this machine on port {port}")
        } else if ip.is_loopback() {
            format!("localhost:{port} and any loopback address on port {port} (127.0.0.1:{port}, [::1]:{port})")
        } else {
            self.listen.to_string()
        }];
        names.extend(self.allowed.iter().map(ToString::to_string));
        names.extend(self.public.iter().map(ToString::to_string));
        names.join(", ")
    }
}

/// Refuses what the browser says comes from another origin's page (`Sec-Fetch-Site`), but for
/// a link followed from elsewhere (a `GET` navigation), which only shows the page to its user.
fn check_fetch_site(method: &Method, site: Option<&str>, mode: Option<&str>) -> Result<(), Refusal> {
    let Some(site @ ("cross-site" | "same-site")) = site else { return Ok(()) };
    let followed_link = (method == Method::GET || method == Method::HEAD) && mode == Some("navigate");
    match followed_link {
        true => Ok(()),
        false => Err(Refusal::CrossSite { site: site.to_owned() }),
    }
}

/// A request's own text, made safe to quote in a message and a log: at most 100 characters.
fn shown(raw: &str) -> String {
    raw.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(raw: &str) -> Authority {
        Authority::parse(raw).unwrap()
    }

    fn site(listen: &str, allowed: &[&str], public: Option<&str>) -> Site {
        let allowed = allowed.iter().map(|a| authority(a)).collect();
        Site::new(listen.parse().unwrap(), allowed, public.map(|p| PublicUrl::parse(p).unwrap()))
    }

    fn seen<'a>(method: &'a Method, host: Option<&'a str>) -> Seen<'a> {
        Seen { method, host, origin: None, fetch_site: None, fetch_mode: None, probe: false }
    }

    fn host(site: &Site, host: &str) -> Result<(), Refusal> {
        site.check(&seen(&Method::GET, Some(host)))
    }

    fn origin(site: &Site, method: &Method, origin: &str) -> Result<(), Refusal> {
        site.check(&Seen { origin: Some(origin), ..seen(method, Some("127.0.0.1:7480")) })
    }

    #[test]
    fn authorities_are_parsed_strictly() {
        assert_eq!(
            authority("Cuttle.Example.com."),
            Authority { host: HostName::Name("cuttle.example.com".into()), port: None }
        );
        assert_eq!(authority("[::1]:7480").to_string(), "[::1]:7480");
        assert_eq!(authority("127.0.0.1:80").port, Some(80));
        assert_eq!(authority("[0:0::1]").host, HostName::Ip("::1".parse().unwrap()));
        for bad in ["", "::1", "a b", "user@host", "host:port", "host:70000", "*", "a..b", "[::1", "[::1]x", "évil"] {
            assert!(Authority::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn on_loopback_only_loopback_names_on_its_port_and_allowed_names_pass() {
        let site = site("127.0.0.1:7480", &["cuttle.test", "tunnel.test:9000"], None);
        for ok in [
            "127.0.0.1:7480",
            "localhost:7480",
            "LOCALHOST:7480",
            "[::1]:7480",
            "127.0.0.2:7480",
            "cuttle.test",
            "cuttle.test:1234",
            "tunnel.test:9000",
        ] {
            assert_eq!(host(&site, ok), Ok(()), "{ok}");
        }
        for refused in [
            "evil.example:7480",
            "evil.example",
            "localhost:7481",
            "127.0.0.1",
            "10.0.0.1:7480",
            "tunnel.test:9001",
            "tunnel.test",
            "cuttle.test.evil.example",
        ] {
            let refusal = host(&site, refused).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::MISDIRECTED_REQUEST, "{refused}");
            assert!(refusal.to_string().contains("--allowed-host"), "{refusal}");
        }
        assert!(matches!(site.check(&seen(&Method::GET, None)), Err(Refusal::NoHost { .. })));
        // Probes answer to any name.
        assert_eq!(site.check(&Seen { probe: true, ..seen(&Method::GET, Some("evil.example")) }), Ok(()));
    }

    #[test]
    fn on_a_given_address_only_it_and_on_all_addresses_any_ip_on_its_port() {
        let given = site("10.1.2.3:7480", &[], None);
        assert_eq!(host(&given, "10.1.2.3:7480"), Ok(()));
        for refused in ["127.0.0.1:7480", "localhost:7480", "10.1.2.4:7480", "10.1.2.3:80"] {
            assert!(host(&given, refused).is_err(), "{refused}");
        }
        let all = site("0.0.0.0:7480", &["cuttle.example.com"], None);
        for ok in ["10.1.2.3:7480", "[fd00::5]:7480", "localhost:7480", "cuttle.example.com"] {
            assert_eq!(host(&all, ok), Ok(()), "{ok}");
        }
        for refused in ["10.1.2.3:8080", "rebound.evil.example:7480", "0.0.0.0:7480"] {
            assert!(host(&all, refused).is_err(), "{refused}");
        }
        let eighty = site("0.0.0.0:80", &[], None);
        assert_eq!(host(&eighty, "10.1.2.3"), Ok(()), "no port is port 80");
    }

    #[test]
    fn the_public_urls_host_passes_on_its_port() {
        let site = site("127.0.0.1:7480", &[], Some("https://Cuttle.Example.com/"));
        assert!(site.is_https());
        for ok in ["cuttle.example.com", "cuttle.example.com:443"] {
            assert_eq!(host(&site, ok), Ok(()), "{ok}");
        }
        assert!(host(&site, "cuttle.example.com:8443").is_err());
        let other_port = self::site("127.0.0.1:7480", &[], Some("http://cuttle.example.com:8080"));
        assert!(!other_port.is_https());
        assert_eq!(host(&other_port, "cuttle.example.com:8080"), Ok(()));
        for bad in ["cuttle.example.com", "ftp://x", "https://x/app", "https://x?a", "https://u@x", "https://"] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn only_the_services_own_origins_pass() {
        let site = site("127.0.0.1:7480", &["cuttle.test"], Some("https://cuttle.example.com"));
        for own in [
            "http://127.0.0.1:7480",
            "http://localhost:7480",
            "http://cuttle.test",
            "https://cuttle.test:8443",
            "https://cuttle.example.com",
            "https://cuttle.example.com:443",
        ] {
            assert_eq!(origin(&site, &Method::POST, own), Ok(()), "{own}");
        }
        for foreign in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8000",
            "http://localhost",
            "http://cuttle.example.com",
            "https://cuttle.example.com:8443",
            "file://",
            "garbage",
            "http://127.0.0.1:7480/path",
        ] {
            let refusal = origin(&site, &Method::POST, foreign).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::FORBIDDEN, "{foreign}");
            // Reads too: the browser would hide the answer, but nothing is even read for it.
            assert!(origin(&site, &Method::GET, foreign).is_err(), "{foreign}");
        }
    }

    #[test]
    fn what_the_browser_says_comes_from_another_site_is_refused_but_links_followed() {
        let site = site("127.0.0.1:7480", &[], None);
        let seen = |method, fetch_site, fetch_mode| Seen {
            fetch_site: Some(fetch_site),
            fetch_mode: Some(fetch_mode),
            ..seen(method, Some("127.0.0.1:7480"))
        };
        assert_eq!(site.check(&seen(&Method::GET, "cross-site", "navigate")), Ok(()), "a link from elsewhere");
        assert_eq!(site.check(&seen(&Method::POST, "same-origin", "navigate")), Ok(()), "its own login form");
        assert_eq!(site.check(&seen(&Method::GET, "none", "navigate")), Ok(()), "typed in");
        for (method, fetch_site, mode) in [
            (&Method::POST, "cross-site", "navigate"),
            (&Method::POST, "same-site", "no-cors"),
            (&Method::GET, "cross-site", "no-cors"),
            (&Method::GET, "same-site", "cors"),
        ] {
            let refusal = site.check(&seen(method, fetch_site, mode)).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::FORBIDDEN, "{method} {fetch_site} {mode}");
        }
    }

    #[test]
    fn hostile_text_is_cut_short_in_messages() {
        let site = site("127.0.0.1:7480", &[], None);
        let long = "x".repeat(5000);
        let message = host(&site, &long).unwrap_err().to_string();
        assert!(message.len() < 1000, "{message}");
    }
}
