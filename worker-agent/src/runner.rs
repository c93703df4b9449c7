//! Runs one claimed script: waits for its isolation mutex, prepares its workspace, starts the
//! shell in its own process group, streams its output to the log, keeps the ticket's lease alive,
//! and records how it ended. Cancel and execution timeout kill the whole process group.

use crate::isolation::{IsolationGuard, Mutexes};
use crate::limits::ScriptCgroup;
use crate::metrics::Metrics;
use crate::output::{self, LogSender, Progress};
use crate::programs::DEFAULT_PATH;
use crate::store::AgentStore;
use crate::workspace;
use contracts::backoff::Backoff;
use contracts::store::record::{RecordState, TicketRecord};
use contracts::store::{Release, TicketKeys};
use contracts::time::short;
use contracts::wire::exit_code;
use contracts::wire::messages::{ScriptLimits, ScriptSpec};
use contracts::wire::status::{LogLine, LogStream};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long output is still read after the script's main process ended, for pipes held open by
/// processes it left behind.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// Scripts up to this size run as `sh -c SCRIPT` (Linux limits one argument to 128 KiB);
/// larger ones are written to [`SCRIPT_FILE`] in the workspace first.
const INLINE_SCRIPT_BYTES: usize = 64 * 1024;
const SCRIPT_FILE: &str = "script.sh";

/// Everything one run needs.
pub(crate) struct Run {
    pub store: AgentStore,
    pub keys: TicketKeys,
    /// The record as claimed, and its exact stored value (for compare-and-set).
    pub record: TicketRecord,
    pub record_raw: String,
    pub spec: ScriptSpec,
    pub workspace: PathBuf,
    pub cancel: CancellationToken,
    pub progress: watch::Sender<Progress>,
    pub mutexes: Arc<Mutexes>,
    pub lease_ttl: Duration,
    pub record_ttl: Duration,
    /// Variables of the agent's environment passed on to the script (`--pass-env`).
    pub pass_env: Arc<[String]>,
    pub metrics: Metrics,
    /// Bytes of the script's output stored at most (`--max-output`).
    pub max_output: u64,
    /// The user the script runs as, when not the agent's own ([`crate::run_as`]), or why it
    /// may not run as the one its command names.
    pub run_as: Result<Option<String>, contracts::agent::run_as::RunAsRefusal>,
    /// The limits the script runs within ([`crate::limits`]), or why it may not have those its
    /// command names (refused before the claim already).
    pub limits: Result<ScriptLimits, contracts::agent::limits::LimitRefusal>,
    /// Whether a memory limit is a resource limit of each process (no memory controller).
    pub memory_by_rlimit: bool,
    /// Where the script's cgroup is made.
    pub cgroups: Arc<crate::limits::Cgroups>,
    /// The chain the run's receipt joins, and the dispatcher key its start came under.
    pub ledger: Arc<crate::receipts::Ledger>,
    pub provenance: contracts::agent::flow::environment::Provenance,
}

/// Why a script stopped before its own end.
enum Interrupted {
    Cancelled,
    TimedOut,
}

impl Run {
    /// Runs the script to its end and records the outcome, which it gives back. Never fails:
    /// every failure becomes an exit code in the record and a line in the log.
    pub(crate) async fn execute(mut self) -> i32 {
        let ticket = self.keys.ticket.clone();
        let masker = crate::mask::Masker::new(self.spec.secret_env.iter().map(|(_, value)| value));
        let (log, writer) = output::spawn_writer(
            masker,
            self.store.clone(),
            self.keys.clone(),
            self.record_ttl,
            self.max_output,
            self.progress.clone(),
        );
        let lease = self.keep_lease();
        let started_at = edge::clock::now_ms();
        let exit = self.run_script(&log).await;
        drop(log);
        let written = writer.await.unwrap_or_default();
        let next_seq = written.next_seq;
        lease.cancel();
        // The receipt first: a run read as ended then always has one.
        let ended = crate::receipts::Ended {
            ticket: ticket.clone(),
            command_digest: self.record.digest.clone(),
            provenance: self.provenance.clone(),
            started_at,
            ended_at: edge::clock::now_ms(),
            exit_code: exit,
            output: Some(written.digest.finish()),
        };
        self.ledger.record(ended).await;
        self.finish(exit, next_seq - 1, &written.last_lines).await;
        self.progress.send_modify(|p| {
            p.next_log_sequence = next_seq;
            p.complete = true;
        });
        tracing::info!(ticket = %ticket, exit_code = exit, "script ended");
        exit
    }

