//! Support for Cuttle's end-to-end tests against the real RabbitMQ and Redis.
//!
//! # Layout
//! - [`TestAgent`]: an agent in this process, with its own id, key prefix and work dir,
//!   removed (queue and keys) when stopped.
//! - [`AgentProcess`]: the real `worker-agent` binary, for tests that kill it.
//! - [`RawBroker`]: publishes arbitrary bytes to an agent and reads replies and dead letters,
//!   for malformed and hand-made messages.
//! - [`ServiceProcess`]: the real `dispatcher serve`, with a journal of its own;
//!   [`dispatcher_command`] builds every command that runs the `dispatcher` binary.
//! - [`Markers`]: files scripts append to, to count how often each really ran.
//! - [`cluster`]: a three-node RabbitMQ cluster, and Redis with a replica and Sentinels.
//! - [`browser`]: headless chromium through chromedriver, for the web view.
//! - [`tls`]: a CA of the test's own and the certificates it signs (openssl).
//! - [`relays`]: a real HTTP proxy, WebSocket relay and TLS router, and a network namespace
//!   from which only they can be reached.
//! - [`trust`]: this process's test keys, wired into every agent and dispatcher tests start.
//! - [`needs`]: what some tests need beyond the shared services (root, servers of their own),
//!   and [`skip_unless!`] to skip, saying why, where it is missing.
//! - [`presence`]: the presence stream as an impostor sees it (read, forge, replay).
//! - [`reference`]: the generated reference in `docs/reference/` (`cargo run -p tests --bin reference`).
//! - [`eventually`]: polls a condition until a deadline.
#![forbid(unsafe_code)]

pub mod agent;
pub mod browser;
pub mod cluster;
pub mod needs;
pub mod presence;
pub mod proxy;
pub mod raw;
pub mod reference;
pub mod relays;
pub mod service;
pub mod services;
pub mod tls;
pub mod trust;

pub use agent::{AgentProcess, TestAgent};
pub use raw::RawBroker;
pub use service::ServiceProcess;

use contracts::submission::retry::Timing;
use dispatcher::orchestrator::Orchestrator;
use dispatcher::rpc::{RpcClient, RpcConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub fn amqp_url() -> String {
    std::env::var("CUTTLE_AMQP_URL").unwrap_or_else(|_| dispatcher::DEFAULT_AMQP_URL.into())
}

pub fn redis_url() -> String {
    std::env::var("CUTTLE_REDIS_URL").unwrap_or_else(|_| worker_agent::config::DEFAULT_REDIS_URL.into())
}

/// The workspace's root directory (the repository).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace")
}

/// The workspace's `rust-version`, from its Cargo.toml.
pub fn rust_version() -> String {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).expect("the workspace's Cargo.toml");
    let line = manifest.lines().find(|l| l.starts_with("rust-version")).expect("rust-version in Cargo.toml");
    line.split('"').nth(1).expect("a quoted version").to_owned()
}

/// A name no other test (or run) uses: `t-<what>-<random>`, or `t-<run>-<what>-<random>` under
/// `deploy/local/test.sh` (`CUTTLE_TEST_RUN`), which lists the queues its run left behind.
/// Pinned to the test agent key (as an agent id and as a pool), so the test dispatchers believe
/// the test agents named after it.
pub fn unique(what: &str) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let name = match std::env::var("CUTTLE_TEST_RUN") {
        Ok(run) if !run.is_empty() => format!("t-{run}-{what}-{suffix}"),
        _ => format!("t-{what}-{suffix}"),
    };
    trust::keys().pin(&name);
    name
}

/// The RPC settings of a test dispatcher: `amqp_url`, this process's test keys.
pub fn rpc_config(amqp_url: String, connect_timeout: Duration) -> RpcConfig {
    RpcConfig {
        amqp_url,
        connect_timeout,
        trust: Some(trust::keys().dispatcher_trust()),
        tls: Default::default(),
        proxy: Default::default(),
    }
}

