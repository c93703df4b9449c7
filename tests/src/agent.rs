//! Agents for tests: in-process ([`TestAgent`]) or the real binary ([`AgentProcess`]). Each has
//! its own id (so its own queue), Redis key prefix and work dir, all removed when it stops.

use crate::{amqp_url, eventually, redis_url, unique};
use contracts::wire::topology::agent_queue;
use lapin::options::QueueDeleteOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use worker_agent::config::AgentConfig;
use worker_agent::service::Agent;

/// A configuration for a fresh test agent.
pub fn test_config(what: &str) -> AgentConfig {
    let id = unique(what);
    let mut config = AgentConfig::new(&id);
    config.amqp_url = amqp_url();
    config.redis_url = redis_url();
    config.key_prefix = format!("{id}:");
    config.work_dir = std::env::temp_dir().join("cuttle-tests").join(&id);
    config.lease_ttl = Duration::from_secs(3);
    let keys = crate::trust::keys();
    config.key_file = Some(keys.agent_key.clone());
    config.trusted_keys_file = Some(keys.trusted_keys.clone());
    age_store(&config);
    config
}

/// Gives a test agent's fresh key prefix a ticket store in use for a minute already, as a
/// production store is: an agent serves a store whose data is younger than the clock-skew
/// allowance only once the allowance has passed (`contracts::agent::young_store_wait_ms`), which
/// would hold up every test agent by 5 s. Tests of a new store use a prefix of their own.
fn age_store(config: &AgentConfig) {
    let began = contracts::time::unix_millis(std::time::SystemTime::now()) - 60_000;
    let epoch = format!("{began}-tests");
    let aged = redis::Client::open(config.redis_url.as_str()).and_then(|client| client.get_connection()).and_then(
        |mut con| {
            redis::cmd("SET").arg(format!("{}epoch", config.key_prefix)).arg(epoch).arg("NX").query::<()>(&mut con)
        },
    );
    if let Err(error) = aged {
        eprintln!("could not age the test store of {}: {error}", config.agent_id);
    }
}

/// A configuration for a fresh legacy (script v1) test agent: it cannot sign, so it runs unsigned
/// commands (`--insecure-allow-unsigned`, as `--protocol v1` requires) and is pinned `legacy`.
pub fn legacy_config(what: &str) -> AgentConfig {
    let mut config = test_config(what);
    config.protocol = worker_agent::config::Protocol::V1;
    config.insecure_allow_unsigned = true;
    crate::trust::keys().pin_legacy(&config.agent_id);
    config
}

/// An agent running in the test's own runtime.
pub struct TestAgent {
    pub config: AgentConfig,
    pub agent: Arc<Agent>,
    shutdown: CancellationToken,
    left: CleanupOnDrop,
}

impl TestAgent {
    pub async fn start(what: &str) -> TestAgent {
        TestAgent::start_with(test_config(what)).await
    }

    /// Starts an agent and waits until it consumes its queue.
    pub async fn start_with(config: AgentConfig) -> TestAgent {
        std::fs::create_dir_all(&config.work_dir).expect("work dir");
        let shutdown = CancellationToken::new();
        let (agent, serving) =
            worker_agent::start(config.clone(), worker_agent::metrics::Metrics::default(), shutdown.clone())
                .await
                .expect("agent keys")
                .expect("agent starts");
        let mut ready = agent.readiness();
        tokio::time::timeout(Duration::from_secs(15), ready.wait_for(|r| *r))
            .await
            .expect("agent ready within 15s")
            .expect("readiness");
        let left = CleanupOnDrop { config: Some(config.clone()), serving: Some((shutdown.clone(), serving)) };
        TestAgent { config, agent, shutdown, left }
    }

    pub fn id(&self) -> &str {
        &self.config.agent_id
    }

    pub fn route(&self) -> dispatcher::route::Route {
        dispatcher::route::Route::agent(self.id()).expect("valid id")
    }

    /// Stops consuming, leaving running scripts and the store as they are (for restart tests).
    pub async fn stop_consuming(&self) {
        self.shutdown.cancel();
    }

    /// Stops the agent and its scripts, and removes its queue, keys and work dir. Bounded, so a
    /// test that failed to stop cleanly still ends.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let serving = self.left.serving.take().map(|(_, serving)| serving);
        let stopping = async {
            if let Some(serving) = serving {
                let _ = serving.await;
            }
            self.agent.stop_scripts().await;
        };
        if tokio::time::timeout(Duration::from_secs(30), stopping).await.is_err() {
            eprintln!("agent {} did not stop within 30s", self.config.agent_id);
        }
        cleanup(&self.config).await;
        self.left.done();
    }
}

