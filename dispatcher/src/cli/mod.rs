//! The `dispatcher` command line: parses arguments, prints events, maps outcomes to exit codes.

/// `println!` for the dispatcher's stdout: see [`print_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

mod broker;
mod fleet;
mod service;
mod terminal;

use crate::bench;
use crate::budget::{Limits, Share};
use crate::event::JsonEvent;
use crate::fanout::{NotStarted, Progress, TargetResult};
use crate::negotiate::{AgentKind, ProtocolMode, ScriptProtocol};
use crate::orchestrator::{Event, Orchestrator, Policies, Timing};
use crate::outcome::{exit, Outcome, OutcomeKind};
use crate::plan::{self, Plan, PolicyChoice, ScriptDraft, ScriptInputs, Targets};
use crate::policy::{Overrides, PolicyConfig, PolicyError, Purpose};
use crate::retry::RetryPolicy;
use crate::route::Route;
use crate::rpc::{RpcClient, RpcConfig};
use crate::trust::{DispatcherTrust, TrustFiles};
use crate::RpcError;
use clap::{Args, Parser, Subcommand, ValueEnum};
use contracts::{Isolation, LogStream, ScriptSpec, Shell, Ticket};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0-255  the script's own exit code (submit, status --follow)
  2      bad usage, or a script file that cannot be read
  101    cannot reach the broker
  102    no such agent: no queue exists for the target
  103    rejected by the agent (ticket conflict, expired, invalid, unsupported)
  104    the agent does not know the ticket
  105    outcome unknown: the agent running the script was lost, or contact was lost for good
         (the script is left running; a transfer's link was lost: run it again to resume)
  106    cancelled
  107    the script ran past --timeout and was killed
  108    the script timed out waiting for its isolation mutex
  109    the agent could not run the script (shell did not start, agent failure)
  110    no answer from the agent before the retry deadline
  111    fan-out: targets were not started because the error budget was spent (only when no
         started target's own code comes first)
  112    interrupted (Ctrl-C) before the script was sent: nothing ran
  130    status --follow: left on Ctrl-C; the script goes on (`cancel` stops it)
With --json the last line is a `result` event that says which of these happened.";

#[derive(Parser, Debug)]
#[command(name = "dispatcher", version, about = "Cuttle dispatcher: run scripts on remote agents through RabbitMQ, exactly once, over bad networks", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// RabbitMQ URL; for a cluster, the URL of each node, separated by commas: the dispatcher
    /// starts at a random one and moves to the next when it loses the one in use.
    #[arg(long, global = true, env = "CUTTLE_AMQP_URL", default_value = crate::DEFAULT_AMQP_URL, hide_env_values = true, value_parser = contracts::AmqpEndpoints::check_list)]
    pub amqp_url: String,
    /// CA certificate(s) (PEM) that signed the broker's certificate, trusted besides the
    /// system's roots, for `amqps://` URLs.
    #[arg(long, global = true, env = "CUTTLE_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the broker; unless the URL names an
    /// `auth_mechanism`, the dispatcher then logs in with it (EXTERNAL: the user is the
    /// certificate's name, no password). Needs --amqp-client-key.
    #[arg(long, global = true, env = "CUTTLE_AMQP_CLIENT_CERT", requires = "amqp_client_key")]
    pub amqp_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --amqp-client-cert.
    #[arg(long, global = true, env = "CUTTLE_AMQP_CLIENT_KEY", requires = "amqp_client_cert")]
    pub amqp_client_key: Option<PathBuf>,
    /// `v1` speaks only script v1, without capabilities or retries, as dispatchers did before
    /// resilient communications; `auto` asks each agent what it supports.
    #[arg(long, global = true, value_enum, default_value_t = ProtocolMode::Auto)]
    pub protocol: ProtocolMode,
    /// How long to wait for the broker to accept a connection.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// The service's journal (Redis URL): `serve` records in it; `history`, `status TICKET`
    /// (without --target) and `submit --detach` use it.
    #[arg(long, global = true, env = "CUTTLE_JOURNAL_URL", hide_env_values = true)]
    pub journal: Option<String>,
    /// Prefix of the journal's Redis keys (several services can share one Redis).
    #[arg(long, global = true, env = "CUTTLE_JOURNAL_PREFIX", default_value = crate::service::journal::DEFAULT_PREFIX)]
    pub journal_prefix: String,
    /// Pass control characters in script output through to a terminal as they are; without it,
    /// output printed to a terminal shows them escaped (`\x1b[2J`), so a script cannot drive the
    /// user's terminal. Output to a file or pipe is always passed on as it is.
    #[arg(long, global = true)]
    pub raw: bool,
    /// The dispatcher's secret key, which signs every request; agents run only what a key in
    /// their --trusted-keys file signed [default: <config dir>/cuttle/dispatcher.key, created on
    /// first use; <config dir> is $XDG_CONFIG_HOME or ~/.config].
    #[arg(long = "key", global = true, env = "CUTTLE_DISPATCHER_KEY")]
    pub key: Option<PathBuf>,
    /// The agents' pinned public keys: lines `<agent-id> ed25519:<base64>`, `pool:<name>
    /// ed25519:<base64>` (several per pool or agent allowed), or `<agent-id> legacy` (an old
    /// agent that cannot sign); answers not signed by the pinned key are ignored as forged
    /// [default: <config dir>/cuttle/known_agents].
    #[arg(long, global = true, env = "CUTTLE_KNOWN_AGENTS")]
    pub known_agents: Option<PathBuf>,
    /// Refuse answers that do not name the request they answer (agents that predate
    /// answer-binding/v1), instead of believing them with a warning: such an agent can be made to
    /// answer your request with its answer to a message someone else sent under its ids.
    #[arg(long, global = true, env = "CUTTLE_STRICT_ANSWERS")]
    pub strict_answers: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// Whether the command sends requests to agents, and so signs them.
    fn sends_requests(&self) -> bool {
        match self {
            Command::Submit(args) => !args.detach,
            Command::Status(args) => !args.ticket.target.target.is_empty() || args.ticket.target.pool.is_some(),
            Command::Cancel(_)
            | Command::Capabilities(_)
            | Command::Health(_)
            | Command::Bench(_)
            | Command::Serve(_)
            | Command::Upload(_)
            | Command::Download(_) => true,
            Command::History(_)
            | Command::Agents(_)
            | Command::Keygen(_)
            | Command::PublicKey
            | Command::SetupBroker(_)
            | Command::EnrolAgent(_)
            | Command::EnrolPool(_) => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a script on an agent and stream its output; exits with the script's exit code.
    #[command(after_help = EXIT_CODES_HELP)]
    Submit(Box<SubmitArgs>),
    /// Show (or follow) a script started earlier, by its ticket.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(StatusArgs),
    /// Cancel a script by its ticket and wait until it has stopped.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel(TicketArgs),
    /// Show what an agent supports, its version, and whether retries will be used.
    Capabilities(CapabilitiesArgs),
    /// Check several agents at once: protocol, services, version and retries for each (exit code
    /// of the last unreachable one, 0 if all answered); an agent not consuming its queue is down
    /// at once unless --wait.
    Health(HealthArgs),
    /// Run many `echo hello` scripts over the whole path and report latency and throughput.
    Bench(BenchArgs),
    /// Run the HTTP API service: scripts submitted, journaled, followed and resumed after a
    /// restart (see README "The service").
    Serve(service::ServeArgs),
    /// List tickets from the service's journal, newest first.
    History(service::HistoryArgs),
    /// List the live agents (from their announcements through the broker): id, pool, labels,
    /// version, running scripts, last seen.
    Agents(fleet::AgentsArgs),
    /// Copy a local file to an agent (below one of its --transfer-root directories), in chunks,
    /// resumable (run it again after an interruption) and verified with SHA-256.
    #[command(after_help = EXIT_CODES_HELP)]
    Upload(UploadArgs),
    /// Copy a file from an agent (below one of its --transfer-root directories), in chunks,
    /// resumable and verified with SHA-256.
    #[command(after_help = EXIT_CODES_HELP)]
    Download(DownloadArgs),
    /// Write a new Ed25519 secret key (mode 0600; an existing file is never overwritten) and print
    /// its public key, `ed25519:<base64>`, for the agents' trusted-keys files.
    Keygen(KeygenArgs),
    /// Print the public key of the dispatcher's key (--key), for the agents' trusted-keys files.
    PublicKey,
    /// Operator step, with an administrator's broker URL: declare the exchanges, the presence
    /// stream and a bounded dead-letter queue, and print the permissions of the dispatcher and
    /// KEDA users (README, "Least privilege on the broker").
    SetupBroker(broker::SetupBrokerArgs),
    /// Operator step, with an administrator's broker URL: declare an agent's queue and binding
    /// and print the permissions its user needs to run with --enrolled.
    EnrolAgent(broker::EnrolAgentArgs),
    /// Operator step, with an administrator's broker URL: declare a pool's queues and bindings
    /// and print the permissions its workers' user needs to run with --enrolled and ids
    /// POOL.NAME (each declares only its own queue).
    EnrolPool(broker::EnrolPoolArgs),
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret key.
    #[arg(long)]
    pub out: PathBuf,
}

/// Prints the public key of the dispatcher's key (the default one unless `key` names another).
fn public_key(key: Option<PathBuf>) -> ExitCode {
    let loaded = TrustFiles::resolve(key, None)
        .map_err(|e| e.to_string())
        .and_then(|files| contracts::trust::SecretKey::load(&files.key).map_err(|e| e.to_string()));
    match loaded {
        Ok(key) => {
            println!("{}", key.public());
            ExitCode::SUCCESS
        }
        Err(error) => usage_error(error),
    }
}

/// Writes a new key to `out` and prints its public key on stdout (the one line to copy).
fn keygen(args: &KeygenArgs) -> ExitCode {
    match contracts::trust::SecretKey::create(&args.out) {
        Ok(key) => {
            eprintln!("dispatcher: wrote a new secret key to {} (mode 0600); its public key:", args.out.display());
            println!("{}", key.public());
            ExitCode::SUCCESS
        }
        Err(error) => usage_error(error.to_string()),
    }
}

#[derive(Args, Debug)]
pub struct TransferTarget {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The local file.
    pub local: PathBuf,
    /// Where it goes on the agent: absolute, or relative to its first transfer root.
    pub remote: String,
    #[command(flatten)]
    pub on: TransferTarget,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The file on the agent: absolute, or relative to its first transfer root.
    pub remote: String,
    /// Where it goes locally.
    pub local: PathBuf,
    #[command(flatten)]
    pub on: TransferTarget,
}

#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// Agent to run on (`submit` takes several: `--target a --target b`).
    #[arg(long)]
    pub target: Vec<String>,
    /// Worker pool to run on (any worker of the pool).
    #[arg(long)]
    pub pool: Option<String>,
}

impl TargetArgs {
    fn route(&self) -> Result<Route, String> {
        match (self.target.as_slice(), &self.pool) {
            ([agent], _) => Route::agent(agent),
            ([], Some(pool)) => Route::pool(pool),
            ([_, _, ..], _) => Err("this command takes one --target".into()),
            _ => Err("give --target or --pool".into()),
        }
    }

    /// Every target given (`submit` fans out over several).
    fn routes(&self) -> Result<Vec<Route>, String> {
        let targets = match &self.pool {
            Some(pool) => Targets::Pool(pool.clone()),
            None if self.target.is_empty() => return Err("give --target or --pool".into()),
            None => Targets::Agents { ids: self.target.clone(), given_as: "--target" },
        };
        plan::routes(targets).map_err(|e| e.to_string())
    }
}

#[derive(Args, Debug, Clone)]
pub struct RetryArgs {
    /// Machine policies file (TOML): retry durations per purpose, targets and pools mapped to
    /// policies. Without one, every target gets the built-in `default` (2m30s, retries on).
    #[arg(long, env = "CUTTLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Policy to use instead of the one the target maps to.
    #[arg(long)]
    pub policy: Option<String>,
    /// What the requests are for; picks the policy's retry duration.
    #[arg(long, value_enum)]
    pub purpose: Option<Purpose>,
    /// How long to keep repeating a request that got no answer, first attempt included
    /// [default: the policy's, 2m30s unless configured].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_duration: Option<Duration>,
    /// Fail on the first communication error instead of retrying.
    #[arg(long)]
    pub no_retries: bool,
}

impl RetryArgs {
    /// The policies file, read once per command (the built-in `default` without one).
    fn config(&self) -> Result<PolicyConfig, PolicyError> {
        plan::load_policies(self.config.as_deref())
    }

    /// The policy and overrides these flags ask for.
    fn choice(&self) -> PolicyChoice {
        let overrides = Overrides { retry_duration: self.retry_duration, no_retries: self.no_retries };
        PolicyChoice { policy: self.policy.clone(), purpose: self.purpose, overrides }
    }

    /// The retry policy for `route` and this command's purpose (`--purpose`, else the default).
    fn policy(&self, route: &Route, default_purpose: Purpose) -> Result<RetryPolicy, PolicyError> {
        self.choice().retry(&self.config()?, route, default_purpose)
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ShellArg {
    Sh,
    Bash,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IsolationArg {
    None,
    Full,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Script file to run.
    #[arg(long, conflicts_with = "command")]
    pub script: Option<PathBuf>,
    /// The script as words after `--`, e.g. `-- 'echo hi; exit 3'`.
    #[arg(last = true, required_unless_present = "script")]
    pub command: Vec<String>,
    /// Shell that runs the script.
    #[arg(long, value_enum, default_value_t = ShellArg::Sh)]
    pub shell: ShellArg,
    /// Bound on the script's run time on the agent; it is killed past it (exit 107).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// `full` runs the script alone among scripts holding its mutex on the agent.
    #[arg(long, value_enum, default_value_t = IsolationArg::None)]
    pub isolation: IsolationArg,
    /// Isolation mutex name [default with --isolation full: RunningScript].
    #[arg(long)]
    pub mutex: Option<String>,
    /// Longest wait for the isolation mutex (exit 108 past it) [default: wait as long as it takes].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub mutex_timeout: Option<Duration>,
    /// Environment variable for the script, `NAME=VALUE` (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// A file put into the script's workspace before it starts, `LOCAL[:NAME]` (repeatable;
    /// NAME defaults to LOCAL's file name). Script, files, arguments and environment together
    /// must fit in one command (15 MiB); send larger files with `dispatcher upload` first.
    #[arg(long = "file", value_name = "LOCAL[:NAME]", value_parser = parse_file_arg)]
    pub files: Vec<FileArg>,
    /// An argument for the script, its `$1`, `$2`, ... in the order given (repeatable).
    #[arg(long = "arg", value_name = "VALUE", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// A secret environment variable, `NAME=VALUE` (repeatable): set for the script, replaced by
    /// `********` in every output line by the agent, never logged nor journaled. Other users of
    /// this machine may see a command line: prefer --secret-env-file.
    #[arg(long = "secret-env", value_name = "NAME=VALUE", value_parser = parse_secret, conflicts_with = "detach")]
    pub secret_env: Vec<SecretArg>,
    /// A file of secret environment variables, one `NAME=VALUE` per line (blank lines and lines
    /// starting with `#` are skipped), treated as --secret-env (repeatable).
    #[arg(long = "secret-env-file", value_name = "FILE", conflicts_with = "detach")]
    pub secret_env_file: Vec<PathBuf>,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// With several targets: how many run at once, a count or a percentage of the targets
    /// (rounded up, at least 1).
    #[arg(long, default_value = "10", value_parser = parse_share)]
    pub max_parallel: Share,
    /// With several targets: failures tolerated, a count or a percentage of the targets (rounded
    /// down); once more have failed, no new target starts, running ones finish, and the rest are
    /// reported as not started [default: no limit].
    #[arg(long, value_parser = parse_share, conflicts_with = "detach")]
    pub max_errors: Option<Share>,
    /// Once --max-errors is exceeded, cancel the targets still running instead of letting them
    /// finish.
    #[arg(long, requires = "max_errors")]
    pub abort_on_error: bool,
    /// Run on the live agents (as they announce themselves now) matching all of these
    /// comma-separated terms: `key=value`, `key!=value` (`id` and `pool` match the agent's id
    /// and pool); the list is printed first, and an empty match is refused (exit 102).
    #[arg(long, group = "TargetArgs", value_parser = fleet::parse_selector, conflicts_with = "detach")]
    pub select: Option<contracts::labels::Selector>,
    /// Print one JSON event per line instead of the script's output.
    #[arg(long)]
    pub json: bool,
    /// Record the submission in the journal (--journal), print its ticket and return: a
    /// `dispatcher serve` on that journal runs and follows it.
    #[arg(long)]
    pub detach: bool,
}

fn parse_share(raw: &str) -> Result<Share, String> {
    raw.parse().map_err(|e: crate::budget::ShareError| e.to_string())
}

/// `--file LOCAL[:NAME]`.
#[derive(Clone, Debug)]
pub struct FileArg {
    pub local: PathBuf,
    pub name: String,
}

fn parse_file_arg(raw: &str) -> Result<FileArg, String> {
    // A colon followed by a plain name renames; any other colon belongs to the path.
    let (local, name) = match raw.rsplit_once(':') {
        Some((local, name)) if !local.is_empty() && !name.is_empty() && !name.contains('/') => {
            (PathBuf::from(local), name.to_owned())
        }
        _ => {
            let local = PathBuf::from(raw);
            let name = local.file_name().ok_or_else(|| format!("{raw:?} names no file"))?;
            (local.clone(), name.to_string_lossy().into_owned())
        }
    };
    Ok(FileArg { local, name })
}

/// `--secret-env NAME=VALUE`; `Debug` shows the name only.
#[derive(Clone)]
pub struct SecretArg(String, String);

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.0, contracts::SECRET_MASK)
    }
}

fn parse_secret(raw: &str) -> Result<SecretArg, String> {
    // Never echo the value in an error.
    let (name, value) = raw.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok(SecretArg(name.to_owned(), value.to_owned()))
}

/// The secrets of `--secret-env` and `--secret-env-file`; a name given twice is refused.
fn secrets_of(args: &SubmitArgs) -> Result<contracts::Secrets, String> {
    let mut given: Vec<(String, String, String)> =
        args.secret_env.iter().map(|SecretArg(k, v)| (k.clone(), v.clone(), "--secret-env".to_owned())).collect();
    for path in &args.secret_env_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| format!("{} line {}: expected NAME=VALUE", path.display(), number + 1))?;
            given.push((name.trim().to_owned(), value.to_owned(), path.display().to_string()));
        }
    }
    let mut secrets = contracts::Secrets::default();
    for (name, value, from) in given {
        if secrets.insert(name.clone(), value).is_some() {
            return Err(format!("secret {name} is given twice (again in {from})"));
        }
    }
    Ok(secrets)
}

