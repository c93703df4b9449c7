//! Broker topology names and protocol limits. Agents declare their own queues at start; the
//! dispatcher only publishes, so a missing queue shows as an unroutable (returned) publish.

/// Direct exchange every command is published to, routed by agent id or pool name.
pub const COMMANDS_EXCHANGE: &str = "cuttle.commands";
/// Dead-letter exchange (fanout) and its queue: poison, expired and rejected messages end here.
pub const DEAD_EXCHANGE: &str = "cuttle.dead";
pub const DEAD_QUEUE: &str = "cuttle.dead";
/// Deliveries of one message before the broker dead-letters it instead of looping.
pub const DELIVERY_LIMIT: i64 = 5;
/// RabbitMQ's direct reply-to pseudo queue.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Checks a request's `reply_to`: only a direct reply-to address, which the broker makes of
/// [`REPLY_TO`] for the channel that published (`amq.rabbitmq.reply-to.<opaque>`), is answered.
/// Anything else would let a message make the agent publish into a queue of the sender's
/// choosing (another agent's commands, say).
pub fn check_reply_to(reply_to: &str) -> Result<(), ReplyToError> {
    let direct = reply_to.strip_prefix(REPLY_TO).and_then(|rest| rest.strip_prefix('.')).is_some_and(|r| !r.is_empty());
    if direct {
        Ok(())
    } else {
        Err(ReplyToError(reply_to.to_owned()))
    }
}

/// A `reply_to` that is not a direct reply-to address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("reply_to {0:?} is not a direct reply-to address ({REPLY_TO}.*)")]
pub struct ReplyToError(pub String);

/// The AMQP `content_type` of every message.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// Largest message body either side accepts; checked before decoding.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Longest log line; a longer output line is split into pieces of this size, never dropped.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;
/// Log bytes returned by one status reply at most; the rest comes with the next request.
pub const MAX_STATUS_LOG_BYTES: usize = 4 * 1024 * 1024;
/// Longest time an agent holds a status request waiting for output.
pub const MAX_STATUS_WAIT_MS: u64 = 10_000;
/// The clock-skew allowance: how far a dispatcher's and an agent's clocks may differ. Used when
/// checking `not_after`, and when comparing a start's first issue with the ticket store's epoch.
pub const CLOCK_SKEW_ALLOWANCE_MS: u64 = 5_000;
/// Longest agent id or pool name.
pub const MAX_NAME_LEN: usize = 100;

/// Queue of one agent.
pub fn agent_queue(agent_id: &str) -> String {
    format!("cuttle.agent.{agent_id}")
}

/// Queue shared by every worker of a pool.
pub fn pool_queue(pool: &str) -> String {
    format!("cuttle.pool.{pool}")
}

/// Routing key of a pool's work (starts); `:` cannot occur in an agent id, which routes by its
/// bare name.
pub fn pool_routing_key(pool: &str) -> String {
    format!("pool:{pool}")
}

/// Queue of a pool's other requests (status, cancel, complete, capabilities), which any worker
/// answers from the shared ticket store. Apart from the work queue so that a worker holding a
/// start while it waits for room never keeps them waiting.
pub fn pool_service_queue(pool: &str) -> String {
    format!("cuttle.pool.{pool}.service")
}

pub fn pool_service_routing_key(pool: &str) -> String {
    format!("pool:{pool}:service")
}

/// Whether `agent_id` is the id of one of `pool`'s workers enrolled as a pool (`dispatcher
/// enrol-pool`): `<pool>.<name>`, its name without dots (a pod name, say). Such a worker
/// declares its own queue and binding itself, with the permissions of
/// [`Permissions::pool_worker`], since nobody can enrol an id before its pod exists.
pub fn is_pool_worker_id(pool: &str, agent_id: &str) -> bool {
    agent_id
        .strip_prefix(pool)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|name| !name.is_empty() && name.chars().all(|c| is_name_char(c) && c != '.'))
}

/// Checks an agent id or pool name (`what` says which): 1 to 100 characters of `[A-Za-z0-9._-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(NameError::Length { what });
    }
    if !name.chars().all(is_name_char) {
        return Err(NameError::Characters { what, name: name.to_owned() });
    }
    Ok(())
}

