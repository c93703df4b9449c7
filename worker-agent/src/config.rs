//! The agent's configuration, filled by the CLI from flags and environment, or directly by
//! tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long a pool worker's own queue outlives the worker unless `--queue-expiry` says otherwise.
pub const DEFAULT_POOL_QUEUE_EXPIRY: Duration = Duration::from_secs(600);
/// Bytes of one script's output kept unless `--max-output` says otherwise.
pub const DEFAULT_MAX_OUTPUT: u64 = 256 * 1024 * 1024;
/// The master name Redis' own Sentinel examples use.
pub const DEFAULT_REDIS_SERVICE: &str = "mymaster";

/// Which protocol generation the agent speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Capabilities, script v2 (idempotent) and script v1.
    #[default]
    V2,
    /// Only script v1, exactly as agents before resilient communications: every other kind is
    /// answered `Unsupported`.
    V1,
}

/// Where tickets are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Redis at `--redis-url`, shared by every worker of a pool.
    #[default]
    Redis,
    /// An embedded database in the work directory, for an agent that can reach only the broker.
    Local,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub agent_id: String,
    pub amqp_url: String,
    pub redis_url: String,
    /// CA and client certificate for `amqps://` URLs (`--amqp-ca-file`, ...).
    pub amqp_tls: contracts::tls::TlsMaterial,
    /// CA and client certificate for a `rediss://` store URL (`--redis-ca-file`, ...).
    pub redis_tls: contracts::tls::TlsMaterial,
    /// Redis Sentinels (`host:port`) naming the ticket store's master; empty: `redis_url` is
    /// the store itself.
    pub redis_sentinels: Vec<String>,
    /// The master's name at the Sentinels (their `sentinel monitor <name> ...`).
    pub redis_service: String,
    /// Replicas that must acknowledge a claim (Redis `WAIT`) before its script starts; 0 starts
    /// once the master has it.
    pub claim_replicas: u32,
    /// Prefix of every Redis key; agents sharing tickets (a pool) must share it.
    pub key_prefix: String,
    pub store: StoreKind,
    pub work_dir: PathBuf,
    pub protocol: Protocol,
    /// Worker pool whose shared queue this agent also consumes (competing consumers).
    pub pool: Option<String>,
    /// Scripts this agent runs at once at most; a full agent takes no more pool work.
    pub max_scripts: Option<usize>,
    /// Deliveries in flight at once (AMQP prefetch).
    pub prefetch: u16,
    /// How long a running ticket's lease lasts without renewal; an agent dead this long is
    /// reported as lost.
    pub lease_ttl: Duration,
    /// How long a ticket's record and output are kept if it is never completed.
    pub record_ttl: Duration,
    /// How long a completed ticket's tombstone is kept when its command carried no deadline
    /// (legacy script v1); otherwise it is kept until the deadline has passed (see
    /// [`crate::rules::tombstone_ttl_ms`]).
    pub tombstone_ttl: Duration,
    /// The agent's own queue is deleted by the broker once unused this long (`x-expires`):
    /// for ephemeral identities such as pool workers named after their pod. `None` keeps it
    /// forever, so commands for an offline agent wait for it.
    pub queue_expiry: Option<Duration>,
    /// Timeout around every broker and store call at start.
    pub connect_timeout: Duration,
    /// Where to serve HTTP probes (`/livez`, `/readyz`), if anywhere.
    pub health_addr: Option<SocketAddr>,
    /// How long running scripts may take to end once the agent is told to stop, before they
    /// are cancelled (their outcome recorded as cancelled).
    pub drain_timeout: Duration,
    /// Labels the agent announces (`--label`), by which dispatchers select it.
    pub labels: contracts::labels::Labels,
    /// How often the agent announces itself on the presence stream (its heartbeat).
    pub announce_interval: Duration,
    /// Variables of the agent's environment scripts get besides the minimal set (`--pass-env`).
    pub pass_env: Vec<String>,
    /// Bytes of one script's output stored at most; the rest is discarded, and the log says so.
    pub max_output: u64,
    /// Directories (canonical) below which files may be uploaded and downloaded; none refuses
    /// every transfer.
    pub transfer_roots: Vec<PathBuf>,
    /// The agent's own secret key, which signs its answers; created on first start when
    /// missing. `None`: `<work_dir>/agent.key`.
    pub key_file: Option<PathBuf>,
    /// The dispatcher public keys whose signed commands this agent runs (reloaded on SIGHUP).
    /// Without it the agent refuses to start, unless `insecure_allow_unsigned`.
    pub trusted_keys_file: Option<PathBuf>,
    /// Runs unsigned commands too (from anyone who can publish to the broker), with a warning
    /// each: only for legacy dispatchers and legacy (script v1) agents.
    pub insecure_allow_unsigned: bool,
    /// The operator declared the topology and this agent's queue and binding (`dispatcher
    /// setup-broker`, `enrol-agent`): the agent only checks them, so its broker user needs no
    /// configure permission (`--enrolled`); a pool worker with an id `POOL.NAME` declares its own
    /// queue and binding (`dispatcher enrol-pool`).
    pub enrolled: bool,
    /// How often the janitor sweeps the work dir (besides at start).
    pub janitor_interval: Duration,
    /// A workspace no script of this process runs in is removed once unchanged this long.
    pub workspace_max_age: Duration,
}

impl AgentConfig {
    /// Where the Redis ticket store is: `redis_url`, or the master the Sentinels name.
    pub fn redis_target(&self) -> crate::redis_link::RedisTarget {
        use crate::redis_link::RedisTarget;
        if self.redis_sentinels.is_empty() {
            return RedisTarget::Url { url: self.redis_url.clone(), tls: self.redis_tls.clone() };
        }
        RedisTarget::Sentinel {
            sentinels: self.redis_sentinels.clone(),
            service: self.redis_service.clone(),
            url: self.redis_url.clone(),
            tls: self.redis_tls.clone(),
        }
    }

    /// A configuration with defaults for everything but the agent id.
    pub fn new(agent_id: impl Into<String>) -> Self {
        let agent_id = agent_id.into();
        AgentConfig {
            amqp_url: DEFAULT_AMQP_URL.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            amqp_tls: Default::default(),
            redis_tls: Default::default(),
            redis_sentinels: Vec::new(),
            redis_service: DEFAULT_REDIS_SERVICE.into(),
            claim_replicas: 0,
            key_prefix: "cuttle:".into(),
            store: StoreKind::Redis,
            work_dir: crate::workspace::default_work_dir(&agent_id),
            protocol: Protocol::V2,
            pool: None,
            max_scripts: None,
            prefetch: 512,
            lease_ttl: Duration::from_secs(15),
            record_ttl: Duration::from_secs(7 * 24 * 3600),
            tombstone_ttl: Duration::from_secs(3600),
            queue_expiry: None,
            connect_timeout: Duration::from_secs(5),
            health_addr: None,
            drain_timeout: Duration::from_secs(30),
            labels: contracts::labels::Labels::new(),
            announce_interval: Duration::from_millis(contracts::presence::DEFAULT_INTERVAL_MS),
            pass_env: Vec::new(),
            max_output: DEFAULT_MAX_OUTPUT,
            transfer_roots: Vec::new(),
            key_file: None,
            trusted_keys_file: None,
            insecure_allow_unsigned: false,
            enrolled: false,
            janitor_interval: Duration::from_secs(3600),
            workspace_max_age: Duration::from_secs(7 * 24 * 3600),
            agent_id,
        }
    }
}