fn files_of(args: &SubmitArgs) -> Result<Vec<contracts::ScriptFile>, String> {
    let mut files = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let size = std::fs::metadata(&file.local).map(|m| m.len()).unwrap_or(0);
        if size > contracts::MAX_SCRIPT_SPEC_BYTES as u64 {
            return Err(format!(
                "{} is {size} bytes, over the {} bytes one command can carry; send it with `dispatcher upload` first",
                file.local.display(),
                contracts::MAX_SCRIPT_SPEC_BYTES
            ));
        }
        let content =
            std::fs::read(&file.local).map_err(|e| format!("cannot read file {}: {e}", file.local.display()))?;
        files.push(contracts::ScriptFile { name: file.name.clone(), content });
    }
    Ok(files)
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {raw:?}"))?;
    if name.is_empty() {
        return Err("empty variable name".into());
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[derive(Args, Debug)]
pub struct TicketArgs {
    /// The ticket printed by `submit`.
    pub ticket: Ticket,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Print JSON events.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub ticket: TicketArgs,
    /// Keep following the output until the script ends; exit with its exit code. Ctrl-C leaves
    /// (exit 130) and the script goes on: `dispatcher cancel` stops it.
    #[arg(long)]
    pub follow: bool,
}
// Without --target or --pool, `status` reads the journal (see `service::status_from_journal`).

#[derive(Args, Debug)]
pub struct CapabilitiesArgs {
    /// Agent id.
    pub agent: String,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[arg(long)]
    pub json: bool,
    /// Wait for an agent that is not consuming its queue (up to the retry duration) instead of
    /// reporting it down at once.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Agent ids.
    #[arg(required = true)]
    pub agents: Vec<String>,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[arg(long)]
    pub json: bool,
    /// Wait for agents that are not consuming their queue (up to the retry duration) instead of
    /// reporting them down at once.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Scripts to run.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Scripts in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Prints events as text (script output to stdout/stderr, notices to stderr) or JSON lines.
struct Printer {
    json: bool,
    /// Whether log lines are printed (not for `cancel`).
    logs: bool,
    /// With several targets: this one's name, put before its lines and in its JSON events.
    target: Option<String>,
    /// With several targets on a terminal: the progress bar to keep below the output.
    progress: Option<Arc<ProgressBar>>,
    /// Whether the agent said it discarded output past its `--max-output`.
    truncated: AtomicBool,
}

/// A one-line progress bar on stderr, redrawn after output (only when stderr is a terminal).
struct ProgressBar {
    state: std::sync::Mutex<(usize, usize, usize, usize)>, // total, running, done, failed
}

impl ProgressBar {
    fn new(total: usize) -> Self {
        ProgressBar { state: std::sync::Mutex::new((total, 0, 0, 0)) }
    }

    fn update(&self, change: &Progress) {
        let mut state = self.state.lock().expect("progress");
        match change {
            Progress::Started { .. } => state.1 += 1,
            Progress::Finished(report) => {
                state.1 -= 1;
                state.2 += 1;
                state.3 += usize::from(crate::fanout::failed(report));
            }
            // Not started: no longer pending, and neither done nor failed.
            Progress::NotStarted { .. } => state.0 -= 1,
        }
        Self::draw(&state);
    }

    fn draw(state: &(usize, usize, usize, usize)) {
        let (total, running, done, failed) = *state;
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        eprint!(
            "\r\x1b[K[{}{}] {done}/{total} done, {running} running, {failed} failed",
            "#".repeat(filled),
            ".".repeat(width - filled)
        );
    }

    /// Runs `print` with the bar cleared, then puts the bar back.
    fn around(&self, print: impl FnOnce()) {
        let state = self.state.lock().expect("progress");
        eprint!("\r\x1b[K");
        print();
        Self::draw(&state);
    }

    fn finish(&self) {
        eprintln!();
    }
}

impl Printer {
    fn event(&self, event: Event) {
        match &self.progress {
            Some(bar) => bar.around(|| self.print(event)),
            None => self.print(event),
        }
    }

    fn print(&self, event: Event) {
        if let Event::Log(line) = &event {
            if line.stream == LogStream::Agent && line.text.starts_with(contracts::OUTPUT_TRUNCATED) {
                self.truncated.store(true, Ordering::Relaxed);
            }
        }
        if self.json {
            if matches!(event, Event::Log(_)) && !self.logs {
                return;
            }
            let line = JsonEvent::from_event(&event);
            match &self.target {
                Some(target) => outln!("{}", line.with_target(target)),
                None => outln!("{line}"),
            }
            return;
        }
        let prefix = self.target.as_ref().map(|t| format!("[{t}] ")).unwrap_or_default();
        match event {
            Event::Ticket { ticket, target } => eprintln!("cuttle: {prefix}ticket {ticket} on {target}"),
            Event::Log(line) if !self.logs => drop(line),
            Event::Log(line) => match line.stream {
                LogStream::Stdout => outln!("{prefix}{}", terminal::out(&line.text)),
                LogStream::Stderr => eprintln!("{prefix}{}", terminal::err(&line.text)),
                LogStream::Agent | LogStream::Unknown => {
                    eprintln!("cuttle: {prefix}[agent] {}", terminal::err(&line.text))
                }
            },
            Event::Retry { request, notice } => eprintln!(
                "cuttle: {prefix}{request} attempt {} failed: {}; retrying, {} left",
                notice.attempt,
                terminal::err(&notice.error.to_string()),
                crate::retry::short(Duration::from_secs(notice.time_left.as_secs())),
            ),
            Event::Notice(message) => eprintln!("cuttle: {prefix}{}", terminal::err(&message)),
            Event::Warning(message) => eprintln!("cuttle: {prefix}warning: {}", terminal::err(&message)),
        }
    }

    /// Prints how it ended and gives the exit code.
    fn outcome(&self, outcome: &Outcome) -> ExitCode {
        if self.json {
            outln!("{}", JsonEvent::result(outcome, Some(self.truncated.load(Ordering::Relaxed))));
            return ExitCode::from(outcome.process_exit);
        }
        if self.truncated.load(Ordering::Relaxed) {
            eprintln!("cuttle: output truncated: the agent kept only the first part of the script's output (its --max-output)");
        }
        if outcome.outcome != OutcomeKind::Completed {
            let what = match outcome.outcome {
                OutcomeKind::Cancelled => "cancelled",
                OutcomeKind::Unknown => "outcome unknown",
                _ => "failed",
            };
            eprintln!("cuttle: {what}: {}", terminal::err(outcome.error.as_deref().unwrap_or("no reason given")));
        }
        ExitCode::from(outcome.process_exit)
    }
}

/// Writes one line to stdout. Once stdout is closed (`dispatcher ... --json | head -1`), the
/// dispatcher leaves at once and quietly, as a program killed by SIGPIPE would (exit 141).
pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exit::STDOUT_CLOSED.into());
        }
    }
}

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("cuttle: {message}");
    ExitCode::from(exit::USAGE)
}