/// A dispatcher orchestrator connected to the test broker.
pub async fn orchestrator() -> Orchestrator {
    let rpc = RpcClient::connect(rpc_config(amqp_url(), Duration::from_secs(5)))
        .await
        .expect("the test broker must be running (see README)");
    Orchestrator::new(Arc::new(rpc), Timing::default())
}

/// Path of a workspace binary (`worker-agent`, `dispatcher`), built beside the test binary.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (`cargo build --bins`)", path.display());
    path
}

/// The real `dispatcher` binary as tests start it: the test broker and keys, no `RUST_LOG` (so
/// the user's default applies), no stdin. Every test that runs the dispatcher binary builds it here.
pub fn dispatcher_command() -> tokio::process::Command {
    dispatcher_command_at(&binary("dispatcher"))
}

/// [`dispatcher_command`] with a `dispatcher` binary from elsewhere (another version's, for
/// benchmarks that compare two).
pub fn dispatcher_command_at(program: &Path) -> tokio::process::Command {
    let keys = trust::keys();
    let mut command = tokio::process::Command::new(program);
    command
        .env("CUTTLE_AMQP_URL", amqp_url())
        .env("CUTTLE_DISPATCHER_KEY", &keys.dispatcher_key)
        .env("CUTTLE_KNOWN_AGENTS", &keys.known_agents)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    command.kill_on_drop(true);
    command
}

