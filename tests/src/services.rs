//! Private instances of Redis and RabbitMQ for tests that restart them, so tests running beside
//! them on the shared services are not disturbed.

use crate::{eventually, unique};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A free TCP port on 127.0.0.1 for a server a test starts, which binds it a moment (RabbitMQ:
/// seconds) later. Picked at random below the ephemeral range: every outgoing connection on the
/// machine takes its local port from that range, and one that took this port in the meantime
/// would keep the server from binding it (a broker that never listened with TLS, once).
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = ephemeral_low.saturating_sub(1).max(PRIVATE_PORTS_FROM + 1);
    for _ in 0..1000 {
        let port = fastrand::u16(PRIVATE_PORTS_FROM..below);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

/// Where [`free_port`] starts looking: above the well-known services of this machine.
const PRIVATE_PORTS_FROM: u16 = 10000;

/// The last `lines` lines of the file at `path` (a note if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return format!("({} cannot be read)", path.display()) };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

async fn wait_port(what: &str, port: u16, open: bool, timeout: Duration) {
    eventually(what, timeout, || async move { (port_open(port) == open).then_some(()) }).await;
}

/// A Redis of the test's own. With `durable`, every write is fsynced to an append-only file,
/// so a restart keeps the data; without, a restart comes back empty.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    durable: bool,
    /// What `redis-cli` needs besides the port to reach it (TLS files).
    cli_args: Vec<String>,
}

impl PrivateRedis {
    fn new(dir: PathBuf, durable: bool, cli_args: Vec<String>) -> PrivateRedis {
        PrivateRedis { port: free_port(), dir, durable, cli_args }
    }

    pub async fn start(durable: bool) -> PrivateRedis {
        PrivateRedis::start_with(durable, &[]).await
    }

    /// Starts a Redis with `extra` arguments (`--replicaof HOST PORT`, ...).
    pub async fn start_with(durable: bool, extra: &[&str]) -> PrivateRedis {
        let dir = std::env::temp_dir().join(unique("redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let redis = PrivateRedis::new(dir, durable, Vec::new());
        redis.launch(extra).await;
        redis
    }

    /// A Redis that listens only with TLS on its port, with `server`'s certificate, asking
    /// clients for a certificate `ca` signed.
    pub async fn start_tls(ca: &crate::tls::TestCa, server: &crate::tls::Issued) -> PrivateRedis {
        let dir = std::env::temp_dir().join(unique("redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let client = ca.client("redis-cli");
        let path = |p: &Path| p.display().to_string();
        let cli_args =
            ["--tls", "--cacert", &path(&ca.cert), "--cert", &path(&client.cert), "--key", &path(&client.key)]
                .map(String::from)
                .to_vec();
        let redis = PrivateRedis::new(dir, false, cli_args);
        let port = redis.port.to_string();
        let tls = [
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &path(&server.cert),
            "--tls-key-file",
            &path(&server.key),
            "--tls-ca-cert-file",
            &path(&ca.cert),
        ];
        redis.launch(&tls).await;
        redis
    }

    /// `redis-cli` with `args` against this server (its TLS files included): its output.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(&self.cli_args)
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The last lines of the server's log, restarts included (for a test's failure message).
    pub fn log_tail(&self) -> String {
        tail(&self.dir.join("redis.log"), 40)
    }

    async fn launch(&self, extra: &[&str]) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--appendonly", if self.durable { "yes" } else { "no" }, "--appendfsync", "always"])
            .args(extra);
        let status = command.status().expect("redis-server is installed");
        assert!(status.success(), "redis-server failed to start");
        wait_port("the private redis to listen", self.port, true, Duration::from_secs(10)).await;
        assert!(
            self.is_ours(),
            "another server listens on port {} where this redis should be; its log:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// Whether the server answering on the port is this one (its directory is this one's). While
    /// this one is down, another test may start a server on its port: a restart then finds the
    /// port taken, and nothing here may stop that other server.
    fn is_ours(&self) -> bool {
        let reply = self.cli(&["config", "get", "dir"]);
        reply.lines().nth(1).is_some_and(|dir| Path::new(dir.trim()) == self.dir)
    }

    /// Stops the server (as a crash would for what was not yet on disk).
    pub async fn stop(&self) {
        assert!(self.is_ours(), "the server on port {} is not this redis", self.port);
        self.cli(&["shutdown", "nosave"]);
        wait_port("the private redis to stop", self.port, false, Duration::from_secs(10)).await;
    }

    /// Kills the server with SIGKILL.
    pub async fn kill(&self) {
        assert!(self.is_ours(), "the server on port {} is not this redis", self.port);
        let info = self.cli(&["info", "server"]);
        let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).expect("redis pid").trim();
        let pid: i32 = pid.parse().expect("numeric pid");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        wait_port("the killed redis to stop", self.port, false, Duration::from_secs(10)).await;
    }

    pub async fn start_again(&self) {
        self.launch(&[]).await;
    }

    /// Starts the server again with `extra` arguments, on a port it has not had: for a test
    /// whose clients find it again by other means (Sentinel), so no other test can have taken
    /// the port while it was down.
    pub async fn start_again_elsewhere(&mut self, extra: &[&str]) {
        self.port = free_port();
        self.launch(extra).await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.is_ours() {
            self.cli(&["shutdown", "nosave"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A second RabbitMQ node beside the machine's, on ports of its own, for tests that restart the
/// broker. Its directories belong to the `rabbitmq` user, which the server drops to.
pub struct PrivateRabbit {
    pub port: u16,
    pub node: String,
    dir: PathBuf,
    /// The node's open-file limit (`ulimit -n`), when not the one it inherits.
    open_files: Option<u64>,
}

/// The settings of the broker config Cuttle ships (`deploy/rabbitmq/rabbitmq.conf`) that every
/// test node takes: all but loading the topology's definitions (tests declare their own).
pub fn shipped_broker_settings() -> String {
    let path = crate::repo().join("deploy/rabbitmq/rabbitmq.conf");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("load_definitions"))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// The largest message the shipped broker config lets through (its `max_message_size`).
pub fn shipped_max_message_size() -> usize {
    let settings = shipped_broker_settings();
    let value = settings.lines().find_map(|line| line.strip_prefix("max_message_size")?.trim().strip_prefix('='));
    value.and_then(|v| v.trim().parse().ok()).expect("max_message_size in deploy/rabbitmq/rabbitmq.conf")
}

impl PrivateRabbit {
    /// A node with Cuttle's shipped broker settings ([`shipped_broker_settings`]).
    pub async fn start() -> PrivateRabbit {
        PrivateRabbit::start_with_settings(&shipped_broker_settings()).await
    }

    /// A node with `settings` (`rabbitmq.conf` lines) instead of the shipped ones: for a test of
    /// what an agent does behind a broker configured otherwise.
    pub async fn start_with_settings(settings: &str) -> PrivateRabbit {
        let rabbit = PrivateRabbit::prepare(settings);
        rabbit.launch().await;
        rabbit
    }

    /// A node that also listens with TLS (its port: the second value) with `server`'s
    /// certificate, asks clients for a certificate `ca` signed, and lets them log in with it
    /// (EXTERNAL, the user named by the certificate's common name: see [`PrivateRabbit::add_certificate_user`]).
    pub async fn start_tls(ca: &crate::tls::TestCa, server: &crate::tls::Issued) -> (PrivateRabbit, u16) {
        let tls_port = free_port();
        let conf = format!(
            "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\nssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n\
             auth_mechanisms.1 = EXTERNAL\nauth_mechanisms.2 = PLAIN\nssl_cert_login_from = common_name\n",
            ca = ca.cert.display(),
            cert = server.cert.display(),
            key = server.key.display(),
        );
        let rabbit = PrivateRabbit::start_tls_with(&conf, "[rabbitmq_auth_mechanism_ssl].\n", tls_port).await;
        (rabbit, tls_port)
    }

    /// A node with Cuttle's shipped settings and `tls_settings` besides (`rabbitmq.conf` lines
    /// of a TLS listener on `tls_port`), and `plugins` enabled; returns once it listens there.
    pub async fn start_tls_with(tls_settings: &str, plugins: &str, tls_port: u16) -> PrivateRabbit {
        let rabbit = PrivateRabbit::prepare(&shipped_broker_settings());
        let mut config = std::fs::read_to_string(rabbit.dir.join("rabbitmq.conf")).expect("rabbit config");
        config.push_str(tls_settings);
        std::fs::write(rabbit.dir.join("rabbitmq.conf"), config).expect("rabbit config");
        std::fs::write(rabbit.dir.join("enabled_plugins"), plugins).expect("rabbit plugins");
        let _ = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&rabbit.dir).status();
        rabbit.launch().await;
        let what = format!("the private rabbitmq to listen with tls on port {tls_port}");
        let log = rabbit.dir.join("log").join(format!("{}.log", rabbit.node));
        let listening = || async { port_open(tls_port).then_some(()) };
        crate::eventually_explained(&what, Duration::from_secs(30), listening, || tail(&log, 30)).await;
        rabbit
    }

    /// A broker user without a password, for a client certificate named `user`, allowed
    /// everything on the default vhost.
    pub fn add_certificate_user(&self, user: &str) {
        self.ctl(&["-q", "add_user", user, "unused"]);
        self.ctl(&["-q", "clear_password", user]);
        self.ctl(&["-q", "set_permissions", "-p", "/", user, ".*", ".*", ".*"]);
    }

    /// A node started with an open-file limit of `limit` (the broker's default is 1,024), for
    /// measuring how many queues and connections fit under it.
    pub async fn start_with_open_files(limit: u64) -> PrivateRabbit {
        let mut rabbit = PrivateRabbit::prepare(&shipped_broker_settings());
        rabbit.open_files = Some(limit);
        rabbit.launch().await;
        rabbit
    }

    /// A node with its directories and config (its listener, then `settings`) ready, not yet
    /// launched.
    fn prepare(settings: &str) -> PrivateRabbit {
        let name = unique("rabbit").replace('-', "_");
        let dir = PathBuf::from("/tmp").join(&name);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("rabbit dirs");
        }
        let port = free_port();
        // The machine's rabbitmq.conf names its own listener; this node gets a config of its own.
        std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n{settings}"))
            .expect("rabbit config");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("rabbit plugins");
        let _ = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&dir).status();
        PrivateRabbit { port, node: format!("{name}@localhost"), dir, open_files: None }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn launch(&self) {
        let mut command = Command::new("rabbitmq-server");
        if let Some(limit) = self.open_files {
            // The server drops to the rabbitmq user through su, whose PAM session resets the
            // limit; the environment file is read after that.
            let env_file = self.dir.join("rabbitmq-env.conf");
            std::fs::write(&env_file, format!("ulimit -n {limit}\n")).expect("rabbit env file");
            command.env("RABBITMQ_CONF_ENV_FILE", env_file);
        }
        let status = command
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .status()
            .expect("rabbitmq-server is installed");
        assert!(status.success(), "rabbitmq-server failed to start");
        wait_port("the private rabbitmq to listen", self.port, true, Duration::from_secs(90)).await;
    }

    pub(crate) fn ctl(&self, args: &[&str]) {
        let status = Command::new("rabbitmqctl").arg("-n").arg(&self.node).args(args).status().expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }

    /// `rabbitmqctl` output of a query on this node (empty if the node does not answer).
    pub fn query(&self, args: &[&str]) -> String {
        Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Stops the broker application (every connection drops), then starts it again.
    pub async fn restart(&self) {
        self.stop_app().await;
        self.start_app().await;
    }

    /// Stops the broker application: every connection drops, the Erlang node stays up.
    pub async fn stop_app(&self) {
        self.ctl(&["-q", "stop_app"]);
        wait_port("the private rabbitmq to stop listening", self.port, false, Duration::from_secs(30)).await;
    }

    pub async fn start_app(&self) {
        self.ctl(&["-q", "start_app"]);
        wait_port("the private rabbitmq to listen again", self.port, true, Duration::from_secs(60)).await;
    }

    /// The process id of the node's Erlang VM.
    pub fn os_pid(&self) -> i32 {
        let pid = self.query(&["-q", "eval", "os:getpid()."]);
        pid.trim().trim_matches('"').parse().expect("the node's OS pid")
    }

    /// Kills the node's Erlang VM with SIGKILL, as a crashed machine would look.
    pub async fn kill(&self) {
        let pid = self.os_pid();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        wait_port("the killed rabbitmq to stop listening", self.port, false, Duration::from_secs(30)).await;
    }

    /// Starts the node again after [`PrivateRabbit::kill`]; it rejoins its cluster by itself.
    pub async fn relaunch(&self) {
        self.launch().await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("-n").arg(&self.node).args(["-q", "stop"]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_for_test_servers_are_free_and_never_ones_an_outgoing_connection_could_take() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        for _ in 0..100 {
            let port = free_port();
            assert!((PRIVATE_PORTS_FROM..low).contains(&port), "{port} is in the ephemeral range from {low}");
            TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
    }

    /// Another test's server on the port of a Redis that was down: the restart says so, and
    /// dropping the Redis leaves that server running.
    #[tokio::test]
    async fn a_redis_whose_port_was_taken_while_down_says_so_and_stops_nothing_of_the_other() {
        let redis = PrivateRedis::start(false).await;
        redis.stop().await;
        let mut other = PrivateRedis::new(std::env::temp_dir().join(unique("redis")), false, Vec::new());
        other.port = redis.port;
        std::fs::create_dir_all(&other.dir).expect("redis dir");
        other.launch(&[]).await;
        let redis = std::sync::Arc::new(redis);
        let restart = tokio::spawn({
            let redis = redis.clone();
            async move { redis.start_again().await }
        });
        let panic = restart.await.expect_err("the restart fails").into_panic();
        let message = panic.downcast_ref::<String>().expect("a message");
        assert!(message.contains(&format!("another server listens on port {}", other.port)), "{message}");
        drop(redis);
        assert!(other.is_ours(), "the other server still runs");
    }
}