/// Ctrl-C once cancels the script (the token); twice exits at once.
fn interrupt_on_ctrl_c() -> CancellationToken {
    let interrupt = CancellationToken::new();
    let token = interrupt.clone();
    let mut sigint = sigint();
    tokio::spawn(async move {
        if sigint.recv().await.is_none() {
            return;
        }
        eprintln!("cuttle: interrupted; stopping (Ctrl-C again to leave without waiting)");
        token.cancel();
        if sigint.recv().await.is_some() {
            eprintln!("cuttle: left without waiting; the script may still be running");
            std::process::exit(exit::CANCELLED as i32);
        }
    });
    interrupt
}

/// Ctrl-C (SIGINT), listened for from now on: a Ctrl-C that comes before the first wait on it
/// is kept, never left to its default (ending the process).
fn sigint() -> tokio::signal::unix::Signal {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("a SIGINT handler")
}

/// The script spec `submit`'s flags describe: the script file read, then (once the script is
/// checked) the files and secret files.
fn script_spec(args: &SubmitArgs) -> Result<ScriptSpec, String> {
    let script = match &args.script {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read script file {}: {e}", path.display()))?
        }
        None => args.command.join(" "),
    };
    let draft = ScriptDraft {
        script,
        shell: match args.shell {
            ShellArg::Sh => Shell::Sh,
            ShellArg::Bash => Shell::Bash,
        },
        args: args.args.clone(),
        env: args.env.iter().cloned().collect(),
        isolation: match args.isolation {
            IsolationArg::None => Isolation::None,
            IsolationArg::Full => Isolation::Full,
        },
        mutex: args.mutex.clone(),
    };
    plan::script_spec(draft, || {
        let files = files_of(args)?;
        let secret_env = secrets_of(args)?;
        Ok(ScriptInputs { files, secret_env, mutex_timeout: args.mutex_timeout, timeout: args.timeout })
    })
}