/// Runs the `dispatcher` binary ([`dispatcher_command`]) with `args` to its end (at most 60 s).
pub async fn run_dispatcher(args: &[&str]) -> std::process::Output {
    let output = dispatcher_command().args(args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("dispatcher finishes").expect("dispatcher runs")
}

/// Writes `size` bytes of pseudo-random content (xorshift from `seed`) to `path`, so a misplaced
/// chunk shows.
pub fn write_random(path: &Path, size: usize, seed: u64) {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    std::fs::write(path, bytes).expect("write the file");
}

/// Whether two files hold the same bytes (same size and SHA-256).
pub fn same_content(a: &Path, b: &Path) -> bool {
    dispatcher::transfer::digest_file(a).ok().is_some_and(|d| Some(d) == dispatcher::transfer::digest_file(b).ok())
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits (at most `within`) for a dispatcher to end: its exit code and stderr.
pub async fn ended(child: tokio::process::Child, within: Duration) -> (Option<i32>, String) {
    let out = tokio::time::timeout(within, child.wait_with_output()).await;
    let out = out.expect("the dispatcher ends in time").expect("dispatcher output");
    (out.status.code(), text(&out.stderr))
}

/// Starts `submit --json` of a long script (`echo started; sleep 30`) on the in-process agent
/// and waits until it runs: its ticket, and the child (killed when dropped).
pub async fn submit_running(agent: &TestAgent) -> (String, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;
    let mut child = dispatcher_command()
        .args(["submit", "--json", "--target", agent.id(), "--", "echo started; sleep 30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dispatcher runs");
    let mut first = String::new();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
    stdout.read_line(&mut first).await.expect("the ticket event");
    let event: serde_json::Value = serde_json::from_str(&first).expect("a JSON event");
    let ticket = event["ticket"].as_str().expect("a ticket").to_owned();
    eventually("the script to run", Duration::from_secs(10), || async { (agent.agent.running() == 1).then_some(()) })
        .await;
    (ticket, child)
}

/// An agent's queue with nobody consuming it: an agent declared it and stopped consuming (its
/// `stop` removes the queue).
pub async fn queue_without_agent(what: &str) -> TestAgent {
    let agent = TestAgent::start(what).await;
    agent.stop_consuming().await;
    let queue = contracts::wire::topology::agent_queue(agent.id());
    eventually("the agent to stop consuming", Duration::from_secs(20), || async {
        (raw::consumer_count(&queue).await == 0).then_some(())
    })
    .await;
    agent
}

/// The real `worker-agent` binary as tests start it, with nothing but the test broker and Redis
/// and the test keys in its environment (`run` and its flags are the caller's).
pub fn agent_command() -> tokio::process::Command {
    agent_command_at(&binary("worker-agent"))
}

/// [`agent_command`] with a `worker-agent` binary from elsewhere (another version's).
pub fn agent_command_at(program: &Path) -> tokio::process::Command {
    agent_environment(tokio::process::Command::new(program))
}

/// [`agent_command`] started by `launcher` (a program and its first arguments, such as
/// `ip netns exec NAME`), which runs the `worker-agent` binary.
pub fn agent_command_via(launcher: &[&str]) -> tokio::process::Command {
    let (program, args) = launcher.split_first().expect("a launcher program");
    let mut command = tokio::process::Command::new(program);
    command.args(args).arg(binary("worker-agent"));
    agent_environment(command)
}

fn agent_environment(mut command: tokio::process::Command) -> tokio::process::Command {
    let keys = trust::keys();
    command
        .env("CUTTLE_AGENT_KEY", &keys.agent_key)
        .env("CUTTLE_TRUSTED_KEYS", &keys.trusted_keys)
        .env("CUTTLE_AMQP_URL", amqp_url())
        .env("CUTTLE_REDIS_URL", redis_url())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `command` with its stdout and stderr on a terminal (a new pseudo-terminal), as a user
/// at a shell would: its exit status and everything it wrote there (newlines as `\r\n`).
pub async fn output_on_terminal(command: tokio::process::Command) -> (std::process::ExitStatus, Vec<u8>) {
    on_terminal(command, None).await
}

/// [`output_on_terminal`] with standard input on the terminal too, where the user types `typed`.
pub async fn output_on_terminal_typing(
    command: tokio::process::Command,
    typed: &[u8],
) -> (std::process::ExitStatus, Vec<u8>) {
    on_terminal(command, Some(typed)).await
}

async fn on_terminal(
    mut command: tokio::process::Command,
    typed: Option<&[u8]>,
) -> (std::process::ExitStatus, Vec<u8>) {
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let stderr = pty.slave.try_clone().expect("terminal fd");
    if typed.is_some() {
        command.stdin(std::process::Stdio::from(pty.slave.try_clone().expect("terminal fd")));
    }
    command.stdout(std::process::Stdio::from(pty.slave)).stderr(std::process::Stdio::from(stderr));
    let mut child = command.spawn().expect("command starts");
    // The command holds the terminal's other copies: without them, reading ends with the child.
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    if let Some(typed) = typed {
        // Held by the terminal's line discipline until the command reads its line.
        std::io::Write::write_all(&mut master.try_clone().expect("terminal fd"), typed).expect("typed");
    }
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        // A pty's reader gets EIO once the last writer has gone.
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        out
    });
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("ends within 60s").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("terminal drained").unwrap();
    (status, out)
}

/// `GET path` on an HTTP server: its status and body, or `None` if it does not answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `check` every 50 ms until it gives `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, check, String::new).await
}

/// [`eventually`], whose panic adds what `explain` says then (a server's log, say).
pub async fn eventually_explained<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
    explain: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // A check that hangs counts as not yet, and cannot outlive the deadline.
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, check()).await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            let explained = explain();
            let sep = if explained.is_empty() { "" } else { "\n" };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{explained}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGINT (Ctrl-C) to a child process, as a terminal would.
pub fn sigint(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal the child");
}

/// Whether process `pid` has ended: gone from `/proc`, or a zombie nobody reaped yet.
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// The process id a script wrote to `file` (`echo $$ > FILE`), once it has.
pub async fn script_pid(file: &Path) -> u32 {
    eventually("the script to write its process id", Duration::from_secs(20), || async {
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    })
    .await
}

/// A directory of marker files: a script appends a line to `$MARKERS/<name>` each time it runs.
pub struct Markers {
    pub dir: PathBuf,
}

