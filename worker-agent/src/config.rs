//! The agent's configuration, filled by the CLI from flags and environment, or directly by
//! tests.

use contracts::wire::topology::MAX_MESSAGE_BYTES;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long a pool worker's own queue outlives the worker unless `--queue-expiry` says otherwise.
pub const DEFAULT_POOL_QUEUE_EXPIRY: Duration = Duration::from_secs(600);
/// Bytes of one script's output kept unless `--max-output` says otherwise.
pub const DEFAULT_MAX_OUTPUT: u64 = 256 * 1024 * 1024;
/// Deliveries the agent holds at once unless `--prefetch` says otherwise. Each body is at most
/// [`MAX_MESSAGE_BYTES`] (the agent's limit, and the broker's `max_message_size` in every broker
/// config Cuttle ships), so the messages the agent holds take 512 MiB at most.
pub const DEFAULT_PREFETCH: u16 = 32;
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
    pub amqp_tls: edge::connect::tls::TlsMaterial,
    /// The HTTP proxy the broker is reached through, if any (`--proxy`, `ALL_PROXY`, ...).
    pub proxy: edge::connect::proxy::ProxySettings,
    /// CA and client certificate for a `rediss://` store URL (`--redis-ca-file`, ...).
    pub redis_tls: edge::connect::tls::TlsMaterial,
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
    /// Deliveries held at once, across every queue the agent consumes ([`AgentConfig::consumer_prefetch`]).
    pub prefetch: u16,
    /// How long a running ticket's lease lasts without renewal; an agent dead this long is
    /// reported as lost.
    pub lease_ttl: Duration,
    /// How long a ticket's record and output are kept if it is never completed.
    pub record_ttl: Duration,
    /// How long a completed ticket's tombstone is kept when its command carried no deadline
    /// (legacy script v1); otherwise it is kept until the deadline has passed (see
    /// [`contracts::agent::tombstone_ttl_ms`]).
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
    pub labels: contracts::wire::labels::Labels,
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
    /// The users scripts may run as (`--allow-run-as`, `--default-run-as`).
    pub run_as: contracts::agent::run_as::RunAsPolicy,
    /// The most each script may use (`--max-memory-per-script` and so on), and what it gets when
    /// it names no limit.
    pub limit_caps: contracts::wire::messages::ScriptLimits,
    /// The caps and how each limit is enforced: set at start ([`crate::run`]) from the cgroups
    /// found; none enforced until then.
    pub limits: contracts::agent::limits::LimitPolicy,
    /// Where scripts' cgroups are made (found at start).
    pub cgroups: std::sync::Arc<crate::limits::Cgroups>,
}