/// Why a name (`what`: an agent id, a pool name) cannot be one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must be 1 to {MAX_NAME_LEN} characters")]
    Length { what: &'static str },
    #[error("{what} {name:?} has characters outside [A-Za-z0-9._-]")]
    Characters { what: &'static str, name: String },
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The stream every agent announces itself to (`super::presence`).
pub const PRESENCE_STREAM: &str = "cuttle.presence";
/// AMQP `type` of an announcement, and of the marker a reader appends to know it has caught up.
pub const ANNOUNCEMENT_TYPE: &str = "cuttle.announce";
pub const MARKER_TYPE: &str = "cuttle.presence-marker";
/// How long the stream keeps announcements (`x-max-age`), and the size of its segments: the
/// broker drops whole segments, so small ones keep a small fleet's old heartbeats from lingering.
pub const PRESENCE_MAX_AGE: &str = "5m";
pub const PRESENCE_SEGMENT_BYTES: i64 = 4 * 1024 * 1024;

/// The stream agents append their run receipts to (`crate::receipt`), and the AMQP `type` of a
/// receipt there (a reader's marker has [`MARKER_TYPE`]).
pub const RECEIPTS_STREAM: &str = "cuttle.receipts";
pub const RECEIPT_TYPE: &str = "cuttle.receipt";
/// How long the receipts stream keeps receipts, and how many bytes at most, unless the operator
/// chose otherwise when declaring it (`dispatcher setup-broker`); the oldest go first.
pub const RECEIPTS_MAX_AGE: &str = "30D";
pub const RECEIPTS_MAX_BYTES: i64 = 10_000_000_000;
/// Segments of the receipts stream, the unit the broker drops.
pub const RECEIPTS_SEGMENT_BYTES: i64 = 64 * 1024 * 1024;

/// Queue arguments and the permissions of each role, for the crates that speak to the broker.
#[cfg(feature = "amqp")]
pub mod amqp {
    use super::*;
    use lapin::types::{AMQPValue, FieldTable};
    use std::time::Duration;

    /// Arguments of every command queue: quorum, with a delivery limit and dead-lettering, and
    /// for the queue of an ephemeral identity (a pool worker) an expiry once unused (`x-expires`).
    pub fn command_queue_arguments(expires: Option<Duration>) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(DELIVERY_LIMIT));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_EXCHANGE.into()));
        if let Some(expires) = expires {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(expires.as_millis().max(1) as i64));
        }
        args
    }

    /// Arguments of the presence stream; every declarer must use exactly these.
    pub fn presence_stream_arguments() -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
        args.insert("x-max-age".into(), AMQPValue::LongString(PRESENCE_MAX_AGE.into()));
        args.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(PRESENCE_SEGMENT_BYTES));
        args
    }

    /// Arguments of the receipts stream, keeping receipts `max_age` (RabbitMQ's form: `30D`,
    /// `12h`) and at most `max_bytes`.
    pub fn receipts_stream_arguments(max_age: &str, max_bytes: i64) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
        args.insert("x-max-age".into(), AMQPValue::LongString(max_age.into()));
        args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(max_bytes));
        args.insert("x-stream-max-segment-size-bytes".into(), AMQPValue::LongLongInt(RECEIPTS_SEGMENT_BYTES));
        args
    }

    /// Arguments of [`DEAD_QUEUE`] as agents declare it when nobody set the broker up: quorum,
    /// unbounded (`dispatcher setup-broker` bounds it, see [`bounded_dead_queue_arguments`]).
    pub fn dead_queue_arguments() -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        args
    }

    /// [`DEAD_QUEUE`] holding at most `max_length` messages (the oldest dropped first), each for
    /// at most `ttl`.
    pub fn bounded_dead_queue_arguments(max_length: u32, ttl: Duration) -> FieldTable {
        let mut args = dead_queue_arguments();
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(i64::from(max_length)));
        args.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl.as_millis() as i64));
        args
    }
}

/// RabbitMQ permissions of one user: regular expressions over resource names, as
/// `rabbitmqctl set_permissions -p VHOST USER CONFIGURE WRITE READ` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Matches nothing.
const NOTHING: &str = "^$";
/// The default exchange, by the name RabbitMQ checks its permissions under: agents answer
/// through it (direct reply-to) and announce themselves on the presence stream through it.
const DEFAULT_EXCHANGE: &str = "amq\\.default";

fn escape(name: &str) -> String {
    name.replace('.', "\\.")
}

impl Permissions {
    /// An enrolled agent (`worker-agent run --enrolled`): declares nothing, reads its own queue
    /// (and its pool's), publishes only through the default exchange (replies, presence).
    pub fn agent(agent_id: &str, pool: Option<&str>) -> Permissions {
        let mut queues = vec![escape(&agent_queue(agent_id))];
        if let Some(pool) = pool {
            queues.push(escape(&pool_queue(pool)));
            queues.push(escape(&pool_service_queue(pool)));
        }
        Permissions {
            configure: NOTHING.into(),
            write: format!("^{DEFAULT_EXCHANGE}$"),
            read: format!("^({})$", queues.join("|")),
        }
    }