    async fn run_script(&mut self, log: &LogSender) -> i32 {
        let _guard = match self.take_mutex(log).await {
            Ok(guard) => guard,
            Err(code) => return code,
        };
        let user = match &self.run_as {
            Ok(user) => user.as_deref(),
            Err(refusal) => {
                log.note(format!("not run: {refusal}")).await;
                return exit_code::FATAL;
            }
        };
        let account = match user.map(crate::run_as::account).transpose() {
            Ok(account) => account,
            Err(error) => {
                log.note(format!("could not run the script as its user: {error}")).await;
                return exit_code::FATAL;
            }
        };
        if let Err(error) = self.prepare_workspace(account.as_ref()).await {
            log.note(format!("could not prepare the workspace: {error}")).await;
            return exit_code::FATAL;
        }
        let Some(shell) = self.spec.shell.program() else {
            log.note("unknown shell").await;
            return exit_code::SHELL_NOT_STARTED;
        };
        // From the agent's own PATH: the command's PATH (in its env) is the script's business,
        // never where its shell comes from.
        let Some(shell_path) = crate::programs::resolve_program(shell, std::env::var_os("PATH").as_deref()) else {
            log.note(format!("could not start {shell}: not found on the agent's PATH")).await;
            return exit_code::SHELL_NOT_STARTED;
        };
        if self.cancelled_before_spawn().await {
            log.note("script cancelled before it started").await;
            return exit_code::CANCELLED;
        }
        // What runs before the shell: the limits' wrapper, then the change of user.
        let mut argv: Vec<OsString> = Vec::new();
        let cgroup = match &self.limits {
            Ok(limits) if limits.is_empty() => None,
            Ok(limits) => match self.cgroups.create(&self.keys.ticket, limits) {
                Ok(cgroup) => {
                    argv.extend(crate::limits::argv(cgroup.as_ref(), limits, self.memory_by_rlimit));
                    cgroup
                }
                Err(error) => {
                    log.note(format!("could not make the script's cgroup: {error}")).await;
                    return exit_code::FATAL;
                }
            },
            Err(refusal) => {
                log.note(format!("not run: {refusal}")).await;
                return exit_code::FATAL;
            }
        };
        if let Some(account) = &account {
            let Some(setpriv) = crate::run_as::setpriv() else {
                log.note(format!("could not start {shell} as {}: setpriv is not on the agent's PATH", account.name))
                    .await;
                remove_cgroup(cgroup).await;
                return exit_code::SHELL_NOT_STARTED;
            };
            argv.extend(crate::run_as::argv(&setpriv, account));
        }
        argv.push(shell_path.into_os_string());
        let mut command = tokio::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        if self.spec.script.len() <= INLINE_SCRIPT_BYTES {
            // `sh -c SCRIPT sh ARGS...`: $0 is the shell, $1.. the args, as for a script file.
            command.arg("-c").arg(&self.spec.script).arg(shell);
        } else {
            command.arg(self.workspace.join(SCRIPT_FILE));
        }
        let mut child = match command
            .args(&self.spec.args)
            .env_clear()
            .envs(script_environment(
                &self.pass_env,
                account.as_ref(),
                &self.spec.env,
                &self.keys.ticket,
                &self.record.agent_id,
            ))
            .envs(self.spec.secret_env.iter())
            .current_dir(&self.workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                log.note(format!("could not start {shell}: {error}")).await;
                remove_cgroup(cgroup).await;
                return exit_code::SHELL_NOT_STARTED;
            }
        };
        let pid = child.id();
        let stop_reading = CancellationToken::new();
        let read = |pipe, stream| tokio::spawn(output::read_lines(pipe, stream, log.clone(), stop_reading.clone()));
        let readers = [
            read(Box::new(child.stdout.take().expect("piped")) as Box<dyn AsyncRead + Send + Unpin>, LogStream::Stdout),
            read(Box::new(child.stderr.take().expect("piped")), LogStream::Stderr),
        ];
        let timeout = self.spec.execution_timeout.map(Duration::from_millis);
        let interrupted = tokio::select! {
            status = child.wait() => Err(status),
            _ = self.cancel.cancelled() => Ok(Interrupted::Cancelled),
            _ = sleep_or_forever(timeout) => Ok(Interrupted::TimedOut),
        };
        let code = match interrupted {
            Err(Ok(status)) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(Err(error)) => {
                log.note(format!("lost track of the script: {error}")).await;
                exit_code::FATAL
            }
            Ok(reason) => {
                kill_group(pid);
                let _ = child.wait().await;
                let (code, note) = match reason {
                    Interrupted::Cancelled => (exit_code::CANCELLED, "script cancelled".to_owned()),
                    Interrupted::TimedOut => (
                        exit_code::EXECUTION_TIMEOUT,
                        format!("script ran past its execution timeout of {}", short(timeout.unwrap_or_default())),
                    ),
                };
                log.note(note).await;
                code
            }
        };
        let code = match (&cgroup, &self.limits) {
            (Some(cgroup), Ok(limits)) => self.limit_outcome(cgroup, limits, code, log).await,
            _ => code,
        };
        // Pipes still open after PIPE_DRAIN are held by processes the script left behind: stop
        // reading them, but store every line already read (the store may be slow).
        let drained = futures_util::future::join_all(readers);
        tokio::pin!(drained);
        if tokio::time::timeout(PIPE_DRAIN, &mut drained).await.is_err() {
            stop_reading.cancel();
            drained.await;
        }
        if let (Some(cgroup), Ok(limits)) = (&cgroup, &self.limits) {
            // Read only now: processes the script left behind may have kept forking.
            self.note_forks_refused(cgroup, limits, log).await;
        }
        remove_cgroup(cgroup).await;
        log.finish().await;
        code
    }

    /// Tells the log how many forks the task limit refused, if any.
    async fn note_forks_refused(&self, cgroup: &ScriptCgroup, limits: &ScriptLimits, log: &LogSender) {
        let forks = cgroup.forks_refused();
        if forks > 0 {
            let tasks = limits.tasks_max.unwrap_or_default();
            log.note(format!("the script reached its task limit of {tasks}: {forks} forks were refused")).await;
            self.metrics.limit_reached("tasks");
        }
    }

    /// The outcome of a script that ended with `code` in `cgroup`, told in its log: killed for
    /// its memory limit (a process of it was, and it did not succeed after), or stopped past its
    /// file size limit.
    async fn limit_outcome(&self, cgroup: &ScriptCgroup, limits: &ScriptLimits, code: i32, log: &LogSender) -> i32 {
        if code != 0 && cgroup.oom_killed() {
            let memory = contracts::agent::limits::bytes(limits.memory_max.unwrap_or_default());
            log.note(format!("the script passed its memory limit of {memory} and was killed")).await;
            self.metrics.limit_reached("memory");
            return exit_code::MEMORY_LIMIT;
        }
        if code == 128 + nix::libc::SIGXFSZ && limits.file_size_max.is_some() {
            let size = contracts::agent::limits::bytes(limits.file_size_max.unwrap_or_default());
            log.note(format!("a process of the script passed its file size limit of {size} and was stopped")).await;
            self.metrics.limit_reached("file_size");
        }
        code
    }

    /// Takes the isolation mutex, telling the log when it has to wait and giving up at the
    /// mutex timeout or on cancel.
    async fn take_mutex(&mut self, log: &LogSender) -> Result<Option<IsolationGuard>, i32> {
        let Some((name, exclusive)) = self.spec.mutex() else {
            return Ok(None);
        };
        let name = name.to_owned();
        let guard = match self.mutexes.try_acquire(&name, exclusive) {
            Some(guard) => guard,
            None => {
                log.note(format!("waiting for isolation mutex {name:?}")).await;
                let timeout = self.spec.mutex_timeout.map(Duration::from_millis);
                let waiting = std::time::Instant::now();
                let waited = tokio::select! {
                    guard = self.mutexes.acquire(&name, exclusive) => Ok(guard),
                    _ = self.cancel.cancelled() => {
                        log.note("script cancelled while waiting for its isolation mutex").await;
                        Err(exit_code::CANCELLED)
                    }
                    _ = sleep_or_forever(timeout) => {
                        log.note(format!(
                            "gave up waiting for isolation mutex {name:?} after {}",
                            short(timeout.unwrap_or_default())
                        )).await;
                        Err(exit_code::MUTEX_TIMEOUT)
                    }
                };
                self.metrics.mutex_waited(waiting.elapsed());
                waited?
            }
        };
        if self.record.state == RecordState::Claimed {
            let running = TicketRecord { state: RecordState::Running, ..self.record.clone() };
            self.update_record(running, Release::Nothing, &[]).await;
        }
        Ok(Some(guard))
    }

    /// Whether a cancel came before the process starts: to this process, or flagged in the store
    /// by a cancel that came just after the claim (read while renewing the lease).
    async fn cancelled_before_spawn(&self) -> bool {
        if self.cancel.is_cancelled() {
            return true;
        }
        match self.store.cancel_requested(&self.keys).await {
            Ok(requested) => requested,
            Err(error) => {
                tracing::warn!(ticket = %self.keys.ticket, %error, "could not look for a cancel before starting");
                false
            }
        }
    }

    /// Creates the workspace with the script's files in it, owned by `account` when the script
    /// runs as another user (so it reads them and writes there, and no one else does).
    async fn prepare_workspace(&self, account: Option<&crate::run_as::Account>) -> std::io::Result<()> {
        let owner = account.map(|account| (account.uid, account.gid));
        workspace::create_workspace(&self.workspace, owner)?;
        for file in &self.spec.files {
            workspace::write_private_file(&self.workspace.join(&file.name), &file.content, owner).await?;
        }
        if self.spec.script.len() > INLINE_SCRIPT_BYTES {
            let script = self.workspace.join(SCRIPT_FILE);
            workspace::write_private_file(&script, self.spec.script.as_bytes(), owner).await?;
        }
        Ok(())
    }

    /// Renews the lease until the returned token is cancelled; a cancel flagged in the store
    /// (by a worker that is not this one) cancels the run.
    fn keep_lease(&self) -> CancellationToken {
        let stop = CancellationToken::new();
        let (store, keys, owner, ttl, cancel) =
            (self.store.clone(), self.keys.clone(), self.record.owner.clone(), self.lease_ttl, self.cancel.clone());
        let stopped = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match store.renew_lease(&keys, &owner, ttl).await {
                    Ok(renewal) => {
                        if !renewal.held {
                            tracing::error!(ticket = %keys.ticket, "lease lost while the script runs; its status will read as unknown result");
                        }
                        if renewal.cancel_requested && !cancel.is_cancelled() {
                            tracing::info!(ticket = %keys.ticket, "cancel requested through the store");
                            cancel.cancel();
                        }
                    }
                    Err(error) => {
                        tracing::warn!(ticket = %keys.ticket, %error, "could not renew lease")
                    }
                }
            }
        });
        stop
    }

    /// Records the end, with how many lines the script wrote and the last of them (the writer's
    /// last batch, stored with the end in one step): a status can then name any the store loses
    /// after the last one it holds.
    async fn finish(&mut self, exit: i32, lines_written: u64, last_lines: &[LogLine]) {
        let done = self.record.completed(exit);
        self.update_record(done, Release::Ended { lines_written }, last_lines).await;
    }

    /// Writes the next record by compare-and-set (a run's end with its `last_lines`), retrying
    /// while the store is unreachable.
    async fn update_record(&mut self, next: TicketRecord, release: Release, last_lines: &[LogLine]) {
        let raw = next.encode();
        // 100 ms after a blip, at most every 2 s while the store stays away.
        let mut backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let written = match release {
                Release::Ended { lines_written } => {
                    let logs_ttl = Some(self.record_ttl);
                    self.store.end_run(&self.keys, &self.record_raw, &next, last_lines, lines_written, logs_ttl).await
                }
                release => self.store.compare_and_set(&self.keys, &self.record_raw, &next, None, release).await,
            };
            match written {
                Ok(true) => break,
                Ok(false) => {
                    tracing::error!(ticket = %self.keys.ticket, state = ?next.state, "ticket record changed under its owner; not overwriting it");
                    break;
                }
                Err(error) => {
                    tracing::warn!(ticket = %self.keys.ticket, %error, "could not update ticket record; retrying");
                    tokio::time::sleep(backoff.next_pause()).await;
                }
            }
        }
        self.record = next;
        self.record_raw = raw;
    }
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Kills the script's whole process group (its shell is the group leader).
/// Removes a script's cgroup, if it had one, with whatever it left running.
async fn remove_cgroup(cgroup: Option<ScriptCgroup>) {
    if let Some(cgroup) = cgroup {
        cgroup.remove().await;
    }
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let group = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(error) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(pid, %error, "could not kill the script's process group");
    }
}