impl AgentConfig {
    /// Where the Redis ticket store is: `redis_url`, or the master the Sentinels name.
    pub fn redis_target(&self) -> edge::connect::store::RedisTarget {
        use edge::connect::store::RedisTarget;
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
            proxy: edge::connect::proxy::ProxySettings::direct(),
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
            prefetch: DEFAULT_PREFETCH,
            lease_ttl: Duration::from_secs(15),
            record_ttl: Duration::from_secs(7 * 24 * 3600),
            tombstone_ttl: Duration::from_secs(3600),
            queue_expiry: None,
            connect_timeout: Duration::from_secs(5),
            health_addr: None,
            drain_timeout: Duration::from_secs(30),
            labels: contracts::wire::labels::Labels::new(),
            announce_interval: Duration::from_millis(contracts::wire::presence::DEFAULT_INTERVAL_MS),
            pass_env: Vec::new(),
            max_output: DEFAULT_MAX_OUTPUT,
            transfer_roots: Vec::new(),
            key_file: None,
            trusted_keys_file: None,
            insecure_allow_unsigned: false,
            enrolled: false,
            janitor_interval: Duration::from_secs(3600),
            workspace_max_age: Duration::from_secs(7 * 24 * 3600),
            run_as: crate::run_as::policy(Vec::new(), None).expect("no user named is a valid policy"),
            limit_caps: Default::default(),
            limits: Default::default(),
            cgroups: Default::default(),
            agent_id,
        }
    }

    /// How `prefetch` is shared among the queues the agent consumes (AMQP prefetch is per
    /// consumer), so that together they hold at most that many deliveries: all of it for an
    /// agent's own queue; for a pool worker with `--max-scripts`, one for the pool's work queue
    /// (it takes one start at a time) and the rest halved between the pool's service queue and
    /// its own queue; without, a third each (the service queue, where status requests wait,
    /// taking what does not divide). Each consumer gets at least one.
    pub fn consumer_prefetch(&self) -> ConsumerPrefetch {
        let total = self.prefetch.max(1);
        if self.pool.is_none() {
            return ConsumerPrefetch { own: total, pool_service: 0, pool_work: 0 };
        }
        let (pool_work, own) = match self.max_scripts {
            Some(_) => (1, total.saturating_sub(1) / 2),
            None => (total / 3, total / 3),
        };
        let pool_service = total.saturating_sub(pool_work + own);
        ConsumerPrefetch { own: own.max(1), pool_service: pool_service.max(1), pool_work: pool_work.max(1) }
    }

    /// The most message bytes the agent holds at once: its deliveries in flight, each at most
    /// [`MAX_MESSAGE_BYTES`].
    pub fn held_message_bytes(&self) -> u64 {
        let prefetch = self.consumer_prefetch();
        u64::from(prefetch.own + prefetch.pool_service + prefetch.pool_work) * MAX_MESSAGE_BYTES as u64
    }
}

/// Deliveries each of the agent's consumers may hold (AMQP per-consumer prefetch); 0 for a queue
/// it does not consume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerPrefetch {
    pub own: u16,
    pub pool_service: u16,
    pub pool_work: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefetch(prefetch: u16, pool: bool, max_scripts: Option<usize>) -> ConsumerPrefetch {
        let mut config = AgentConfig::new("a");
        config.prefetch = prefetch;
        config.pool = pool.then(|| "p".to_owned());
        config.max_scripts = max_scripts;
        config.consumer_prefetch()
    }

    #[test]
    fn the_prefetch_is_shared_among_the_queues_consumed_and_never_exceeded() {
        assert_eq!(prefetch(32, false, None), ConsumerPrefetch { own: 32, pool_service: 0, pool_work: 0 });
        assert_eq!(prefetch(32, true, Some(4)), ConsumerPrefetch { own: 15, pool_service: 16, pool_work: 1 });
        assert_eq!(prefetch(32, true, None), ConsumerPrefetch { own: 10, pool_service: 12, pool_work: 10 });
        for total in 3..=600 {
            for (pool, max_scripts) in [(false, None), (true, Some(1)), (true, None)] {
                let p = prefetch(total, pool, max_scripts);
                assert!(p.own + p.pool_service + p.pool_work <= total, "{total} {pool} {max_scripts:?}: {p:?}");
                assert!(p.own >= 1 && (!pool || p.pool_service >= 1 && p.pool_work >= 1), "{p:?}");
            }
        }
        assert_eq!(prefetch(1, true, None), ConsumerPrefetch { own: 1, pool_service: 1, pool_work: 1 }, "one each");
    }

    /// Today the default prefetch (512) times the broker's limit is 8 GiB.
    #[test]
    fn by_default_the_messages_an_agent_holds_take_512_mib_at_most() {
        for (pool, max_scripts) in [(false, None), (true, Some(1)), (true, None)] {
            let mut config = AgentConfig::new("a");
            config.pool = pool.then(|| "p".to_owned());
            config.max_scripts = max_scripts;
            assert!(
                config.held_message_bytes() <= 512 << 20,
                "{pool} {max_scripts:?}: {}",
                config.held_message_bytes()
            );
        }
    }
}