/// Runs one parsed command and gives the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    terminal::set_raw(cli.raw);
    let trust = match cli.command.sends_requests() {
        false => None,
        true => match TrustFiles::resolve(cli.key.clone(), cli.known_agents.clone())
            .and_then(|f| DispatcherTrust::load(&f))
        {
            Ok(trust) => Some(Arc::new(trust.with_strict_answers(cli.strict_answers))),
            Err(error) => return usage_error(error),
        },
    };
    let tls_files = contracts::tls::TlsFiles {
        ca_file: cli.amqp_ca_file.clone(),
        client_cert: cli.amqp_client_cert.clone(),
        client_key: cli.amqp_client_key.clone(),
    };
    let tls = match tls_files.load() {
        Ok(tls) => tls,
        Err(error) => return usage_error(error),
    };
    let rpc_config = RpcConfig { amqp_url: cli.amqp_url.clone(), connect_timeout: cli.connect_timeout, trust, tls };
    let metrics = crate::metrics::Metrics::default();
    let rpc = Arc::new(RpcClient::new(rpc_config.clone()).with_metrics(metrics.clone()));
    let orchestrator =
        Orchestrator::new(rpc.clone(), Timing::default()).with_protocol(cli.protocol).with_metrics(metrics);
    let journal = service::JournalOptions { url: cli.journal, prefix: cli.journal_prefix };
    let code = match cli.command {
        Command::Submit(args) if args.detach => service::submit_detached(&journal, &args).await,
        Command::Submit(args) => submit(&orchestrator, &rpc_config, *args).await,
        Command::Status(args) if args.ticket.target.target.is_empty() && args.ticket.target.pool.is_none() => {
            service::status_from_journal(&journal, &args.ticket.ticket, args.follow, args.ticket.json).await
        }
        Command::Status(args) => status(&orchestrator, args).await,
        Command::Cancel(args) => cancel(&orchestrator, args).await,
        Command::Capabilities(args) => capabilities(&orchestrator, args).await,
        Command::Health(args) => health(&orchestrator, args).await,
        Command::Bench(args) => bench(&orchestrator, args).await,
        Command::Serve(args) => service::serve(&orchestrator, &journal, args).await,
        Command::History(args) => service::history(&journal, args).await,
        Command::Agents(args) => agents(&rpc_config, cli.key, cli.known_agents, args).await,
        Command::Upload(args) => transfer(&orchestrator, &args.on, &args.local, &args.remote, true).await,
        Command::Download(args) => transfer(&orchestrator, &args.on, &args.local, &args.remote, false).await,
        Command::Keygen(args) => keygen(&args),
        Command::PublicKey => public_key(cli.key),
        Command::SetupBroker(args) => broker::setup_broker(&rpc_config, &args).await,
        Command::EnrolAgent(args) => broker::enrol_agent(&rpc_config, &args).await,
        Command::EnrolPool(args) => broker::enrol_pool(&rpc_config, &args).await,
    };
    rpc.close().await;
    code
}

