//! The `worker-agent` command line.

use crate::config::{
    AgentConfig, Protocol, StoreKind, DEFAULT_AMQP_URL, DEFAULT_POOL_QUEUE_EXPIRY, DEFAULT_PREFETCH,
    DEFAULT_REDIS_SERVICE, DEFAULT_REDIS_URL,
};
use clap::{Parser, Subcommand};
use edge::connect::tls::TlsFiles;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "worker-agent",
    version,
    about = "Cuttle agent: runs scripts sent through RabbitMQ, each ticket exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect to the broker and the ticket store and serve script commands until stopped
    /// (SIGINT or SIGTERM).
    Run(Box<RunArgs>),
    /// Write a new Ed25519 secret key (mode 0600; an existing file is never overwritten) and print
    /// its public key, `ed25519:<base64>`, for the dispatchers' known-agents files.
    Keygen(KeygenArgs),
    /// Print the public key of an agent key file, for the dispatchers' known-agents files.
    PublicKey(PublicKeyArgs),
    /// Print the completion script of a shell (bash, zsh or fish), e.g. `worker-agent completions
    /// bash > /usr/share/bash-completion/completions/worker-agent`.
    Completions(CompletionsArgs),
    /// Run by the agent itself before a limited script's shell: joins the script's cgroup, sets
    /// its resource limits and execs the rest of the command.
    #[command(hide = true)]
    LimitedExec(crate::limits::LimitedExecArgs),
    /// Run by the agent to serve one chunk of a file transfer as another user (--run-as).
    #[command(hide = true)]
    TransferAs(crate::transfer::as_user::TransferAsArgs),
}

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The command line as clap describes it: for completions, man pages and the generated reference.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[derive(clap::Args, Debug)]
pub struct PublicKeyArgs {
    /// The agent's secret key file.
    #[arg(long = "key", env = "CUTTLE_AGENT_KEY")]
    pub key: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret key.
    #[arg(long)]
    pub out: PathBuf,
}