/// Cleans up after a test agent the test never stopped (it failed or panicked first): its queue,
/// keys and work dir, as [`cleanup`] does, so that failed tests leave no quorum queues behind
/// (each holds file handles on the broker).
struct CleanupOnDrop {
    config: Option<AgentConfig>,
    /// An in-process agent's shutdown and serving task: stopped, and waited for, before its
    /// queue is deleted, since an agent still serving declares its queue again.
    serving: Option<(CancellationToken, worker_agent::Serving)>,
}

impl CleanupOnDrop {
    fn new(config: &AgentConfig) -> CleanupOnDrop {
        CleanupOnDrop { config: Some(config.clone()), serving: None }
    }

    /// Cleaned up already.
    fn done(&mut self) {
        self.config = None;
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let Some(config) = self.config.take() else { return };
        let serving = self.serving.take().map(|(shutdown, serving)| {
            shutdown.cancel();
            serving.abort();
            serving
        });
        // On a thread with a runtime of its own: the test's may be the one unwinding. The
        // aborted task ends on the test's runtime; one whose only thread is this one never
        // does, hence the bound.
        let cleaning = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                runtime.block_on(async {
                    if let Some(serving) = serving {
                        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
                    }
                    cleanup(&config).await;
                });
            }
        });
        let _ = cleaning.join();
    }
}

/// Removes everything a test agent left: its queue, its Redis keys and its work dir.
pub async fn cleanup(config: &AgentConfig) {
    if tokio::time::timeout(Duration::from_secs(15), remove_queue_and_keys(config)).await.is_err() {
        eprintln!("cleanup of {} timed out", config.agent_id);
    }
    let _ = std::fs::remove_dir_all(&config.work_dir);
}

async fn remove_queue_and_keys(config: &AgentConfig) {
    // The first node of a cluster's list that answers, reached as the agent reaches it (through
    // its proxy, or its WebSocket relay).
    for url in config.amqp_url.split(',') {
        let connect = edge::connect::broker::connect(url, "cuttle test cleanup", &config.amqp_tls, &config.proxy);
        let Ok(connection) = connect.await else {
            continue;
        };
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel.queue_delete(agent_queue(&config.agent_id).into(), QueueDeleteOptions::default()).await;
        }
        let _ = connection.close(200, "test cleanup".into()).await;
        break;
    }
    if let Ok(client) = redis::Client::open(config.redis_url.as_str()) {
        if let Ok(mut con) = client.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", config.key_prefix))
                .query_async(&mut con)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut con).await;
            }
        }
    }
}

/// The real `worker-agent` binary, for tests that kill it.
pub struct AgentProcess {
    pub config: AgentConfig,
    /// Killed when dropped, before `left` cleans up.
    child: Option<tokio::process::Child>,
    pub log: PathBuf,
    left: CleanupOnDrop,
}

impl AgentProcess {
    /// Starts the binary with `config` (as flags) and waits until it consumes its queue.
    pub async fn start(config: AgentConfig) -> AgentProcess {
        let command = Self::command(&config);
        let process = Self::spawn_command(config, command);
        process.wait_ready().await;
        process
    }

    /// Starts the binary with `config` (as flags), `flags` and `env` besides, and waits until it
    /// consumes its queue.
    pub async fn start_with(config: AgentConfig, flags: &[&str], env: &[(&str, &str)]) -> AgentProcess {
        let mut command = Self::command(&config);
        command.args(flags).envs(env.iter().copied());
        let process = Self::spawn_command(config, command);
        process.wait_ready().await;
        process
    }

    /// Starts `command` (from [`crate::agent_command`], with the test's own flags and environment) as
    /// the agent described by `config` (used to clean up after it), without waiting for it.
    /// Its stderr goes to [`AgentProcess::log`].
    pub fn spawn_command(config: AgentConfig, command: tokio::process::Command) -> AgentProcess {
        let log = std::env::temp_dir().join(format!("{}.log", config.agent_id));
        let child = Self::spawn(command, &log);
        let left = CleanupOnDrop::new(&config);
        AgentProcess { config, child: Some(child), log, left }
    }

    /// The log the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command that starts the agent `config` describes, every setting as a flag.
    pub fn command(config: &AgentConfig) -> tokio::process::Command {
        Self::command_at(&crate::binary("worker-agent"), config)
    }

    /// [`AgentProcess::command`] with a `worker-agent` binary from elsewhere (another version's).
    pub fn command_at(program: &std::path::Path, config: &AgentConfig) -> tokio::process::Command {
        Self::with_flags(crate::agent_command_at(program), config)
    }

    /// [`AgentProcess::command`] started by `launcher` ([`crate::agent_command_via`]).
    pub fn command_via(launcher: &[&str], config: &AgentConfig) -> tokio::process::Command {
        Self::with_flags(crate::agent_command_via(launcher), config)
    }