/// `dispatcher agents`, believing the announcements the known agents' pins vouch for (no key
/// needed: nothing is signed).
async fn agents(
    rpc_config: &RpcConfig,
    key: Option<PathBuf>,
    known_agents: Option<PathBuf>,
    args: fleet::AgentsArgs,
) -> ExitCode {
    let file = match TrustFiles::resolve(key, known_agents) {
        Ok(files) => files.known_agents,
        Err(error) => return usage_error(error),
    };
    let known = match crate::trust::read_known(&file) {
        Ok(known) => known,
        Err(error) => return usage_error(format!("known agents: {error}")),
    };
    fleet::agents(rpc_config, &fleet::Pins { known: &known, file: &file }, args).await
}

async fn submit(orchestrator: &Orchestrator, rpc_config: &RpcConfig, args: SubmitArgs) -> ExitCode {
    // Listened for from the first step that may wait on the broker (`--select` reads the fleet).
    let interrupt = interrupt_on_ctrl_c();
    let routes = match (&args.select, &rpc_config.trust) {
        (Some(selector), Some(trust)) => {
            let resolved = tokio::select! {
                resolved = fleet::resolve(rpc_config, trust, selector, args.json) => resolved,
                _ = interrupt.cancelled() => {
                    let printer = Printer {
                        json: args.json,
                        logs: false,
                        target: None,
                        progress: None,
                        truncated: AtomicBool::new(false),
                    };
                    return printer.outcome(&Outcome::not_sent(None, &format!("--select {selector}")));
                }
            };
            match resolved {
                Ok(routes) => routes,
                Err(code) => return code,
            }
        }
        (Some(_), None) => return usage_error(crate::error::RpcError::NoKey),
        (None, _) => match args.target.routes() {
            Ok(routes) => routes,
            Err(e) => return usage_error(e),
        },
    };
    let spec = match script_spec(&args) {
        Ok(spec) => spec,
        Err(e) => return usage_error(e),
    };
    let config = match args.retry.config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let plan = match Plan::new(routes, spec, &args.retry.choice(), &config) {
        Ok(plan) => plan,
        Err(e) => return usage_error(e),
    };
    let (spec, planned) = (plan.spec, plan.targets.into_iter().map(|t| (t.route, t.policies)).collect::<Vec<_>>());
    if let [(route, policies)] = planned.as_slice() {
        let printer =
            Printer { json: args.json, logs: true, target: None, progress: None, truncated: AtomicBool::new(false) };
        let outcome = orchestrator.submit(route, spec, *policies, &|e| printer.event(e), &interrupt).await;
        let code = printer.outcome(&outcome);
        if let (OutcomeKind::Unknown, Some(ticket), false) = (outcome.outcome, &outcome.ticket, args.json) {
            eprintln!("cuttle: {}", unknown_ticket_hint(orchestrator, route, ticket));
        }
        return code;
    }
    let limits =
        Limits { max_parallel: args.max_parallel, max_errors: args.max_errors, abort_on_error: args.abort_on_error };
    if let Err(e) = limits.validate() {
        return usage_error(e);
    }
    fan_out(orchestrator, planned, spec, limits, args.json, &interrupt).await
}

