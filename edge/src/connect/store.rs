//! Connecting to Redis: the agent's ticket store, at one server (`CUTTLE_REDIS_URL`) or the
//! master that Redis Sentinels name (`CUTTLE_REDIS_SENTINELS` + `CUTTLE_REDIS_SERVICE`), followed
//! through failovers; and the service's journal, a pool of connections ([`pool`]).
//!
//! redis-rs' Sentinel client finds the master only when a connection is made; a connection open
//! to a master that is demoted or gone stays there (redis-rs#1438). So [`RedisLink`] keeps one
//! multiplexed connection to the master it was told of, drops it on any error that says the
//! link or the role is gone (I/O, timeout, `READONLY` from a demoted master), and asks the
//! Sentinels again on the next command. The command that hit the error still fails: the store's
//! callers answer it as transient, and the dispatcher repeats it, as with a single Redis.

use super::tls::TlsMaterial;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, TlsMode, Value,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Where the ticket store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (or a proxy that follows the master for us); `rediss://` with `tls`.
    Url { url: String, tls: TlsMaterial },
    /// The master of `service` as the Sentinels at `sentinels` (`host:port`) report it. The
    /// database, user and password for the master come from `url`; a `rediss://` URL reaches
    /// the Sentinels and the master with TLS, both with `tls`.
    Sentinel { sentinels: Vec<String>, service: String, url: String, tls: TlsMaterial },
}

/// A connection to the ticket store that survives losing the server (and, with Sentinels, the
/// master being replaced).
#[derive(Clone)]
pub enum RedisLink {
    Direct(ConnectionManager),
    Sentinel(Arc<SentinelLink>),
}

/// The master named by the Sentinels, and the connection open to it now.
pub struct SentinelLink {
    sentinel: Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
    db: i64,
}

/// A Sentinel address that is not `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("sentinel address {0:?} is not host:port")]
pub struct SentinelAddressError(pub String);

/// Parses `host:port,host:port` into Sentinel addresses (`redis://host:port`).
pub fn parse_sentinels(list: &str) -> Result<Vec<String>, SentinelAddressError> {
    let addrs: Vec<String> = list.split(',').map(|a| a.trim().to_owned()).collect();
    for addr in &addrs {
        let valid = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(SentinelAddressError(addr.clone()));
        }
    }
    Ok(addrs)
}

impl RedisLink {
    /// Connects, waiting no longer than `connect_timeout` for each server.
    pub async fn connect(target: &RedisTarget, connect_timeout: Duration) -> RedisResult<RedisLink> {
        match target {
            RedisTarget::Url { url, tls } => {
                let client = client(url, tls)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                Ok(RedisLink::Direct(ConnectionManager::new_with_config(client, config).await?))
            }
            RedisTarget::Sentinel { sentinels, service, url, tls } => {
                let (sentinel, db) = sentinel_client(sentinels, service, url, tls)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(Duration::from_secs(5)));
                let link =
                    Arc::new(SentinelLink { sentinel: Mutex::new(sentinel), current: Mutex::default(), config, db });
                link.connection().await?;
                Ok(RedisLink::Sentinel(link))
            }
        }
    }
}

/// A client for `url`, with the CA and client certificate of `tls` when it has any.
fn client(url: &str, tls: &TlsMaterial) -> RedisResult<redis::Client> {
    if *tls == TlsMaterial::default() {
        return redis::Client::open(url);
    }
    redis::Client::build_with_tls(url, tls.redis_certificates())
}

/// A client of the master the Sentinels name, and the database it uses. With a `rediss://`
/// URL, the Sentinels and the master are both reached with TLS, trusting and presenting what
/// `tls` holds.
fn sentinel_client(
    sentinels: &[String],
    service: &str,
    url: &str,
    tls: &TlsMaterial,
) -> RedisResult<(SentinelClient, i64)> {
    let info = redis::Client::open(url)?.get_connection_info().clone();
    let master = info.redis_settings();
    let secure = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let addrs = sentinels.iter().map(|addr| {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "26379"));
        let (host, port) = (host.to_owned(), port.parse().unwrap_or(26379));
        if secure {
            ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
        } else {
            ConnectionAddr::Tcp(host, port)
        }
    });
    let mut builder = SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)?
        .set_client_to_redis_db(master.db())
        .set_client_to_redis_protocol(master.protocol());
    if let Some(username) = master.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = master.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if secure {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_redis_certificates(tls.redis_certificates())
            .set_client_to_sentinel_certificates(tls.redis_certificates());
    }
    Ok((builder.build()?, master.db()))
}