impl Markers {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("markers"));
        std::fs::create_dir_all(&dir).expect("marker dir");
        Markers { dir }
    }

    /// A shell snippet that records one run of `name`.
    pub fn record(&self, name: &str) -> String {
        format!("echo run >> '{}'", self.dir.join(name).display())
    }

    /// How many times `name` ran.
    pub fn count(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.join(name)).map(|s| s.lines().count()).unwrap_or(0)
    }
}

impl Default for Markers {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Markers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The most scripts that were running at the same moment, from the `start NS` / `end NS` lines
/// (nanosecond clock readings) that scripts append to a file.
pub fn max_overlap(spans: &str) -> usize {
    let mut events: Vec<(u128, i32)> = spans
        .lines()
        .filter_map(|l| {
            let (what, ns) = l.split_once(' ')?;
            Some((ns.trim().parse().ok()?, if what == "start" { 1 } else { -1 }))
        })
        .collect();
    // At the same instant, an end comes before a start.
    events.sort();
    let (mut running, mut most) = (0, 0);
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    most as usize
}

/// A script spec running `script` in `sh`.
pub fn sh(script: impl Into<String>) -> contracts::wire::messages::ScriptSpec {
    contracts::wire::messages::ScriptSpec { script: script.into(), ..Default::default() }
}

/// Submits a script with the default policy and collects its log lines.
pub async fn submit(
    orchestrator: &Orchestrator,
    route: &dispatcher::route::Route,
    spec: contracts::wire::messages::ScriptSpec,
) -> (contracts::submission::outcome::Outcome, Vec<contracts::wire::status::LogLine>) {
    let lines = std::sync::Mutex::new(Vec::new());
    let events = |event| {
        if let dispatcher::orchestrator::Event::Log(line) = event {
            lines.lock().expect("lines").push(line);
        }
    };
    let policy = contracts::submission::retry::RetryPolicy::new(Duration::from_secs(30));
    let outcome = orchestrator.submit(route, spec, policy, &events, &tokio_util::sync::CancellationToken::new()).await;
    (outcome, lines.into_inner().expect("lines"))
}

/// The text of the lines from one stream.
pub fn texts(lines: &[contracts::wire::status::LogLine], stream: contracts::wire::status::LogStream) -> Vec<String> {
    lines.iter().filter(|l| l.stream == stream).map(|l| l.text.clone()).collect()
}

/// Everything Redis holds under `prefix` (every value of every key, whatever its type), as text,
/// for tests that check what is (not) stored.
pub async fn redis_text(prefix: &str) -> String {
    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut con).await.unwrap();
    let mut text = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut con).await.unwrap();
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
            "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
            _ => continue,
        };
        let value: redis::Value = command.query_async(&mut con).await.unwrap_or(redis::Value::Nil);
        text.push_str(&key);
        flatten(&value, &mut text);
        text.push('\n');
    }
    text
}

/// The bytes of every string in a reply, lossily as text, each after a space.
fn flatten(value: &redis::Value, text: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => {
            text.push(' ');
            text.push_str(&String::from_utf8_lossy(bytes));
        }
        redis::Value::SimpleString(s) => {
            text.push(' ');
            text.push_str(s);
        }
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().for_each(|v| flatten(v, text)),
        redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten(k, text);
            flatten(v, text);
        }),
        _ => {}
    }
}

/// The lines Redis writes under `MONITOR` (one per command it runs, those inside Lua scripts
/// included), of `redis-cli monitor` on the tests' Redis, once it has started: the process
/// (killed when dropped) and its lines.
pub async fn redis_monitor(
) -> (tokio::process::Child, tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) {
    use tokio::io::AsyncBufReadExt;
    let mut monitor = tokio::process::Command::new("redis-cli")
        .args(["-u", &redis_url(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli runs (it comes with Redis)");
    let mut lines = tokio::io::BufReader::new(monitor.stdout.take().expect("piped")).lines();
    let ok = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    assert!(matches!(&ok, Ok(Ok(Some(line))) if line == "OK"), "MONITOR did not start: {ok:?}");
    (monitor, lines)
}
