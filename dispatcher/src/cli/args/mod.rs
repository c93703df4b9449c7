//! Every flag and argument of the `dispatcher` command line (clap), apart from what the commands
//! do with them: [`super::commands`] runs them. What a flag turns into beyond its own value (the
//! routes of `--target`, the policy of `--policy`) is asked of [`crate::plan`], as the service
//! asks it of its JSON.

use crate::budget::Share;
use crate::negotiate::ProtocolMode;
use crate::plan::{self, PolicyChoice, Targets};
use crate::policy::{Overrides, PolicyConfig, PolicyError, Purpose};
use crate::route::Route;
use crate::schedule::Missed;
use crate::service::site::{Authority, PublicUrl};
use clap::{Args, Parser, Subcommand};
use contracts::submission::retry::RetryPolicy;
use contracts::wire::labels::Selector;
use contracts::wire::ticket::Ticket;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod approvals;
mod broker;
mod receipts;
mod script;
pub(super) use approvals::ApproveArgs;
use approvals::APPROVE_HELP;
pub(super) use broker::{EnrolAgentArgs, EnrolPoolArgs, SetupBrokerArgs};
pub(super) use receipts::{ReceiptsArgs, VerifyArgs, NOT_VERIFIED};
use receipts::{RECEIPTS_HELP, VERIFY_HELP};
use script::{parse_env, parse_file_arg, parse_secret, parse_user};
pub(super) use script::{BoundsArgs, FileArg, IsolationArg, SecretArg, ShellArg};

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
  113    the script passed its memory limit (--memory-max, or the agent's cap) and was killed
  130    status --follow: left on Ctrl-C; the script goes on (`cancel` stops it)
With --json the last line is a `result` event that says which of these happened.";

#[derive(Parser, Debug)]
#[command(name = "dispatcher", version, about = "Cuttle dispatcher: run scripts on remote agents through RabbitMQ, exactly once, over bad networks", after_help = EXIT_CODES_HELP)]
pub(super) struct Cli {
    /// RabbitMQ URL; for a cluster, the URL of each node, separated by commas: the dispatcher
    /// starts at a random one and moves to the next when it loses the one in use.
    #[arg(long, global = true, env = "CUTTLE_AMQP_URL", default_value = crate::DEFAULT_AMQP_URL, hide_env_values = true, value_parser = contracts::wire::endpoints::AmqpEndpoints::check_list)]
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
    #[command(flatten)]
    pub proxy: edge::args::ProxyArgs,
    /// `v1` speaks only script v1, without capabilities or retries, as dispatchers did before
    /// resilient communications; `auto` asks each agent what it supports.
    #[arg(long, global = true, value_enum, default_value_t = ProtocolMode::Auto)]
    pub protocol: ProtocolMode,
    /// How long to wait for the broker to accept a connection.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// The service's journal (Redis URL): `serve` records in it; `history`, `status TICKET`
    /// (without --target), `submit --detach` and `schedule` use it.
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
    pub(super) fn sends_requests(&self) -> bool {
        match self {
            Command::Submit(args) => !args.detach,
            Command::Status(args) => !args.reads_journal(),
            Command::Cancel(_)
            | Command::Capabilities(_)
            | Command::Health(_)
            | Command::Bench(_)
            | Command::Serve(_)
            | Command::Upload(_)
            | Command::Download(_)
            | Command::Schedule(ScheduleCommand::Add(_)) => true,
            Command::Schedule(_) => false,
            Command::History(_)
            | Command::Approve(_)
            | Command::Agents(_)
            | Command::Receipts(_)
            | Command::Verify(_)
            | Command::Keygen(_)
            | Command::PublicKey
            | Command::SetupBroker(_)
            | Command::EnrolAgent(_)
            | Command::EnrolPool(_)
            | Command::Completions(_) => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
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
    /// restart (docs/guide.md, "The service").
    Serve(ServeArgs),
    /// List tickets from the service's journal, newest first.
    History(HistoryArgs),
    /// Show a command waiting for approvals in the journal and approve it with your key; the
    /// service sends it once its target's rules are met (docs/guide.md, "Approvals").
    #[command(after_help = APPROVE_HELP)]
    Approve(ApproveArgs),
    /// Run a script on a schedule (a cron expression in a time zone), each slot once however many
    /// service replicas run: add, list, remove, pause, resume, run-now, through the journal
    /// (--journal); `dispatcher serve` on it runs them (docs/guide.md, "Schedules").
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// List the live agents (from their announcements through the broker): id, pool, labels,
    /// version, running scripts, last seen.
    Agents(AgentsArgs),
    /// List the receipts agents signed as their runs ended (from the receipts stream), each
    /// checked against the agent's pinned key and its chain.
    #[command(after_help = RECEIPTS_HELP)]
    Receipts(ReceiptsArgs),
    /// Check saved receipts (`dispatcher receipts --json`) offline: every signature against the
    /// pinned keys, and each agent's chain for gaps, edits, reordering and foreign signatures.
    #[command(after_help = VERIFY_HELP)]
    Verify(VerifyArgs),
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
    /// KEDA users (docs/security.md, "Least privilege on the broker").
    SetupBroker(SetupBrokerArgs),
    /// Operator step, with an administrator's broker URL: declare an agent's queue and binding
    /// and print the permissions its user needs to run with --enrolled.
    EnrolAgent(EnrolAgentArgs),
    /// Operator step, with an administrator's broker URL: declare a pool's queues and bindings
    /// and print the permissions its workers' user needs to run with --enrolled and ids
    /// POOL.NAME (each declares only its own queue).
    EnrolPool(EnrolPoolArgs),
    /// Print the completion script of a shell (bash, zsh or fish), e.g. `dispatcher completions
    /// bash > /usr/share/bash-completion/completions/dispatcher`.
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub(super) struct KeygenArgs {
    /// Where to write the secret key.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct TransferTarget {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// The user the agent writes or reads the file as, with that user's permissions (the file an
    /// upload makes is that user's); the agent must allow it (its --allow-run-as), or refuses and
    /// nothing is transferred (exit 103) [default: the agent's --default-run-as, else the agent's
    /// own user].
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    pub run_as: Option<String>,
}

#[derive(Args, Debug)]
pub(super) struct UploadArgs {
    /// The local file.
    pub local: PathBuf,
    /// Where it goes on the agent: absolute, or relative to its first transfer root.
    pub remote: String,
    #[command(flatten)]
    pub on: TransferTarget,
}

#[derive(Args, Debug)]
pub(super) struct DownloadArgs {
    /// The file on the agent: absolute, or relative to its first transfer root.
    pub remote: String,
    /// Where it goes locally.
    pub local: PathBuf,
    #[command(flatten)]
    pub on: TransferTarget,
}

#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub(super) struct TargetArgs {
    /// Agent to run on (`submit` takes several: `--target a --target b`).
    #[arg(long)]
    pub target: Vec<String>,
    /// Worker pool to run on (any worker of the pool).
    #[arg(long)]
    pub pool: Option<String>,
}

impl TargetArgs {
    /// The one target of commands that take one.
    pub(super) fn route(&self) -> Result<Route, TargetError> {
        match (self.target.as_slice(), &self.pool) {
            ([agent], _) => Ok(Route::agent(agent)?),
            ([], Some(pool)) => Ok(Route::pool(pool)?),
            ([_, _, ..], _) => Err(TargetError::OneTarget),
            _ => Err(TargetError::None),
        }
    }

    /// Every target given (`submit` fans out over several).
    pub(super) fn routes(&self) -> Result<Vec<Route>, TargetError> {
        let targets = match &self.pool {
            Some(pool) => Targets::Pool(pool.clone()),
            None if self.target.is_empty() => return Err(TargetError::None),
            None => Targets::Agents { ids: self.target.clone(), given_as: "--target" },
        };
        Ok(plan::routes(targets)?)
    }
}

/// Why `--target` and `--pool` name no target to go to.
#[derive(Debug, thiserror::Error)]
pub(super) enum TargetError {
    #[error("this command takes one --target")]
    OneTarget,
    #[error("give --target or --pool")]
    None,
    #[error(transparent)]
    Name(#[from] contracts::wire::topology::NameError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
}

#[derive(Args, Debug, Clone)]
pub(super) struct RetryArgs {
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
    pub(super) fn config(&self) -> Result<PolicyConfig, PolicyError> {
        plan::load_policies(self.config.as_deref())
    }

    /// The policy and overrides these flags ask for.
    pub(super) fn choice(&self) -> PolicyChoice {
        let overrides = Overrides { retry_duration: self.retry_duration, no_retries: self.no_retries };
        PolicyChoice { policy: self.policy.clone(), purpose: self.purpose, overrides }
    }

    /// The retry policy for `route` and this command's purpose (`--purpose`, else the default).
    pub(super) fn policy(&self, route: &Route, default_purpose: Purpose) -> Result<RetryPolicy, PolicyError> {
        self.choice().retry(&self.config()?, route, default_purpose)
    }
}

#[derive(Args, Debug)]
pub(super) struct SubmitArgs {
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
    #[command(flatten)]
    pub bounds: BoundsArgs,
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
    #[arg(long, group = "TargetArgs", value_parser = parse_selector, conflicts_with = "detach")]
    pub select: Option<Selector>,
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

#[derive(Args, Debug)]
pub(super) struct TicketArgs {
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
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub ticket: TicketArgs,
    /// Keep following the output until the script ends; exit with its exit code. Ctrl-C leaves
    /// (exit 130) and the script goes on: `dispatcher cancel` stops it.
    #[arg(long)]
    pub follow: bool,
}

impl StatusArgs {
    /// Without --target or --pool, `status` reads the journal (see `commands::status`).
    pub(super) fn reads_journal(&self) -> bool {
        self.ticket.target.target.is_empty() && self.ticket.target.pool.is_none()
    }
}

#[derive(Args, Debug)]
pub(super) struct CapabilitiesArgs {
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
pub(super) struct HealthArgs {
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
pub(super) struct BenchArgs {
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
    /// Print one JSON object: the figures above, and every script's latency (`latencies_ms`, in
    /// milliseconds, fastest first) for a histogram of one's own.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Address to listen on. Without --api-tokens only a loopback address is accepted.
    #[arg(long, env = "CUTTLE_LISTEN", default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// File of `NAME TOKEN` lines: requests to /v1 need `Authorization: Bearer TOKEN`, and the
    /// journal records NAME as who submitted. Without it the API is open to local users only.
    #[arg(long)]
    pub api_tokens: Option<PathBuf>,
    /// How long finished tickets (and their output) stay in the journal.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,
    /// How long a replica's claim on a ticket lasts without renewal: how soon another replica
    /// takes over the tickets of one that died.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How long a ticket waits for the approvals its target's rules require (`dispatcher
    /// approve`); past it, it fails, never sent.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub approval_wait: Duration,
    /// This replica's name in the journal's leases [default: host name and process id]. Restarted
    /// under the same name, a replica resumes its tickets at once rather than after --lease-ttl.
    #[arg(long)]
    pub replica_id: Option<String>,
    /// Machine policies file (TOML), as for `submit`.
    #[arg(long, env = "CUTTLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A name the service answers to besides its listen address, `NAME[:PORT]` (any port
    /// without one): the name of a proxy in front of it, a DNS name clients use (repeatable; the
    /// variable takes `A,B:8080`). Requests naming another host (Host header) get 421: a web
    /// page whose own name resolves to the service's address cannot read it.
    #[arg(long = "allowed-host", env = "CUTTLE_ALLOWED_HOSTS", value_delimiter = ',', value_parser = Authority::parse)]
    pub allowed_hosts: Vec<Authority>,
    /// The URL browsers reach the service at when a proxy stands in front of it, e.g.
    /// `https://cuttle.example.com`: its host is allowed, its origin is the service's own, and
    /// with https the login cookie is `Secure`.
    #[arg(long, env = "CUTTLE_PUBLIC_URL", value_parser = PublicUrl::parse)]
    pub public_url: Option<PublicUrl>,
}

#[derive(Args, Debug)]
pub(super) struct HistoryArgs {
    /// Only tickets of this agent or pool.
    #[arg(long)]
    pub target: Option<String>,
    /// Only tickets that ended so: completed, cancelled, unknown, failed.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only tickets submitted since: a duration ago (`2h`) or unix milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// One JSON object per ticket and line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub(super) enum ScheduleCommand {
    /// Add a schedule, signed with the dispatcher's key (--key, which must be the service's):
    /// submit's script and targets, run at each slot of --cron in --timezone, each slot once.
    Add(Box<ScheduleAddArgs>),
    /// List the schedules: when, where, the next run, and the last runs with their outcomes.
    List(ScheduleListArgs),
    /// Remove a schedule: no slot of it runs from now on (runs already started go on).
    Remove(ScheduleNameArgs),
    /// Pause a schedule: no slot runs until it is resumed (run-now still runs it).
    Pause(ScheduleNameArgs),
    /// Resume a paused schedule from now: the slots that came while it was paused never run.
    Resume(ScheduleNameArgs),
    /// Run a schedule now, under a slot identity of its own: a `dispatcher serve` replica on the
    /// journal runs it within a second.
    RunNow(ScheduleRunArgs),
}

/// `schedule add`: submit's script, targets and options, and when. What a schedule cannot do
/// (secrets, --detach, an error budget) is refused with the reason.
#[derive(Args, Debug)]
#[command(
    mut_arg("detach", |a| a.hide(true)),
    mut_arg("max_errors", |a| a.hide(true)),
    mut_arg("abort_on_error", |a| a.hide(true)),
    mut_arg("secret_env", |a| a.hide(true)),
    mut_arg("secret_env_file", |a| a.hide(true)),
    mut_arg("json", |a| a.help("Print the schedule added as one JSON object")),
    mut_arg("select", |a| a.help("Run on the live agents matching all of these comma-separated terms at each slot, a ticket each: `key=value`, `key!=value` (`id` and `pool` match the agent's id and pool); a slot that matches none runs nothing"))
)]
pub(super) struct ScheduleAddArgs {
    /// The schedule's name, unique in the journal.
    pub name: String,
    /// When: a cron expression, `MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK`, or six fields with a
    /// second first (`*/30 * * * * *`), or @hourly, @daily, @weekly, @monthly, @yearly.
    #[arg(long)]
    pub cron: String,
    /// The time zone --cron is read in, an IANA name such as Europe/Berlin; daylight-saving
    /// changes are handled as docs/guide.md, "Schedules", says.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Slots missed while every service replica was down: `skip` them, or run `once` for all of
    /// them (under the latest).
    #[arg(long, value_enum, default_value_t = Missed::Skip)]
    pub missed: Missed,
    #[command(flatten)]
    pub submit: SubmitArgs,
}

#[derive(Args, Debug)]
pub(super) struct ScheduleListArgs {
    /// One JSON object per schedule and line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(super) struct ScheduleNameArgs {
    /// The schedule's name.
    pub name: String,
}

#[derive(Args, Debug)]
pub(super) struct ScheduleRunArgs {
    /// The schedule's name.
    pub name: String,
    /// Print the run asked for as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub(super) struct AgentsArgs {
    /// Only agents matching all of these comma-separated terms: `key=value` (label equals),
    /// `key!=value` (label differs or is absent); `id` and `pool` match the agent's id and pool.
    #[arg(long, value_parser = parse_selector)]
    pub select: Option<Selector>,
    /// One JSON object per agent and line.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn parse_selector(raw: &str) -> Result<Selector, String> {
    Selector::parse(raw).map_err(|e| e.to_string())
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
