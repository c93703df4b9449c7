//! What stands between an agent and the broker on networks that let out only a proxy or port
//! 443, run for real from the distribution's packages: an HTTP proxy ([`Tinyproxy`]), a
//! WebSocket-to-TCP relay ([`Websockify`]), a TLS router by server name ([`Haproxy`]); and a
//! network namespace ([`Namespace`]) from which nothing but the proxy can be reached, so that a
//! test passing proves the path.

use crate::services::{free_port, tail};
use crate::{eventually_explained, unique};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Whether `addr` accepts a TCP connection now.
async fn accepts(addr: SocketAddr) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

async fn wait_listening(what: &str, addr: SocketAddr, log: &Path) {
    let listening = || async move { accepts(addr).await.then_some(()) };
    eventually_explained(what, Duration::from_secs(20), listening, || tail(log, 20)).await;
}

async fn wait_closed(what: &str, addr: SocketAddr) {
    crate::eventually(what, Duration::from_secs(20), || async move { (!accepts(addr).await).then_some(()) }).await;
}

/// A program of the test's own, in a process group of its own (so that a kill takes its
/// children too), its output in `log`.
struct Daemon {
    child: Option<tokio::process::Child>,
}

impl Daemon {
    fn spawn(mut command: tokio::process::Command, log: &Path) -> Daemon {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("daemon log");
        let err = out.try_clone().expect("daemon log");
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Daemon { child: Some(child) }
    }

    /// Kills the whole process group with SIGKILL: every connection it carried is cut.
    async fn kill(&mut self) {
        self.kill_group();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
    }