/// Variables of the agent's own environment every script gets (when the agent has them).
const BASE_ENVIRONMENT: [&str; 4] = ["PATH", "HOME", "USER", "LANG"];

/// A script's whole environment: [`BASE_ENVIRONMENT`] and the variables the operator passes on
/// (`--pass-env`) from the agent's environment, then the command's own `env`, then
/// `CUTTLE_TICKET` and `CUTTLE_AGENT_ID`. Nothing else of the agent's environment (its broker and
/// store URLs with their passwords above all) reaches the script.
fn script_environment(
    pass_env: &[String],
    account: Option<&crate::run_as::Account>,
    command_env: &BTreeMap<String, String>,
    ticket: &str,
    agent_id: &str,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = BASE_ENVIRONMENT
        .iter()
        .copied()
        .chain(pass_env.iter().map(String::as_str))
        .filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)))
        .collect();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    if let Some(account) = account {
        env.extend(crate::run_as::environment(account).map(|(name, value)| (name.into(), value)));
    }
    env.extend(command_env.iter().map(|(k, v)| (k.into(), v.into())));
    env.insert("CUTTLE_TICKET".into(), ticket.into());
    env.insert("CUTTLE_AGENT_ID".into(), agent_id.into());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_run_as_another_user_gets_that_users_home_names_and_a_system_path_its_command_may_change() {
        let account =
            crate::run_as::Account { name: "nobody".into(), uid: 65534, gid: 65534, home: "/nonexistent".into() };
        let command_env = BTreeMap::from([("LOGNAME".to_owned(), "chosen".to_owned())]);
        let env = script_environment(&[], Some(&account), &command_env, "t-1", "agent-1");
        let get = |name: &str| env.get(std::ffi::OsStr::new(name)).map(|v| v.to_string_lossy().into_owned());
        assert_eq!(get("HOME").as_deref(), Some("/nonexistent"));
        assert_eq!(get("USER").as_deref(), Some("nobody"));
        assert_eq!(get("LOGNAME").as_deref(), Some("chosen"), "the command's own variables come last");
        assert_eq!(get("PATH").as_deref(), Some(crate::run_as::USER_PATH), "not the agent's PATH");
    }

    #[test]
    fn scripts_get_a_minimal_environment_and_their_own() {
        let command_env = BTreeMap::from([("PATH".to_owned(), "/opt/x".to_owned()), ("A".to_owned(), "1".to_owned())]);
        let env = script_environment(&["CARGO".to_owned()], None, &command_env, "t-1", "agent-1");
        let names: Vec<_> = env.keys().map(|k| k.to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| [
            "PATH",
            "HOME",
            "USER",
            "LANG",
            "CARGO",
            "A",
            "CUTTLE_TICKET",
            "CUTTLE_AGENT_ID"
        ]
        .contains(&n.as_str())));
        assert_eq!(env[&OsString::from("PATH")], "/opt/x");
        assert_eq!(env[&OsString::from("CUTTLE_TICKET")], "t-1");
        assert!(env.contains_key(&OsString::from("CARGO")), "cargo sets CARGO for tests");
    }
}