    /// `command` given `run` and every setting of `config` as a flag.
    fn with_flags(mut command: tokio::process::Command, config: &AgentConfig) -> tokio::process::Command {
        command
            .args(["run", "--agent-id", &config.agent_id, "--key-prefix", &config.key_prefix])
            .arg("--work-dir")
            .arg(&config.work_dir)
            .args(["--lease-ttl", &format!("{}ms", config.lease_ttl.as_millis())])
            .args(["--protocol", if config.protocol == worker_agent::config::Protocol::V1 { "v1" } else { "v2" }])
            .args(config.pool.iter().flat_map(|pool| ["--pool", pool.as_str()]))
            .args(["--store", if config.store == worker_agent::config::StoreKind::Local { "local" } else { "redis" }])
            .args(config.max_scripts.iter().flat_map(|n| ["--max-scripts".to_string(), n.to_string()]))
            .args(
                config.queue_expiry.iter().flat_map(|e| ["--queue-expiry".to_string(), format!("{}ms", e.as_millis())]),
            )
            .args(config.labels.iter().flat_map(|(k, v)| ["--label".to_string(), format!("{k}={v}")]))
            .args(["--announce-interval", &format!("{}ms", config.announce_interval.as_millis())])
            .args(config.pass_env.iter().flat_map(|name| ["--pass-env", name.as_str()]))
            .args(["--max-output", &config.max_output.to_string()])
            .args(
                config
                    .transfer_roots
                    .iter()
                    .flat_map(|root| [std::ffi::OsStr::new("--transfer-root"), root.as_os_str()]),
            )
            .args(config.key_file.iter().flat_map(|key| [std::ffi::OsStr::new("--key"), key.as_os_str()]))
            .args(
                config
                    .trusted_keys_file
                    .iter()
                    .flat_map(|keys| [std::ffi::OsStr::new("--trusted-keys"), keys.as_os_str()]),
            )
            .args(config.insecure_allow_unsigned.then_some("--insecure-allow-unsigned"))
            .env("CUTTLE_AMQP_URL", &config.amqp_url)
            .env("CUTTLE_REDIS_URL", &config.redis_url)
            .envs(
                (!config.redis_sentinels.is_empty())
                    .then(|| {
                        [
                            ("CUTTLE_REDIS_SENTINELS", config.redis_sentinels.join(",")),
                            ("CUTTLE_REDIS_SERVICE", config.redis_service.clone()),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .args(["--claim-replicas", &config.claim_replicas.to_string()]);
        command
    }

    fn spawn(mut command: tokio::process::Command, log: &PathBuf) -> tokio::process::Child {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("agent log");
        command
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("start worker-agent")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Waits until the process consumes its queue (it logs so at `info`).
    pub async fn wait_ready(&self) {
        let log = self.log.clone();
        eventually("the agent process to consume its queue", Duration::from_secs(20), || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).ok().filter(|s| s.contains("consuming commands")).map(|_| ()) }
        })
        .await;
    }

    /// Kills the process with SIGKILL, leaving its scripts' state as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = child.wait().await.expect("wait for agent");
        self.child = None;
        status
    }

    /// Starts the binary again with the same configuration (after a kill).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the agent before restarting it");
        std::fs::write(&self.log, "").expect("truncate agent log");
        self.child = Some(Self::spawn(Self::command(&self.config), &self.log));
        self.wait_ready().await;
    }

    pub async fn stop(mut self) {
        self.kill().await;
        cleanup(&self.config).await;
        self.left.done();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a queue exists, by a passive declare on a connection of its own.
    async fn queue_exists(queue: &str) -> bool {
        let connection = lapin::Connection::connect(&crate::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = channel.queue_declare(queue.into(), passive, lapin::types::FieldTable::default()).await;
        let _ = connection.close(200, "done".into()).await;
        declared.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agents_a_test_never_stopped_leave_no_queue_behind() {
        let agent = TestAgent::start("left-behind").await;
        let queue = agent_queue(agent.id());
        let connection = format!("cuttle-agent {}", agent.id());
        assert!(queue_exists(&queue).await);
        drop(agent);
        assert!(!queue_exists(&queue).await, "the in-process agent's queue is removed");
        // Stopped first: an agent still serving declares its queue again as it reconnects.
        crate::eventually("the dropped agent to close its connection", Duration::from_secs(10), || async {
            let listed = std::process::Command::new("rabbitmqctl")
                .args(["-q", "--no-table-headers", "list_connections", "client_properties"])
                .output()
                .ok()?;
            (listed.status.success() && !String::from_utf8_lossy(&listed.stdout).contains(&connection)).then_some(())
        })
        .await;
        assert!(!queue_exists(&queue).await, "nor declared again");

        let process = AgentProcess::start(test_config("left-behind-process")).await;
        let queue = agent_queue(&process.config.agent_id);
        assert!(queue_exists(&queue).await);
        drop(process);
        assert!(!queue_exists(&queue).await, "the agent process's queue is removed");
    }
}