    /// Sends SIGKILL to the process group, without waiting.
    fn kill_group(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// How a [`Tinyproxy`] is set up.
#[derive(Clone, Debug)]
pub struct ProxySetup {
    /// The address it listens on (its port is a free one).
    pub listen: IpAddr,
    /// The only ports it lets CONNECT reach; none lets every port.
    pub connect_ports: Vec<u16>,
    /// A user and password it asks for (Basic), if any.
    pub basic_auth: Option<(String, String)>,
}

impl Default for ProxySetup {
    fn default() -> Self {
        ProxySetup { listen: IpAddr::V4(Ipv4Addr::LOCALHOST), connect_ports: Vec::new(), basic_auth: None }
    }
}

/// A real HTTP proxy (tinyproxy) on a free port, logging every CONNECT.
pub struct Tinyproxy {
    pub addr: SocketAddr,
    dir: PathBuf,
    daemon: tokio::sync::Mutex<Daemon>,
}

impl Tinyproxy {
    pub async fn start(setup: ProxySetup) -> Tinyproxy {
        let dir = std::env::temp_dir().join(unique("tinyproxy"));
        std::fs::create_dir_all(&dir).expect("proxy dir");
        let addr = SocketAddr::new(setup.listen, free_port());
        let mut conf = format!(
            "Port {}\nListen {}\nTimeout 600\nMaxClients 500\nLogLevel Connect\nLogFile \"{}\"\n",
            addr.port(),
            addr.ip(),
            dir.join("access.log").display()
        );
        for port in &setup.connect_ports {
            conf.push_str(&format!("ConnectPort {port}\n"));
        }
        if let Some((user, password)) = &setup.basic_auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(dir.join("tinyproxy.conf"), conf).expect("proxy config");
        let daemon = tokio::sync::Mutex::new(Self::launch(&dir));
        let proxy = Tinyproxy { addr, dir, daemon };
        wait_listening("tinyproxy to listen", addr, &proxy.dir.join("out.log")).await;
        proxy
    }

    fn launch(dir: &Path) -> Daemon {
        let mut command = tokio::process::Command::new("tinyproxy");
        command.arg("-d").arg("-c").arg(dir.join("tinyproxy.conf"));
        Daemon::spawn(command, &dir.join("out.log"))
    }

    /// `http://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's log: one `CONNECT` line per tunnel asked for.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// How many tunnels to `target` (`HOST:PORT`) were asked of the proxy.
    pub fn tunnels_to(&self, target: &str) -> usize {
        let request = format!("CONNECT {target} HTTP/1.1");
        self.log_text()
            .lines()
            .filter(|line| line.contains("Request (file descriptor") && line.contains(&request))
            .count()
    }

    /// Kills the proxy (every tunnel is cut) and starts it again on the same port.
    pub async fn restart(&self) {
        let mut daemon = self.daemon.lock().await;
        daemon.kill().await;
        wait_closed("the killed tinyproxy to stop listening", self.addr).await;
        *daemon = Self::launch(&self.dir);
        wait_listening("tinyproxy to listen again", self.addr, &self.dir.join("out.log")).await;
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real WebSocket-to-TCP relay (websockify) on a free port of 127.0.0.1, TLS only, in front
/// of `target`.
pub struct Websockify {
    pub port: u16,
    dir: PathBuf,
    command: Vec<String>,
    daemon: tokio::sync::Mutex<Daemon>,
}

impl Websockify {
    pub async fn start(target: SocketAddr, server: &crate::tls::Issued) -> Websockify {
        let dir = std::env::temp_dir().join(unique("websockify"));
        std::fs::create_dir_all(&dir).expect("relay dir");
        let port = free_port();
        let command = vec![
            "websockify".to_owned(),
            format!("--cert={}", server.cert.display()),
            format!("--key={}", server.key.display()),
            "--ssl-only".to_owned(),
            format!("127.0.0.1:{port}"),
            target.to_string(),
        ];
        let daemon = tokio::sync::Mutex::new(Self::launch(&command, &dir));
        let relay = Websockify { port, dir, command, daemon };
        relay.wait_listening().await;
        relay
    }

    fn launch(command: &[String], dir: &Path) -> Daemon {
        let mut process = tokio::process::Command::new(&command[0]);
        process.args(&command[1..]);
        Daemon::spawn(process, &dir.join("out.log"))
    }

    async fn wait_listening(&self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        wait_listening("websockify to listen", addr, &self.dir.join("out.log")).await;
    }

    /// The `wss://` broker URL of an agent reaching the broker through this relay as guest.
    pub fn broker_url(&self) -> String {
        format!("wss://guest:guest@localhost:{}/", self.port)
    }

    /// The relay's log: a line per WebSocket connection it relayed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default()
    }

    /// How many connections the relay made to its target.
    pub fn connections(&self) -> usize {
        self.log_text().lines().filter(|line| line.contains("connecting to:")).count()
    }

    /// Kills the relay with every connection it carries, and starts it again on the same port.
    pub async fn restart(&self) {
        let mut daemon = self.daemon.lock().await;
        daemon.kill().await;
        wait_closed("the killed websockify to stop listening", SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
            .await;
        *daemon = Self::launch(&self.command, &self.dir);
        self.wait_listening().await;
    }
}

impl Drop for Websockify {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real HAProxy with a configuration of the test's own.
pub struct Haproxy {
    dir: PathBuf,
    _daemon: Daemon,
}

impl Haproxy {
    /// Checks `config` (`haproxy -c`, failing the test with HAProxy's words) and runs it,
    /// waiting until `listens_on` accepts connections.
    pub async fn start(config: &str, listens_on: SocketAddr) -> Haproxy {
        let dir = std::env::temp_dir().join(unique("haproxy"));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).expect("haproxy config");
        let check = Command::new("haproxy").arg("-c").arg("-f").arg(&file).output().expect("haproxy runs");
        assert!(check.status.success(), "haproxy -c refuses the config: {}", crate::text(&check.stderr));
        let mut command = tokio::process::Command::new("haproxy");
        command.arg("-db").arg("-f").arg(&file);
        let daemon = Daemon::spawn(command, &dir.join("out.log"));
        wait_listening("haproxy to listen", listens_on, &dir.join("out.log")).await;
        Haproxy { dir, _daemon: daemon }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace of the test's own, joined to this one by a pair of virtual Ethernet
/// links: from inside it only [`Namespace::host`] can be reached, where nothing listens but what
/// the test puts there (the machine's broker and Redis listen on 127.0.0.1, which inside is the
/// namespace's own, empty loopback).
pub struct Namespace {
    pub name: String,
    /// This side's address on the link.
    pub host: Ipv4Addr,
    veth: String,
}

impl Namespace {
    pub fn create() -> Namespace {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (name, veth, peer) = (format!("cuttle-{tag}"), format!("cv{tag}h"), format!("cv{tag}n"));
        // A /30 of its own in 10.200.0.0/13, from the tag, so that tests in parallel differ.
        let n = u32::from_str_radix(&tag[..5], 16).expect("hex") % (1 << 17);
        let base = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (n << 2);
        let (host, inside) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let namespace = Namespace { name: name.clone(), host, veth: veth.clone() };
        let steps: [&[&str]; 7] = [
            &["netns", "add", &name],
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            &["link", "set", &peer, "netns", &name],
            &["addr", "add", &format!("{host}/30"), "dev", &veth],
            &["link", "set", &veth, "up"],
            &["-n", &name, "addr", "add", &format!("{inside}/30"), "dev", &peer],
            &["-n", &name, "link", "set", &peer, "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(step).output().expect("ip runs");
            assert!(out.status.success(), "ip {step:?}: {}", crate::text(&out.stderr));
        }
        let out = Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).output().expect("ip runs");
        assert!(out.status.success(), "ip -n {name} link set lo up: {}", crate::text(&out.stderr));
        namespace
    }

    /// The launcher that runs a program inside ([`crate::agent_command_via`]).
    pub fn launcher(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A listener that accepts connections and never says a word: a proxy that hangs.
pub async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// Port 443 of this machine, for one test at a time: held (a lock on a file) until dropped.
/// RabbitMQ's server runs as its own user, who may bind 443 only while the machine lets users
/// bind ports from 443 up (`net.ipv4.ip_unprivileged_port_start`); the setting is lowered for
/// the holder and put back afterwards.
pub struct Port443 {
    _lock: std::fs::File,
    unprivileged_from: String,
}

const UNPRIVILEGED_PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

impl Port443 {
    pub async fn take() -> Port443 {
        let lock = std::fs::File::create("/tmp/cuttle-tests-port-443.lock").expect("lock file");
        let lock = tokio::task::spawn_blocking(move || {
            lock.lock().expect("lock port 443");
            lock
        })
        .await
        .expect("lock task");
        let unprivileged_from = std::fs::read_to_string(UNPRIVILEGED_PORT_START).expect("read the setting");
        if unprivileged_from.trim().parse::<u16>().is_ok_and(|from| from > 443) {
            std::fs::write(UNPRIVILEGED_PORT_START, "443").expect("lower ip_unprivileged_port_start");
        }
        Port443 { _lock: lock, unprivileged_from }
    }
}

impl Drop for Port443 {
    fn drop(&mut self) {
        let _ = std::fs::write(UNPRIVILEGED_PORT_START, self.unprivileged_from.trim());
    }
}