/// Runs one script on several targets: prefixed output, a progress bar on a terminal, and a
/// summary table (or, with `--json`, one `result` event per target and a `summary` last).
async fn fan_out(
    orchestrator: &Orchestrator,
    planned: Vec<(Route, Policies)>,
    spec: ScriptSpec,
    limits: Limits,
    json: bool,
    interrupt: &CancellationToken,
) -> ExitCode {
    use std::io::IsTerminal;
    let resolved = limits.resolve(planned.len());
    eprintln!(
        "cuttle: {} targets, {} at a time{}",
        planned.len(),
        resolved.parallel,
        match resolved.tolerated_failures {
            None => String::new(),
            Some(tolerated) => format!(
                ", no new target once more than {tolerated} failed{}",
                if limits.abort_on_error { " (running ones cancelled)" } else { "" }
            ),
        }
    );
    let bar = (!json && std::io::stderr().is_terminal()).then(|| Arc::new(ProgressBar::new(planned.len())));
    let sink_for = |route: &Route| -> crate::fanout::TargetSink {
        let printer = Printer {
            json,
            logs: true,
            target: Some(route.name().to_owned()),
            progress: bar.clone(),
            truncated: AtomicBool::new(false),
        };
        Arc::new(move |event| printer.event(event))
    };
    let progress: Arc<dyn Fn(Progress) + Send + Sync> = {
        let bar = bar.clone();
        Arc::new(move |change: Progress| {
            match &change {
                Progress::Finished(report) if json => {
                    let printer = Printer {
                        json,
                        logs: false,
                        target: Some(report.target.clone()),
                        progress: None,
                        truncated: AtomicBool::new(false),
                    };
                    printer.outcome(&report.outcome);
                }
                Progress::NotStarted { target, reason } if json => {
                    outln!("{}", JsonEvent::Skipped { target: target.clone(), reason: *reason });
                }
                _ => {}
            }
            if let Some(bar) = &bar {
                bar.update(&change);
            }
        })
    };
    let results = crate::fanout::submit_many(orchestrator, planned, spec, limits, sink_for, progress, interrupt).await;
    if let Some(bar) = &bar {
        bar.finish();
    }
    let failed =
        results.iter().filter(|r| matches!(r, TargetResult::Ran(report) if crate::fanout::failed(report))).count();
    let skipped = results.iter().filter(|r| matches!(r, TargetResult::NotStarted { .. })).count();
    if json {
        outln!("{}", JsonEvent::Summary { targets: results.len(), failed, skipped });
    } else {
        print_summary(&results);
        let reason = results.iter().find_map(|r| match r {
            TargetResult::NotStarted { reason: NotStarted::ErrorBudget, .. } => Some(" (error budget spent)"),
            TargetResult::NotStarted { reason: NotStarted::Interrupted, .. } => Some(" (interrupted)"),
            TargetResult::Ran(_) => None,
        });
        eprintln!("{} targets, {failed} failed, {skipped} not started{}", results.len(), reason.unwrap_or_default());
    }
    ExitCode::from(crate::fanout::exit_code(&results))
}

/// The fan-out's summary table on stderr: one row per target, in the order given.
fn print_summary(results: &[TargetResult]) {
    eprintln!("{:<24} {:<11} {:>9} {:>10} {:>7}", "TARGET", "OUTCOME", "EXIT CODE", "DURATION", "RETRIES");
    for result in results {
        let r = match result {
            TargetResult::Ran(report) => report,
            TargetResult::NotStarted { target, reason } => {
                eprintln!("{:<24} {:<11} {:>9} {:>10} {:>7}", target, "not started", "-", "-", "-");
                eprintln!("  {target}: {}", reason.describe());
                continue;
            }
        };
        let outcome = format!("{:?}", r.outcome.outcome).to_lowercase();
        // The process exit code it stands for, never the agent's negative wire code.
        let code = r.outcome.process_exit;
        let duration = format!("{:.1}s", r.duration.as_secs_f64());
        eprintln!("{:<24} {:<11} {:>9} {:>10} {:>7}", r.target, outcome, code, duration, r.retries);
        if let (true, Some(error)) = (crate::fanout::failed(r), &r.outcome.error) {
            eprintln!("  {}: {error}", r.target);
        }
    }
}