/// Writes a new key to `out` and prints its public key on stdout (the one line to copy).
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let key = edge::keys::create_secret(&args.out)?;
    eprintln!("worker-agent: wrote a new secret key to {} (mode 0600); its public key:", args.out.display());
    println!("{}", key.public());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// This agent's id; its queue is `cuttle.agent.<ID>` ([A-Za-z0-9._-], at most 100).
    #[arg(long, env = "CUTTLE_AGENT_ID")]
    pub agent_id: String,
    /// RabbitMQ URL; for a cluster, the URL of each node, separated by commas: the agent starts
    /// at a random one and moves to the next when it loses the one in use.
    #[arg(long, env = "CUTTLE_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true, value_parser = contracts::wire::endpoints::AmqpEndpoints::check_list)]
    pub amqp_url: String,
    /// CA certificate(s) (PEM) that signed the broker's certificate, trusted besides the
    /// system's roots, for `amqps://` URLs.
    #[arg(long, env = "CUTTLE_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the broker; unless the URL names an
    /// `auth_mechanism`, the agent then logs in with it (EXTERNAL: the user is the certificate's
    /// name, no password). Needs --amqp-client-key.
    #[arg(long, env = "CUTTLE_AMQP_CLIENT_CERT", requires = "amqp_client_key")]
    pub amqp_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --amqp-client-cert.
    #[arg(long, env = "CUTTLE_AMQP_CLIENT_KEY", requires = "amqp_client_cert")]
    pub amqp_client_key: Option<PathBuf>,
    #[command(flatten)]
    pub proxy: edge::args::ProxyArgs,
    /// Redis URL of the ticket store: `redis://[USER:PASSWORD@]HOST:PORT[/DB]`, or `rediss://`
    /// for TLS; USER is a Redis ACL user (it needs the commands of `+@all` on keys under
    /// --key-prefix).
    #[arg(long, env = "CUTTLE_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// CA certificate(s) (PEM) that signed the ticket store's certificate, for `rediss://` (they
    /// replace the system's roots).
    #[arg(long, env = "CUTTLE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to a `rediss://` store (Redis asks for one unless it
    /// runs with `--tls-auth-clients no`). Needs --redis-client-key.
    #[arg(long, env = "CUTTLE_REDIS_CLIENT_CERT", requires = "redis_client_key")]
    pub redis_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --redis-client-cert.
    #[arg(long, env = "CUTTLE_REDIS_CLIENT_KEY", requires = "redis_client_cert")]
    pub redis_client_key: Option<PathBuf>,
    /// Redis Sentinels (`host:port,...`) to ask for the ticket store's master, followed through
    /// failovers; `--redis-url` then gives only the master's database, user and password, and
    /// with `rediss://` TLS to the Sentinels and the master (both with the --redis-ca-file and
    /// --redis-client-cert given).
    #[arg(long, env = "CUTTLE_REDIS_SENTINELS", value_parser = parse_sentinels)]
    pub redis_sentinels: Option<Sentinels>,
    /// The master's name at the Sentinels.
    #[arg(long, env = "CUTTLE_REDIS_SERVICE", default_value = DEFAULT_REDIS_SERVICE)]
    pub redis_service: String,
    /// Replicas that must hold a claim (Redis WAIT, 1s) before its script starts; until then the
    /// start is answered "store unavailable" and the dispatcher repeats it. 0 starts as soon as
    /// the master has the claim: a failover right after can lose it and run the script again.
    #[arg(long, env = "CUTTLE_CLAIM_REPLICAS", default_value_t = 0)]
    pub claim_replicas: u32,
    /// Prefix of every Redis key (agents sharing tickets must share it).
    #[arg(long, env = "CUTTLE_KEY_PREFIX", default_value = "cuttle:")]
    pub key_prefix: String,
    /// Directory for script workspaces, private to the agent's user: created 0700; one owned by
    /// another user or writable by group or others is refused [default: /var/lib/cuttle/<ID> as
    /// root, $XDG_STATE_HOME/cuttle/<ID> (~/.local/state/cuttle/<ID>) otherwise].
    #[arg(long, env = "CUTTLE_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Worker pool to serve as well: its queue `cuttle.pool.<POOL>` is shared by every worker
    /// of the pool (which must share the ticket store and key prefix).
    #[arg(long, env = "CUTTLE_POOL")]
    pub pool: Option<String>,
    /// Scripts run at once at most; a full worker takes no more pool work [default: no bound].
    #[arg(long, env = "CUTTLE_MAX_SCRIPTS")]
    pub max_scripts: Option<usize>,
    /// Serve HTTP probes here: GET /livez (alive) and /readyz (consuming, store answering).
    #[arg(long, env = "CUTTLE_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Where tickets are kept: `redis` (shared; needed by pools), or `local`, an embedded
    /// crash-safe database in the work directory for an agent that can reach only the broker.
    #[arg(long, value_enum, default_value_t = StoreKind::Redis)]
    pub store: StoreKind,
    /// Protocol to speak: v2 (capabilities, script v2 and v1) or v1 (a legacy agent: script v1 only).
    #[arg(long, value_enum, default_value_t = Protocol::V2)]
    pub protocol: Protocol,
    /// Requests held at once, across the queues the agent consumes (AMQP prefetch; a pool worker
    /// shares it among its own queue and the pool's). Each message is at most 16 MiB, so the
    /// messages held take at most N × 16 MiB (512 MiB by default). A status request waits in the
    /// agent up to 5 s for output, holding its place: raise it to follow more idle scripts on
    /// one agent at once.
    #[arg(long, default_value_t = DEFAULT_PREFETCH)]
    pub prefetch: u16,
    /// Lease of a running ticket: an agent silent this long is reported lost ("unknown result").
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How long a completed ticket's tombstone is kept when its command has no deadline (legacy
    /// script v1); other tombstones live until their command's deadline (plus clock skew) has
    /// passed, after which any late copy is refused as expired.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub tombstone_ttl: Duration,
    /// The broker deletes this agent's own queue once it has been unused this long (no
    /// consumer): for ephemeral identities. `0` keeps it forever [default: 10m for a pool
    /// worker; kept forever for a standalone agent, whose commands wait while it is offline].
    #[arg(long, env = "CUTTLE_QUEUE_EXPIRY", value_parser = humantime::parse_duration)]
    pub queue_expiry: Option<Duration>,
    /// How long running scripts may take to finish on SIGTERM before they are cancelled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// A label `KEY=VALUE` the agent announces, for `dispatcher agents --select` and `submit
    /// --select` (repeatable; keys [A-Za-z0-9._/-], values [A-Za-z0-9._-], at most 63
    /// characters each; `id` and `pool` are reserved). The variable takes `k=v,k2=v2`.
    #[arg(long = "label", env = "CUTTLE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// How often the agent announces itself on the broker's presence stream (500ms to 10s); it
    /// drops out of `dispatcher agents` three intervals after its last announcement.
    #[arg(long, env = "CUTTLE_ANNOUNCE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub announce_interval: Duration,
    /// A variable of the agent's environment that scripts get too (repeatable; the variable takes
    /// `A,B`). Scripts get only PATH, HOME, USER, LANG, the command's own env, CUTTLE_TICKET and
    /// CUTTLE_AGENT_ID otherwise: never the agent's broker or store credentials.
    #[arg(long = "pass-env", env = "CUTTLE_PASS_ENV", value_delimiter = ',')]
    pub pass_env: Vec<String>,
    /// Output of one script stored at most (`1048576`, `64KiB`, `256MiB`, `1GiB`): what the script
    /// writes past it is read and discarded, and its log says so (when it starts, and how many
    /// bytes at the end), so the dispatcher reports the output as truncated.
    #[arg(long, env = "CUTTLE_MAX_OUTPUT", default_value = "256MiB", value_parser = parse_bytes)]
    pub max_output: u64,
    /// A directory below which `dispatcher upload` and `download` may write and read files
    /// (repeatable; the variable takes `DIR1,DIR2`). Links out of it are never followed. None:
    /// file transfer is refused.
    #[arg(long = "transfer-root", env = "CUTTLE_TRANSFER_ROOTS", value_delimiter = ',')]
    pub transfer_roots: Vec<PathBuf>,
    /// This agent's secret key, which signs its answers (share one among a pool's workers);
    /// created on first start if missing, its public key logged [default: <work-dir>/agent.key].
    #[arg(long = "key", env = "CUTTLE_AGENT_KEY")]
    pub key: Option<PathBuf>,
    /// The dispatcher public keys allowed to run scripts here: one `ed25519:<base64> [comment]`
    /// per line, several for rotation; reloaded on SIGHUP (remove a line to revoke a key).
    #[arg(long, env = "CUTTLE_TRUSTED_KEYS")]
    pub trusted_keys: Option<PathBuf>,
    /// Run UNSIGNED commands too, from anyone who can publish to the broker (a warning for each):
    /// only for dispatchers from before signing, and needed by `--protocol v1`.
    #[arg(long)]
    pub insecure_allow_unsigned: bool,
    /// The broker was set up by the operator (`dispatcher setup-broker`, then `dispatcher
    /// enrol-agent <ID>`): declare nothing, only check that the exchange, this agent's queue (and
    /// its pool's) and the presence stream exist. Its broker user then needs no configure
    /// permission: `enrol-agent` prints what it needs. A pool worker whose id is `POOL.NAME`
    /// (`dispatcher enrol-pool POOL`; NAME without dots, such as its pod name) declares and binds
    /// its own queue, and only that: its user needs what `enrol-pool` prints.
    #[arg(long, env = "CUTTLE_ENROLLED")]
    pub enrolled: bool,
    /// How often the janitor removes leftover workspaces from the work dir (it also does at
    /// start): those of completed tickets, and those older than --workspace-max-age. With
    /// `--store local`, also how often (at most, on a claim) expired tickets leave its file.
    #[arg(long, env = "CUTTLE_JANITOR_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub janitor_interval: Duration,
    /// A workspace no running script uses is removed once unchanged this long, whatever its
    /// ticket's state.
    #[arg(long, env = "CUTTLE_WORKSPACE_MAX_AGE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub workspace_max_age: Duration,
    /// A user scripts may run as when their command names it (`dispatcher submit --run-as`),
    /// with that user's groups, HOME and a workspace it owns (repeatable; the variable takes
    /// `U1,U2`). Root only when listed. Needs an agent running as root (one that is not runs
    /// scripts only as itself) and `setpriv` on its PATH. None: a command naming a user is refused.
    #[arg(long = "allow-run-as", env = "CUTTLE_ALLOW_RUN_AS", value_delimiter = ',')]
    pub allow_run_as: Vec<String>,
    /// The user scripts whose command names none run as (one that --allow-run-as lists)
    /// [default: the agent's own user].
    #[arg(long, env = "CUTTLE_DEFAULT_RUN_AS")]
    pub default_run_as: Option<String>,
    /// The most memory one script (with every process it starts) may have (`512MiB`, `2GiB`), and
    /// what a script that names no --memory-max gets; past it the script is killed (dispatcher
    /// exit 113). Through the memory cgroup controller, else RLIMIT_AS on each process.
    #[arg(long, env = "CUTTLE_MAX_MEMORY_PER_SCRIPT", value_name = "SIZE", value_parser = parse_bytes)]
    pub max_memory_per_script: Option<u64>,
    /// The most CPU one script may use, in cores (`0.5`, `2`), and what a script that names no
    /// --cpu-max gets. Needs the cpu cgroup controller.
    #[arg(long, env = "CUTTLE_MAX_CPU_PER_SCRIPT", value_name = "CORES", value_parser = parse_cores)]
    pub max_cpu_per_script: Option<u32>,
    /// The most processes and threads one script may have at once, and what a script that names
    /// no --tasks-max gets: a fork past it fails, so a fork bomb stops there. Needs the pids
    /// cgroup controller.
    #[arg(long, env = "CUTTLE_MAX_TASKS_PER_SCRIPT", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tasks_per_script: Option<u32>,
    /// The largest file a script may write (`100MiB`), and what a script that names no
    /// --file-size-max gets (RLIMIT_FSIZE).
    #[arg(long, env = "CUTTLE_MAX_FILE_SIZE_PER_SCRIPT", value_name = "SIZE", value_parser = parse_bytes)]
    pub max_file_size_per_script: Option<u64>,
}