/// A client of the target's server now (with Sentinels, of the master they name now), for a
/// connection of its own such as a subscription.
pub async fn current_client(target: &RedisTarget) -> RedisResult<redis::Client> {
    match target {
        RedisTarget::Url { url, tls } => client(url, tls),
        RedisTarget::Sentinel { sentinels, service, url, tls } => {
            let (mut sentinel, _) = sentinel_client(sentinels, service, url, tls)?;
            sentinel.async_get_client().await
        }
    }
}

/// A second connection to the same store, opened on first use, for `WAIT`: Redis holds the
/// connection that sent a `WAIT` until the replicas answer or it times out, and on the shared,
/// multiplexed connection that would hold every other command (lease renewals, status reads)
/// behind it.
pub struct WaitLink {
    target: RedisTarget,
    connect_timeout: Duration,
    link: tokio::sync::OnceCell<RedisLink>,
}

impl WaitLink {
    pub fn new(target: RedisTarget, connect_timeout: Duration) -> WaitLink {
        WaitLink { target, connect_timeout, link: tokio::sync::OnceCell::new() }
    }

    /// The connection, opened now if it never was (it reconnects by itself afterwards).
    pub async fn get(&self) -> RedisResult<RedisLink> {
        self.link.get_or_try_init(|| RedisLink::connect(&self.target, self.connect_timeout)).await.cloned()
    }
}

impl SentinelLink {
    /// The connection to the current master, asking the Sentinels which it is when there is none.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref() {
            return Ok(connection.clone());
        }
        let client = self.sentinel.lock().await.async_get_client().await?;
        let connection = client.get_multiplexed_async_connection_with_config(&self.config).await?;
        tracing::info!(master = ?client.get_connection_info().addr(), "connected to the redis master named by the sentinels");
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the connection after an error that says the master is gone or is no longer one.
    async fn after(&self, result: &RedisResult<impl Sized>) {
        let Err(error) = result else { return };
        if master_lost(error) {
            tracing::warn!(%error, "lost the redis master; asking the sentinels again on the next command");
            *self.current.lock().await = None;
        }
    }
}

/// Whether an error means the connection no longer leads to a writable master.
fn master_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
        || demoted(error)
}

/// Whether the server refused a write as a demoted master does (`READONLY`), in a reply or in
/// any reply of a pipeline.
fn demoted(error: &RedisError) -> bool {
    let kind = match error.kind() {
        ErrorKind::Server(kind) => Some(kind),
        _ => None,
    };
    refused_write(kind, error.detail())
        || error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| refused_write(error.kind(), error.details())))
}

/// Whether a server's error reply of `kind`, with `details` after its code, is a demoted master's
/// refusal to write. A write inside a script fails on Redis before 7 with the code `ERR` and the
/// refusal only in its text ("Error running script ... -READONLY You can't write against a read
/// only replica."): redis-rs has no kind for that, so only there the text of an `ERR` reply is
/// asked for the code.
fn refused_write(kind: Option<ServerErrorKind>, details: Option<&str>) -> bool {
    match kind {
        Some(ServerErrorKind::ReadOnly) => true,
        Some(ServerErrorKind::ResponseError) => details.is_some_and(|text| text.contains("READONLY")),
        _ => false,
    }
}