async fn status(orchestrator: &Orchestrator, args: StatusArgs) -> ExitCode {
    let t = &args.ticket;
    // Following: Ctrl-C detaches, from before the first line is shown.
    let mut ctrl_c = args.follow.then(sigint);
    let route = match t.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    let policy = match t.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    let printer = Printer { json: t.json, logs: true, target: None, progress: None, truncated: AtomicBool::new(false) };
    let events = |e| printer.event(e);
    let status = match orchestrator.status(&route, &t.ticket, policy, &events).await {
        Ok(status) => status,
        Err(gave_up) => {
            return printer.outcome(&Outcome::from_error(
                Some(t.ticket.clone()),
                route.name(),
                &gave_up.error,
                gave_up.to_string(),
                false,
            ))
        }
    };
    let mut follower = crate::follow::LogFollower::after(0);
    for line in follower.accept(&status) {
        events(Event::Log(line.clone()));
    }
    if args.follow || status.is_complete() {
        let protocol = orchestrator.status_protocol();
        let never = CancellationToken::new();
        let follow = orchestrator.follow_to_end(&route, &t.ticket, follower, status, policy, protocol, &events, &never);
        if !args.follow {
            let outcome = follow.await;
            if !t.json && outcome.outcome == OutcomeKind::Completed {
                let code = outcome.exit_code.unwrap_or_default();
                eprintln!("cuttle: ticket {} on {route} completed with exit code {code}", t.ticket);
            }
            return printer.outcome(&outcome);
        }
        return tokio::select! {
            outcome = follow => printer.outcome(&outcome),
            _ = async { ctrl_c.as_mut().expect("a handler while following").recv().await } => {
                let stop = ticket_flags(&route);
                eprintln!("cuttle: detached from ticket {}; the script goes on (`dispatcher cancel {} {stop}` stops it)", t.ticket, t.ticket);
                ExitCode::from(exit::DETACHED)
            }
        };
    }
    if t.json {
        let state = format!("{:?}", status.state).to_lowercase();
        outln!("{}", JsonEvent::Status { ticket: t.ticket.clone(), target: route.name().to_owned(), state });
    } else {
        eprintln!("cuttle: ticket {} is {:?} on {route}", t.ticket, status.state);
    }
    ExitCode::SUCCESS
}

/// The flags that name `route` to `status` and `cancel`.
fn ticket_flags(route: &Route) -> String {
    match route {
        Route::Agent(id) => format!("--target {id}"),
        Route::Pool(pool) | Route::Worker { pool, .. } => format!("--pool {pool}"),
    }
}

/// What the user can do about a ticket whose outcome is unknown: follow it to its end from
/// another command, or stop it (as `--protocol v1` for a legacy agent's ticket).
fn unknown_ticket_hint(orchestrator: &Orchestrator, route: &Route, ticket: &Ticket) -> String {
    let protocol = match orchestrator.script_protocol_of(route) {
        ScriptProtocol::V1 => " --protocol v1",
        ScriptProtocol::V2 => "",
    };
    let on = ticket_flags(route);
    format!(
        "`dispatcher{protocol} status {ticket} {on} --follow` follows it to its end; `dispatcher{protocol} cancel {ticket} {on}` stops it"
    )
}

async fn cancel(orchestrator: &Orchestrator, args: TicketArgs) -> ExitCode {
    let route = match args.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    let policy = match args.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    let printer =
        Printer { json: args.json, logs: false, target: None, progress: None, truncated: AtomicBool::new(false) };
    let outcome = orchestrator.cancel(&route, &args.ticket, policy, &|e| printer.event(e)).await;
    if !args.json && outcome.outcome == OutcomeKind::Completed {
        eprintln!("cuttle: the script had already ended with exit code {}", outcome.exit_code.unwrap_or_default());
    }
    printer.outcome(&outcome)
}

/// One agent's answer to capabilities, as `capabilities` and `health` print it.
fn describe_agent(agent: &str, kind: &AgentKind) -> (String, serde_json::Value) {
    let (protocol, services, version) = match kind {
        AgentKind::Current(caps) => {
            let v2 = caps.supports(contracts::SERVICE_SCRIPT_V2);
            (if v2 { "v2" } else { "v1" }, caps.services.clone(), Some(caps.agent_version.clone()))
        }
        AgentKind::Legacy => ("v1", vec![contracts::SERVICE_SCRIPT_V1.to_owned()], None),
    };
    let retries = protocol == "v2";
    let text = format!(
        "{agent}: protocol {protocol}{}, version {}, services {}; retries {}",
        if *kind == AgentKind::Legacy { " (legacy agent)" } else { "" },
        version.as_deref().unwrap_or("unknown"),
        services.join(", "),
        if retries { "on" } else { "off (upgrade the agent to turn them on)" },
    );
    let json = json!({"agent": agent, "protocol": protocol, "services": services, "agent_version": version, "retries": retries});
    (text, json)
}

async fn capabilities(orchestrator: &Orchestrator, args: CapabilitiesArgs) -> ExitCode {
    let args = HealthArgs { agents: vec![args.agent], retry: args.retry, json: args.json, wait: args.wait };
    health(orchestrator, args).await
}

/// Asks every agent at once; prints one line each, in the order given. An agent whose queue
/// nobody consumes is down at once (without `--wait`).
async fn health(orchestrator: &Orchestrator, args: HealthArgs) -> ExitCode {
    let config = match args.retry.config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let mut checks = Vec::with_capacity(args.agents.len());
    for agent in &args.agents {
        let route = match Route::agent(agent) {
            Ok(route) => route,
            Err(e) => return usage_error(e),
        };
        match args.retry.choice().retry(&config, &route, Purpose::HealthCheck) {
            Ok(policy) => checks.push((route, policy)),
            Err(e) => return usage_error(e),
        }
    }
    let several = checks.len() > 1;
    let answers = futures_util::future::join_all(checks.iter().map(|(route, policy)| async move {
        let agent = route.name();
        let printer = Printer {
            json: args.json,
            logs: false,
            target: several.then(|| agent.to_owned()),
            progress: None,
            truncated: AtomicBool::new(false),
        };
        if !args.wait && orchestrator.rpc().consumers(route, contracts::Kind::GetCapabilities).await == Some(0) {
            let queue = route.queue(contracts::Kind::GetCapabilities);
            return Err((format!("down: no agent is consuming {queue} (--wait waits for it)"), exit::NO_ANSWER));
        }
        orchestrator.agent_kind(route, *policy, &|e| printer.event(e)).await.map_err(|gave_up| {
            let outcome = Outcome::from_error(None, agent, &gave_up.error, gave_up.to_string(), false);
            (format!("unreachable: {}", outcome.error.unwrap_or_default()), outcome.process_exit)
        })
    }))
    .await;
    let mut worst = ExitCode::SUCCESS;
    for ((route, _), answer) in checks.iter().zip(answers) {
        let agent = route.name();
        match answer {
            Ok(kind) => {
                let (text, value) = describe_agent(agent, &kind);
                if args.json {
                    outln!("{value}");
                } else {
                    outln!("{text}");
                }
            }
            Err((error, code)) => {
                if args.json {
                    outln!("{}", json!({"agent": agent, "error": error}));
                } else {
                    outln!("{agent}: {error}");
                }
                worst = ExitCode::from(code);
            }
        }
    }
    worst
}