    /// Every worker of `pool` enrolled as a pool (`dispatcher enrol-pool`), whose ids are
    /// `<pool>.<name>` ([`is_pool_worker_id`]): declares and binds its own queue, and nothing
    /// else (configure and write on the queues of the pool's workers only, write on
    /// [`DEAD_EXCHANGE`] because RabbitMQ asks for it to declare a queue that dead-letters
    /// there), reads those queues and its pool's, and binds to [`COMMANDS_EXCHANGE`] (read).
    pub fn pool_worker(pool: &str) -> Permissions {
        let own = format!("{}[A-Za-z0-9_-]+", escape(&agent_queue(&format!("{pool}."))));
        let shared = [COMMANDS_EXCHANGE.to_owned(), pool_queue(pool), pool_service_queue(pool)].map(|n| escape(&n));
        Permissions {
            configure: format!("^{own}$"),
            write: format!("^({DEFAULT_EXCHANGE}|{}|{own})$", escape(DEAD_EXCHANGE)),
            read: format!("^({}|{own})$", shared.join("|")),
        }
    }

    /// A dispatcher (and `dispatcher serve`): publishes commands, reads the presence and
    /// receipts streams (after a marker it publishes there), takes replies by direct reply-to.
    pub fn dispatcher() -> Permissions {
        Permissions {
            configure: NOTHING.into(),
            write: format!("^({}|{DEFAULT_EXCHANGE})$", escape(COMMANDS_EXCHANGE)),
            read: format!("^({}|{})$", escape(PRESENCE_STREAM), escape(RECEIPTS_STREAM)),
        }
    }

    /// An autoscaler (KEDA) reading queue lengths with passive declares: nothing else.
    pub fn queue_length_reader() -> Permissions {
        Permissions { configure: NOTHING.into(), write: NOTHING.into(), read: NOTHING.into() }
    }

    /// The command that grants them to `user` in `vhost`.
    pub fn rabbitmqctl(&self, vhost: &str, user: &str) -> String {
        format!(
            "rabbitmqctl set_permissions -p '{vhost}' '{user}' '{}' '{}' '{}'",
            self.configure, self.write, self.read
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_may_read_only_its_own_queues_and_write_only_the_default_exchange() {
        let p = Permissions::agent("web-01", None);
        assert_eq!(p.read, "^(cuttle\\.agent\\.web-01)$");
        assert_eq!(p.write, "^amq\\.default$");
        assert_eq!(p.configure, "^$");
        let pooled = Permissions::agent("w-1", Some("batch"));
        assert_eq!(pooled.read, "^(cuttle\\.agent\\.w-1|cuttle\\.pool\\.batch|cuttle\\.pool\\.batch\\.service)$");
        assert_eq!(
            Permissions::dispatcher().rabbitmqctl("/", "d"),
            "rabbitmqctl set_permissions -p '/' 'd' '^$' '^(cuttle\\.commands|amq\\.default)$' '^(cuttle\\.presence|cuttle\\.receipts)$'"
        );
    }

    #[test]
    fn a_pool_worker_may_configure_only_its_pools_worker_queues() {
        let p = Permissions::pool_worker("batch");
        assert_eq!(p.configure, "^cuttle\\.agent\\.batch\\.[A-Za-z0-9_-]+$");
        assert_eq!(p.write, "^(amq\\.default|cuttle\\.dead|cuttle\\.agent\\.batch\\.[A-Za-z0-9_-]+)$");
        assert_eq!(
            p.read,
            "^(cuttle\\.commands|cuttle\\.pool\\.batch|cuttle\\.pool\\.batch\\.service|cuttle\\.agent\\.batch\\.[A-Za-z0-9_-]+)$"
        );
        assert!(is_pool_worker_id("batch", "batch.cuttle-worker-5d8f9-x2x9z"));
        // Another pool's worker (pool "batch.gpu") is not one of pool "batch"'s.
        for other in ["batch", "batch.", "batch.gpu.w-1", "batchx.w-1", "web-01"] {
            assert!(!is_pool_worker_id("batch", other), "{other}");
        }
    }

    #[test]
    fn only_direct_reply_to_addresses_are_answered() {
        assert!(check_reply_to("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNjA5MDMyNQAAAAAAAAAA.abc").is_ok());
        for bad in
            ["amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to.", "cuttle.agent.web-01", "amq.rabbitmq.reply-tox", ""]
        {
            assert!(check_reply_to(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("agent id", "web-01").is_ok());
        assert!(validate_name("agent id", "pool:x").is_err());
        assert!(validate_name("agent id", "").is_err());
        assert_ne!(pool_routing_key("web-01"), "web-01");
    }
}