fn parse_cores(raw: &str) -> Result<u32, String> {
    contracts::agent::limits::parse_cores(raw).map_err(|e| e.to_string())
}

fn parse_bytes(raw: &str) -> Result<u64, String> {
    contracts::agent::limits::parse_size(raw).map_err(|e| e.to_string())
}

fn check_variable_name(name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let good = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if good {
        Ok(())
    } else {
        Err(ConfigError::PassEnv(name.to_owned()))
    }
}

/// Why the flags describe no agent that can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Name(#[from] contracts::wire::topology::NameError),
    #[error(transparent)]
    Tls(#[from] edge::connect::tls::TlsError),
    #[error(transparent)]
    Proxy(#[from] edge::connect::proxy::ProxyConfigError),
    #[error("--claim-replicas needs the Redis store: the local store has no replicas")]
    ReplicasWithLocalStore,
    #[error("--pass-env {0:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    PassEnv(String),
    #[error("--transfer-root {}: {source}", path.display())]
    TransferRoot { path: PathBuf, source: std::io::Error },
    #[error("--transfer-root {} is not a directory", .0.display())]
    TransferRootNotADirectory(PathBuf),
    #[error("--store local cannot serve a pool: a pool's workers must share their tickets (use Redis)")]
    PoolWithLocalStore,
    #[error("--max-scripts must be at least 1")]
    NoScripts,
    #[error(transparent)]
    Labels(#[from] contracts::wire::labels::LabelError),
    #[error("--announce-interval must be between {min}ms and {max}ms")]
    AnnounceInterval { min: u64, max: u64 },
    #[error("--protocol v1 is an agent from before signed commands: it needs --insecure-allow-unsigned")]
    UnsignedV1,
    #[error(transparent)]
    RunAs(#[from] contracts::agent::run_as::RunAsConfigError),
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    contracts::wire::labels::parse_label(raw).map_err(|e| e.to_string())
}

impl RunArgs {
    pub fn config(&self) -> Result<AgentConfig, ConfigError> {
        contracts::wire::topology::validate_name("agent id", &self.agent_id)?;
        let mut config = AgentConfig::new(&self.agent_id);
        config.amqp_url = self.amqp_url.clone();
        config.redis_url = self.redis_url.clone();
        let amqp_tls = TlsFiles {
            ca_file: self.amqp_ca_file.clone(),
            client_cert: self.amqp_client_cert.clone(),
            client_key: self.amqp_client_key.clone(),
        };
        config.amqp_tls = amqp_tls.load()?;
        config.proxy = self.proxy.settings()?;
        let redis_tls = TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert: self.redis_client_cert.clone(),
            client_key: self.redis_client_key.clone(),
        };
        config.redis_tls = redis_tls.load()?;
        config.redis_sentinels = self.redis_sentinels.clone().map(|s| s.0).unwrap_or_default();
        config.redis_service = self.redis_service.clone();
        if self.claim_replicas > 0 && self.store == StoreKind::Local {
            return Err(ConfigError::ReplicasWithLocalStore);
        }
        config.claim_replicas = self.claim_replicas;
        config.key_prefix = self.key_prefix.clone();
        if let Some(work_dir) = &self.work_dir {
            config.work_dir = work_dir.clone();
        }
        for name in &self.pass_env {
            check_variable_name(name)?;
        }
        config.pass_env = self.pass_env.clone();
        config.max_output = self.max_output;
        for root in &self.transfer_roots {
            let canonical =
                root.canonicalize().map_err(|source| ConfigError::TransferRoot { path: root.clone(), source })?;
            if !canonical.is_dir() {
                return Err(ConfigError::TransferRootNotADirectory(root.clone()));
            }
            config.transfer_roots.push(canonical);
        }
        config.protocol = self.protocol;
        if let Some(pool) = &self.pool {
            contracts::wire::topology::validate_name("pool name", pool)?;
        }
        if self.pool.is_some() && self.store == StoreKind::Local {
            return Err(ConfigError::PoolWithLocalStore);
        }
        config.pool = self.pool.clone();
        config.store = self.store;
        if self.max_scripts == Some(0) {
            return Err(ConfigError::NoScripts);
        }
        config.max_scripts = self.max_scripts;
        config.prefetch = self.prefetch.max(1);
        config.lease_ttl = self.lease_ttl.max(Duration::from_secs(1));
        config.tombstone_ttl = self.tombstone_ttl;
        config.health_addr = self.health_addr;
        config.drain_timeout = self.drain_timeout;
        let default_expiry = self.pool.is_some().then_some(DEFAULT_POOL_QUEUE_EXPIRY);
        config.queue_expiry = self.queue_expiry.or(default_expiry).filter(|expiry| !expiry.is_zero());
        config.labels = contracts::wire::labels::collect_labels(self.labels.iter().cloned())?;
        let interval_ms = self.announce_interval.as_millis() as u64;
        let (min, max) = (contracts::wire::presence::MIN_INTERVAL_MS, contracts::wire::presence::MAX_INTERVAL_MS);
        if !(min..=max).contains(&interval_ms) {
            return Err(ConfigError::AnnounceInterval { min, max });
        }
        config.announce_interval = self.announce_interval;
        if self.protocol == Protocol::V1 && !self.insecure_allow_unsigned {
            return Err(ConfigError::UnsignedV1);
        }
        config.key_file = self.key.clone();
        config.trusted_keys_file = self.trusted_keys.clone();
        config.insecure_allow_unsigned = self.insecure_allow_unsigned;
        config.enrolled = self.enrolled;
        config.janitor_interval = self.janitor_interval.max(Duration::from_millis(100));
        config.workspace_max_age = self.workspace_max_age;
        config.run_as = crate::run_as::policy(self.allow_run_as.clone(), self.default_run_as.clone())?;
        config.limit_caps = contracts::wire::messages::ScriptLimits {
            memory_max: self.max_memory_per_script,
            cpu_max: self.max_cpu_per_script,
            tasks_max: self.max_tasks_per_script,
            file_size_max: self.max_file_size_per_script,
        };
        Ok(config)
    }
}

/// Redis Sentinel addresses as given on the command line.
#[derive(Clone, Debug)]
pub struct Sentinels(pub Vec<String>);

fn parse_sentinels(list: &str) -> Result<Sentinels, String> {
    edge::connect::store::parse_sentinels(list).map(Sentinels).map_err(|e| e.to_string())
}

/// Runs the agent until SIGINT or SIGTERM, then stops taking work and lets running scripts end
/// within the drain timeout.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Printed in one line, as the message says it all (the chain of sources would repeat it).
    let config = args.config().map_err(|error| anyhow::Error::msg(error.to_string()))?;
    tracing::info!(agent = %config.agent_id, pool = ?config.pool, max_scripts = ?config.max_scripts, protocol = ?config.protocol, labels = ?config.labels, store = ?config.store, work_dir = %config.work_dir.display(), "agent starting");
    if config.proxy.is_set() && config.store == StoreKind::Redis {
        tracing::warn!(agent = %config.agent_id, "the broker is reached through the proxy, the ticket store (Redis) directly: where the proxy is the only way out, use --store local");
    }
    crate::run(config, crate::shutdown_signal()).await?;
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The agent's own helpers, each run before any runtime or thread starts.
    match cli.command {
        Command::LimitedExec(args) => {
            // Only failing returns: the script's shell did not start (127, as a shell says so).
            eprintln!("worker-agent limited-exec: {}", crate::limits::limited_exec(args));
            return std::process::ExitCode::from(127);
        }
        Command::TransferAs(args) => {
            return match crate::transfer::as_user::serve(args) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("worker-agent transfer-as: {error}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colours only for a terminal: a journal or a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // One thread runs everything the agent does itself. Its work is waiting (on the broker, the
    // store and the scripts, which are processes of their own) and short steps between waits,
    // so more threads only hand each message from one to another: with a thread per core the
    // agent spent about a third more CPU per script (`dispatcher bench`, 16 in flight, see
    // docs/performance.md). File work (transfers, the embedded store) still goes to the
    // blocking pool's threads, and the AMQP client keeps its own I/O thread.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Keygen(args) => keygen(&args),
            Command::PublicKey(args) => {
                println!("{}", edge::keys::load_secret(&args.key)?.public());
                Ok(())
            }
            Command::LimitedExec(_) | Command::TransferAs(_) => unreachable!("handled before the runtime"),
            Command::Completions(args) => {
                // Written whole or not at all; a reader that closes early (`| head`) is no error.
                let mut script = Vec::new();
                clap_complete::generate(args.shell, &mut command(), "worker-agent", &mut script);
                match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
                    Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
                    _ => Ok(()),
                }
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker-agent: {error:#}");
            match error.downcast_ref::<crate::RunError>() {
                Some(error) if error.is_setting() => std::process::ExitCode::from(crate::EXIT_SETTING),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}