async fn bench(orchestrator: &Orchestrator, args: BenchArgs) -> ExitCode {
    let route = match args.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    if args.count == 0 {
        return usage_error("--count must be at least 1");
    }
    let policy = match args.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    // Connect first, so that an unreachable broker is one clear error rather than N.
    if let Err(gave_up) = orchestrator.capabilities(&route, policy, &|_| {}).await {
        if !matches!(gave_up.error, RpcError::Agent { .. }) {
            let printer =
                Printer { json: false, logs: false, target: None, progress: None, truncated: AtomicBool::new(false) };
            return printer.outcome(&Outcome::from_error(
                None,
                route.name(),
                &gave_up.error,
                gave_up.to_string(),
                false,
            ));
        }
    }
    let report = bench::run(orchestrator, &route, args.count, args.concurrency, policy).await;
    if args.json {
        outln!("{}", serde_json::to_string(&report).expect("report encodes"));
    } else {
        outln!("scripts:     {} ({} at a time) on {route}", report.count, report.concurrency);
        outln!("latency:     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms", report.p50_ms, report.p90_ms, report.p99_ms);
        outln!("throughput:  {:.1} scripts/s", report.throughput_per_s);
        outln!("errors:      {}", report.errors);
    }
    if let Some(error) = &report.first_error {
        eprintln!("cuttle: first error: {error}");
    }
    if report.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `upload` (`up`) or `download`, with a progress bar on a terminal and a summary line.
async fn transfer(orchestrator: &Orchestrator, on: &TransferTarget, local: &Path, remote: &str, up: bool) -> ExitCode {
    use std::io::IsTerminal;
    let route = match on.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    let policy = match on.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    let bar =
        if std::io::stderr().is_terminal() { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    );
    let printer = Printer { json: false, logs: false, target: None, progress: None, truncated: AtomicBool::new(false) };
    let events = |event| bar.suspend(|| printer.event(event));
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let peer = crate::transfer::Peer { orchestrator, route: &route, policy, events: &events, progress: &progress };
    let result = match up {
        true => crate::transfer::upload(&peer, local, remote).await,
        false => crate::transfer::download(&peer, remote, local).await,
    };
    bar.finish_and_clear();
    match result {
        Ok(done) => {
            let seconds = done.elapsed.as_secs_f64().max(0.001);
            let mib = done.size as f64 / (1024.0 * 1024.0);
            eprintln!(
                "cuttle: {} {} bytes {} {}:{remote} in {seconds:.1}s ({:.1} MiB/s), sha256 {}{}",
                if up { "uploaded" } else { "downloaded" },
                done.size,
                if up { "to" } else { "from" },
                done.route,
                (mib - done.resumed_at as f64 / (1024.0 * 1024.0)) / seconds,
                done.sha256,
                match done.resumed_at {
                    0 => String::new(),
                    at => format!(", resumed at byte {at}"),
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            let again = if error.resumable() { "; run the same command again to resume" } else { "" };
            eprintln!("cuttle: {} failed: {error}{again}", if up { "upload" } else { "download" });
            ExitCode::from(error.exit_code(&route))
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    use std::io::IsTerminal;
    let cli = Cli::parse();
    let colours = std::io::stderr().is_terminal();
    match tracing_subscriber::EnvFilter::try_from_default_env() {
        // Asked for: full log lines, the libraries' (lapin, redis...) too if the filter says so.
        Ok(filter) => {
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colours).with_writer(std::io::stderr).init()
        }
        // Not asked for: only the dispatcher's own warnings, as one `cuttle:` line each.
        Err(_) => tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("dispatcher=warn"))
            .event_format(PlainLine)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    // Not dropped: the AMQP client's I/O threads (one per connection, connections still being
    // made or abandoned on Ctrl-C included) run their work as tasks of this runtime, and
    // dropping it cancels those tasks under them, which makes such a thread panic after the
    // command's last line ("Task did not complete: ... was cancelled"). Everything the command
    // says is written by now (stdout is flushed line by line, stderr is unbuffered), so the
    // process ends with the runtime still up, as `exit` ends every thread.
    std::mem::forget(runtime);
    code
}

/// A log line as the user sees it without `RUST_LOG`: `cuttle: warn: message field=value`.
struct PlainLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "cuttle: {}: ", event.metadata().level().as_str().to_lowercase())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;
    use clap::CommandFactory;

    /// `dispatcher ARGS --help` as the binary prints it on a pipe, with any value the environment
    /// gives a flag left out (`[env: NAME=]`, as with the variable unset).
    fn help(args: &[&str]) -> String {
        let command = Cli::command();
        let mut values = Vec::new();
        let mut commands = vec![&command];
        while let Some(command) = commands.pop() {
            commands.extend(command.get_subcommands());
            for arg in command.get_arguments() {
                if let (Some(name), Some(value)) = (arg.get_env(), std::env::var_os(arg.get_env().unwrap_or_default()))
                {
                    values.push((name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned()));
                }
            }
        }
        let error = command.try_get_matches_from(["dispatcher"].iter().chain(args).chain(&["--help"])).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp);
        let mut text = error.render().to_string();
        for (name, value) in values {
            text = text.replace(&format!("[env: {name}={value}]"), &format!("[env: {name}=]"));
        }
        text
    }

    #[test]
    fn the_help_of_every_command_is_pinned() {
        golden::check("help/dispatcher.txt", &help(&[]));
        for command in Cli::command().get_subcommands() {
            let name = command.get_name();
            golden::check(&format!("help/{name}.txt"), &help(&[name]));
        }
    }
}