impl ConnectionLike for RedisLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisLink::Direct(manager) => manager.req_packed_command(cmd),
            RedisLink::Sentinel(link) => Box::pin(async move {
                let mut connection = link.connection().await?;
                let result = connection.req_packed_command(cmd).await;
                link.after(&result).await;
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisLink::Direct(manager) => manager.req_packed_commands(pipeline, offset, count),
            RedisLink::Sentinel(link) => Box::pin(async move {
                let mut connection = link.connection().await?;
                let result = connection.req_packed_commands(pipeline, offset, count).await;
                link.after(&result).await;
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisLink::Direct(manager) => manager.get_db(),
            RedisLink::Sentinel(link) => link.db,
        }
    }
}

/// How the service's journal pools its connections.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    pub max_size: usize,
    /// Longest wait for a free connection.
    pub wait_timeout: Duration,
    /// Longest wait for a new connection.
    pub create_timeout: Duration,
    /// Longest wait for a reply.
    pub response_timeout: Duration,
}

/// What in a pool's URL or settings is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    Url(#[source] RedisError),
    #[error("{0}")]
    Build(#[source] deadpool_redis::BuildError),
}

/// A pool of connections to the Redis at `url`, opened as they are needed; the error says what
/// in the URL or the settings is wrong.
pub fn pool(url: &str, settings: PoolSettings) -> Result<deadpool_redis::Pool, PoolError> {
    let config =
        deadpool_redis::redis::AsyncConnectionConfig::new().set_response_timeout(Some(settings.response_timeout));
    let manager = deadpool_redis::Manager::new_with_config(url, config).map_err(PoolError::Url)?;
    deadpool_redis::Pool::builder(manager)
        .max_size(settings.max_size)
        .wait_timeout(Some(settings.wait_timeout))
        .create_timeout(Some(settings.create_timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(PoolError::Build)
}

/// One connection to a Redis that every caller shares, requests pipelined over it, opened at
/// its first request and opened again after it breaks (the request that hit the break fails):
/// for requests that answer at once. A pool's connection costs a `PING` each time it is taken
/// ([`pool`]); this one costs nothing more.
pub struct SharedLink {
    client: redis::Client,
    settings: PoolSettings,
    link: tokio::sync::OnceCell<ConnectionManager>,
}

impl SharedLink {
    /// The link to the Redis at `url` (checked now, connected at the first request).
    pub fn new(url: &str, settings: PoolSettings) -> Result<SharedLink, PoolError> {
        let client = redis::Client::open(url).map_err(PoolError::Url)?;
        Ok(SharedLink { client, settings, link: tokio::sync::OnceCell::new() })
    }

    /// The connection, to use (and clone) for any number of requests at once.
    pub async fn get(&self) -> RedisResult<ConnectionManager> {
        let link = self.link.get_or_try_init(|| async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.settings.create_timeout))
                .set_response_timeout(Some(self.settings.response_timeout))
                .set_number_of_retries(2);
            ConnectionManager::new_lazy_with_config(self.client.clone(), config)
        });
        Ok(link.await?.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_lists_are_host_port_pairs() {
        assert_eq!(parse_sentinels("a:26379, b:26380").unwrap(), ["a:26379", "b:26380"]);
        for bad in ["", "a", "a:", ":1", "a:x", "a:1,,b:2", "a:70000"] {
            assert!(parse_sentinels(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_of_a_gone_or_demoted_master_drop_the_connection() {
        let readonly = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "READONLY",
            "You can't write against a read only replica.".to_string(),
        ));
        assert!(master_lost(&readonly));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(master_lost(&io));
        let wrong_type = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE",
            "Operation against a key holding the wrong kind of value".to_string(),
        ));
        assert!(!master_lost(&wrong_type));
    }

    #[test]
    fn a_script_refused_by_a_demoted_master_drops_the_connection() {
        // An error reply as the server sends it.
        let reply = |line: &str| {
            let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("an error reply");
            value.extract_error().expect_err("an error")
        };
        assert!(master_lost(&reply("READONLY You can't write against a read only replica.")));
        // Redis before 7: the script's write fails, and the script with ERR, the code in its text.
        let in_script = "ERR Error running script (call to f_1): @user_script:3: -READONLY You can't write against a read only replica.";
        assert!(master_lost(&reply(in_script)));
        assert!(!master_lost(&reply("ERR Error running script (call to f_1): @user_script:3: attempt to compare nil")));
        assert!(!master_lost(&reply("NOPERM this user has no permissions to run the 'eval' command")));
    }
}
