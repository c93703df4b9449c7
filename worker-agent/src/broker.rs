//! The agent's edge to RabbitMQ: declares its topology, consumes its queue, hands each delivery
//! to the [`Agent`], replies through direct reply-to, and acks. It reconnects by itself after
//! losing the broker; requests lost meanwhile are repeated by the dispatcher.

use crate::broker_call::{call, BrokerError};
use crate::config::Protocol;
use crate::handling::{Handling, Received, Source};
use crate::service::Agent;
use contracts::agent::flow::environment::{Answer, Delivery, Served, Settle};
use contracts::backoff::Backoff;
use contracts::time::short;
use contracts::time::unix_millis;
use contracts::trust::amqp::{seal_of, with_seal};
use contracts::wire::endpoints::AmqpEndpoints;
use contracts::wire::envelope::Reply;
use contracts::wire::topology::amqp::{command_queue_arguments, dead_queue_arguments};
use contracts::wire::topology::{
    agent_queue, check_reply_to, is_pool_worker_id, pool_queue, pool_routing_key, pool_service_queue,
    pool_service_routing_key, COMMANDS_EXCHANGE, CONTENT_TYPE, DEAD_EXCHANGE, DEAD_QUEUE,
};
use edge::connect::broker::{why_no_answer, Silence};
use edge::connect::proxy::ProxyError;
use edge::connect::tls::TlsFailure;
use edge::entropy::OsEntropy;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Timeout around each broker call; lapin's own calls can otherwise hang on a dead link.
const BROKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause before the first reconnection attempt after losing a link that served (full
/// jitter: a random part of it), doubling with each failed attempt up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts: short, so a broker that comes back is used
/// again within about a second.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How often the agent counts the consumers of its own queue ([`count_other_consumers`]).
const OTHER_CONSUMERS_CHECK: Duration = Duration::from_secs(30);

/// Whether the broker refused a declare because the queue exists with other arguments.
fn is_precondition_failed(error: &BrokerError) -> bool {
    let BrokerError::Call { source, .. } = error else { return false };
    matches!(source.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// What an agent declares of its topology (see [`declare_topology`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Declare {
    /// Everything it needs: the shared exchanges, the dead-letter queue, the queue and its binding.
    All,
    /// Only the queue and its binding, when the shared topology is the operator's (a pool worker
    /// enrolled as a pool: `--enrolled`, `--pool P`, an id `P.NAME`).
    Queue,
    /// Nothing: the operator declared all of it (`--enrolled`); it is only checked, passively.
    Nothing,
}

impl Declare {
    /// What an agent declares of its own queue: a pool worker enrolled as a pool
    /// ([`is_pool_worker_id`]) declares it, since no operator can enrol an id (a pod name)
    /// before it exists.
    pub(crate) fn own_queue(enrolled: bool, agent_id: &str, pool: Option<&str>) -> Declare {
        match (enrolled, pool) {
            (false, _) => Declare::All,
            (true, Some(pool)) if is_pool_worker_id(pool, agent_id) => Declare::Queue,
            (true, _) => Declare::Nothing,
        }
    }

    /// What an agent declares of its pool's queues, which are shared.
    pub(crate) fn pool_queues(enrolled: bool) -> Declare {
        if enrolled {
            Declare::Nothing
        } else {
            Declare::All
        }
    }
}

/// Declares what `declare` says: the shared exchanges, the dead-letter queue, and one command
/// queue bound to `routing_key`, with `expires` as its `x-expires`. Idempotent.
///
/// A queue that already exists with other arguments (declared by an earlier version, with
/// another `--queue-expiry`, or a dead-letter queue bounded by `dispatcher setup-broker`) is used
/// as it is: the broker refuses the declare and closes the channel, so the queue is declared
/// again passively on a new channel, with a notice. Returns the channel to go on with.
///
/// What is not declared (the exchange, with [`Declare::Queue`] or [`Declare::Nothing`]; the
/// queue too with [`Declare::Nothing`]) is only checked, passively, so an agent's user needs no
/// configure permission on it.
pub(crate) async fn declare_topology(
    connection: &Connection,
    channel: Channel,
    queue: &str,
    routing_key: &str,
    expires: Option<Duration>,
    declare: Declare,
) -> Result<Channel, BrokerError> {
    let t = BROKER_CALL_TIMEOUT;
    let channel = if declare == Declare::All {
        declare_shared(connection, channel).await?
    } else {
        let passive = ExchangeDeclareOptions { passive: true, durable: true, ..Default::default() };
        let exchange =
            channel.exchange_declare(COMMANDS_EXCHANGE.into(), ExchangeKind::Direct, passive, FieldTable::default());
        call("exchange.declare", t, exchange).await.map_err(|e| not_enrolled(e, COMMANDS_EXCHANGE))?;
        channel
    };
    if declare == Declare::Nothing {
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let declare = channel.queue_declare(queue.into(), passive, FieldTable::default());
        call("queue.declare", t, declare).await.map_err(|e| not_enrolled(e, queue))?;
        return Ok(channel);
    }
    let channel = declare_or_use(connection, channel, queue, command_queue_arguments(expires)).await?;
    call(
        "queue.bind",
        t,
        channel.queue_bind(
            queue.into(),
            COMMANDS_EXCHANGE.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(channel)
}

/// Declares the shared exchanges and the dead-letter queue with its binding.
async fn declare_shared(connection: &Connection, channel: Channel) -> Result<Channel, BrokerError> {
    let t = BROKER_CALL_TIMEOUT;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for (exchange, kind) in [(COMMANDS_EXCHANGE, ExchangeKind::Direct), (DEAD_EXCHANGE, ExchangeKind::Fanout)] {
        call("exchange.declare", t, channel.exchange_declare(exchange.into(), kind, durable, FieldTable::default()))
            .await?;
    }
    let channel = declare_or_use(connection, channel, DEAD_QUEUE, dead_queue_arguments()).await?;
    call(
        "queue.bind",
        t,
        channel.queue_bind(
            DEAD_QUEUE.into(),
            DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    Ok(channel)
}

/// Declares a durable queue with `arguments`, or uses it as it is when it exists with others;
/// the channel to go on with.
async fn declare_or_use(
    connection: &Connection,
    channel: Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<Channel, BrokerError> {
    let t = BROKER_CALL_TIMEOUT;
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    match call("queue.declare", t, channel.queue_declare(queue.into(), options, arguments)).await {
        Ok(_) => Ok(channel),
        Err(error) if is_precondition_failed(&error) => {
            tracing::warn!(%queue, %error, "the queue exists with other arguments; using it as it is (delete it, or set a broker policy, to change them)");
            let channel = call("channel.open", t, connection.create_channel()).await?;
            let passive = QueueDeclareOptions { passive: true, ..options };
            call("queue.declare", t, channel.queue_declare(queue.into(), passive, FieldTable::default())).await?;
            Ok(channel)
        }
        Err(error) => Err(error),
    }
}

/// What an enrolled agent reports when what the operator should have declared is missing.
fn not_enrolled(error: BrokerError, what: &str) -> BrokerError {
    let BrokerError::Call { source, .. } = &error else { return error };
    match source.kind() {
        lapin::ErrorKind::ProtocolError(e) if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) => {
            BrokerError::NotEnrolled { what: what.to_owned() }
        }
        _ => error,
    }
}

/// Serves the agent's queue until `shutdown`, reconnecting after every loss of the broker: to
/// the next node of the cluster when `amqp_url` lists several. Returns early with the error
/// when no retry can mend the connection: the broker's certificate is not trusted, or the
/// proxy refuses us ([`BrokerError::is_setting`]).
pub(crate) async fn serve(agent: Arc<Agent>, shutdown: CancellationToken) -> Result<(), BrokerError> {
    let mut endpoints = match edge::connect::broker::endpoints(&agent.config().amqp_url) {
        Ok(endpoints) => endpoints,
        Err(error) => {
            tracing::error!(agent = %agent.config().agent_id, %error, "cannot serve: bad AMQP URL list");
            return Ok(());
        }
    };
    // Full jitter, so a fleet that lost the broker together does not come back in step.
    let mut backoff = Backoff::full_jitter(FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, fastrand::u64(..));
    while !shutdown.is_cancelled() {
        let mut consumed = false;
        match consume(&agent, &shutdown, &mut endpoints, &mut consumed).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_setting() => {
                agent.set_ready(false);
                tracing::error!(agent = %agent.config().agent_id, %error, "cannot connect to the broker, and no retry can mend it; stopping (a setting to fix, not an outage)");
                return Err(error);
            }
            Err(error) => {
                // A link that served is lost: come back quickly, as after the first loss.
                if consumed {
                    backoff.reset();
                }
                let delay = backoff.ceiling();
                agent.set_ready(false);
                agent.metrics().common.broker_reconnects.inc();
                if let BrokerError::Tls { .. } | BrokerError::Proxy { .. } | BrokerError::ProxySilent { .. } = error {
                    tracing::error!(agent = %agent.config().agent_id, %error, retry_in = %short(delay), "cannot connect to the broker; retrying");
                } else {
                    tracing::warn!(agent = %agent.config().agent_id, %error, retry_in = %short(delay), "lost the broker; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
    Ok(())
}

/// Connects to the first node of one round that answers, and keeps it as the one in use; the
/// error of the last node tried when none does.
async fn connect(agent: &Agent, endpoints: &mut AmqpEndpoints) -> Result<Connection, BrokerError> {
    let config = agent.config();
    let mut last_error = None;
    for (index, url) in endpoints.round() {
        let name = format!("cuttle-agent {}", config.agent_id);
        let connect = edge::connect::broker::connect(&url, &name, &config.amqp_tls, &config.proxy);
        let connected = match call("connect", config.connect_timeout, connect).await {
            Err(BrokerError::Call { call, source }) => match TlsFailure::of(&source) {
                Some(failure) => Err(BrokerError::Tls { failure, cause: source }),
                None if ProxyError::of(&source).is_some() => Err(BrokerError::Proxy { cause: source }),
                None => Err(BrokerError::Call { call, source }),
            },
            Err(BrokerError::Timeout { after, call }) => {
                Err(match why_no_answer(&url, &config.proxy, config.connect_timeout).await {
                    Silence::Broker => BrokerError::Silent { after },
                    Silence::Proxy(proxy) => BrokerError::ProxySilent { proxy: proxy.to_string(), after },
                    Silence::Unreachable => BrokerError::Timeout { after, call },
                })
            }
            connected => connected,
        };
        match connected {
            Ok(connection) => {
                endpoints.connected(index);
                return Ok(connection);
            }
            Err(error) => {
                if endpoints.urls().len() > 1 {
                    tracing::debug!(agent = %config.agent_id, node = index + 1, %error, "broker node not reachable; trying the next");
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.expect("a list has at least one URL"))
}

/// Serves one connection until it is lost (an error) or `shutdown`; `consumed` is set once it
/// consumes.
async fn consume(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    endpoints: &mut AmqpEndpoints,
    consumed: &mut bool,
) -> Result<(), BrokerError> {
    let connection = connect(agent, endpoints).await?;
    let result = consume_on(agent, shutdown, &connection, consumed).await;
    if result.is_err() {
        // Lost this node (or it failed us): the next round begins with the next one.
        endpoints.lost();
    }
    result
}

async fn consume_on(
    agent: &Arc<Agent>,
    shutdown: &CancellationToken,
    connection: &Connection,
    consumed: &mut bool,
) -> Result<(), BrokerError> {
    let config = agent.config();
    let channel = call("channel.open", BROKER_CALL_TIMEOUT, connection.create_channel()).await?;
    let queue = agent_queue(&config.agent_id);
    let declare = Declare::own_queue(config.enrolled, &config.agent_id, config.pool.as_deref());
    let channel = declare_topology(connection, channel, &queue, &config.agent_id, config.queue_expiry, declare).await?;
    // Prefetch is per consumer, each set before its consumer starts: together they hold at most
    // --prefetch deliveries, and so at most that many times the broker's message limit.
    let prefetch = config.consumer_prefetch();
    call("basic.qos", BROKER_CALL_TIMEOUT, channel.basic_qos(prefetch.own, BasicQosOptions::default())).await?;
    let mut own = start_consumer(&channel, &queue).await?;
    // A pool's work queue (starts) on a channel of its own: a worker with bounded scripts takes
    // one pool start at a time, so while it waits for room the rest go to other workers. The
    // pool's other requests come on its service queue, on the agent's main channel.
    let (mut pool, mut pool_service) = match &config.pool {
        None => (None, None),
        Some(pool) => {
            let pool_channel = call("channel.open", BROKER_CALL_TIMEOUT, connection.create_channel()).await?;
            let work_queue = pool_queue(pool);
            let declare = Declare::pool_queues(config.enrolled);
            let pool_channel =
                declare_topology(connection, pool_channel, &work_queue, &pool_routing_key(pool), None, declare).await?;
            let qos = pool_channel.basic_qos(prefetch.pool_work, BasicQosOptions::default());
            call("basic.qos", BROKER_CALL_TIMEOUT, qos).await?;
            let work = start_consumer(&pool_channel, &work_queue).await?;
            let service_queue = pool_service_queue(pool);
            let service_channel = declare_topology(
                connection,
                channel.clone(),
                &service_queue,
                &pool_service_routing_key(pool),
                None,
                declare,
            )
            .await?;
            // The main channel, or a new one if the queue was declared by others (which then
            // has no prefetch yet: unbounded).
            let qos = service_channel.basic_qos(prefetch.pool_service, BasicQosOptions::default());
            call("basic.qos", BROKER_CALL_TIMEOUT, qos).await?;
            let service = start_consumer(&service_channel, &service_queue).await?;
            tracing::info!(agent = %config.agent_id, work = %work_queue, service = %service_queue, "consuming pool commands");
            (Some((pool_channel, work)), Some((service_channel, service)))
        }
    };
    tracing::info!(agent = %config.agent_id, queue = %queue, "consuming commands");
    agent.set_ready(true);
    *consumed = true;
    // A legacy agent behaves as agents did before presence: it does not announce itself.
    let announcer = match config.protocol {
        Protocol::V2 => crate::presence::Announcer::start(agent.clone(), connection).await,
        Protocol::V1 => None,
    };
    // Stops publishing receipts when dropped with this connection.
    let _receipts = crate::receipts::Publisher::start(agent.ledger(), config.enrolled, connection).await;
    let handlers = TaskTracker::new();
    // The first tick at once: someone already reading this queue is reported at start.
    let mut consumers_check = tokio::time::interval(OTHER_CONSUMERS_CHECK);
    consumers_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let (source, delivery) = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = consumers_check.tick() => {
                count_other_consumers(agent, connection, &queue).await;
                continue;
            }
            delivery = own.next() => (Source::Own, delivery),
            delivery = next_delivery(&mut pool) => (Source::Pool, delivery),
            delivery = next_delivery(&mut pool_service) => (Source::Own, delivery),
        };
        match delivery {
            None => break Err(BrokerError::ConsumerClosed),
            Some(Err(source)) => break Err(BrokerError::Call { call: "basic.deliver", source }),
            Some(Ok(delivery)) => {
                handlers.spawn(handle_delivery(agent.clone(), channel.clone(), delivery, source, shutdown.clone()));
            }
        }
    };
    agent.set_ready(false);
    if result.is_ok() {
        // Take no more deliveries; those not acked go back to the queue for other consumers.
        let _ =
            call("basic.cancel", BROKER_CALL_TIMEOUT, channel.basic_cancel(own.tag(), BasicCancelOptions::default()))
                .await;
        for (pool_channel, consumer) in [&pool_service, &pool].into_iter().flatten() {
            let cancel = pool_channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
            let _ = call("basic.cancel", BROKER_CALL_TIMEOUT, cancel).await;
        }
        if let Some(announcer) = announcer {
            announcer.leave(agent).await;
        }
        handlers.close();
        let _ = tokio::time::timeout(BROKER_CALL_TIMEOUT, handlers.wait()).await;
        let _ = call("connection.close", BROKER_CALL_TIMEOUT, connection.close(200, "agent stopping".into())).await;
    }
    result
}

/// Counts the consumers of the agent's own queue besides itself, into the metric, with a warning
/// when there are any. Nothing else should ever consume it, but quorum queues do not enforce an
/// exclusive consumer: another one takes a share of the agent's commands (with a higher
/// priority, all of them), which then never reach the agent. It is an attacker holding broker
/// credentials, a second agent started with this id, or, briefly after a reconnect, this agent's
/// own previous connection that the broker has not noticed is gone yet.
async fn count_other_consumers(agent: &Agent, connection: &Connection, queue: &str) {
    let count = async {
        // A passive declare that fails closes its channel: one of its own.
        let channel = call("channel.open", BROKER_CALL_TIMEOUT, connection.create_channel()).await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let declared = call(
            "queue.declare",
            BROKER_CALL_TIMEOUT,
            channel.queue_declare(queue.into(), passive, FieldTable::default()),
        )
        .await;
        let _ = call("channel.close", BROKER_CALL_TIMEOUT, channel.close(200, "counted".into())).await;
        declared.map(|queue| queue.consumer_count())
    };
    match count.await {
        Ok(consumers) => {
            let others = consumers.saturating_sub(1);
            agent.metrics().other_consumers.set(i64::from(others));
            if others > 0 {
                tracing::warn!(agent = %agent.config().agent_id, %queue, others, "another consumer reads this agent's own queue: the commands it takes never reach this agent. It is someone with broker credentials, a second agent started with this id, or (for a few seconds after a reconnect) this agent's previous connection; list them with `rabbitmqctl list_consumers`");
            }
        }
        Err(error) => {
            tracing::debug!(agent = %agent.config().agent_id, %error, "could not count the consumers of the agent's queue")
        }
    }
}

async fn start_consumer(channel: &Channel, queue: &str) -> Result<lapin::Consumer, BrokerError> {
    let consume = channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default());
    call("basic.consume", BROKER_CALL_TIMEOUT, consume).await
}

/// The next delivery of a pool consumer (work or service), or never for an agent without a pool.
async fn next_delivery(
    consumer: &mut Option<(Channel, lapin::Consumer)>,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    match consumer {
        Some((_, consumer)) => consumer.next().await,
        None => std::future::pending().await,
    }
}

async fn handle_delivery(
    agent: Arc<Agent>,
    channel: Channel,
    delivery: lapin::message::Delivery,
    source: Source,
    shutdown: CancellationToken,
) {
    let config = agent.config();
    let props = &delivery.properties;
    let reply_to = props.reply_to().as_ref().map(ShortString::to_string);
    let correlation_id = props.correlation_id().as_ref().map(ShortString::to_string);
    if let Some(Err(reason)) = reply_to.as_deref().map(check_reply_to) {
        // Not answered, not served: dead-lettered with the reason logged.
        tracing::warn!(agent = %config.agent_id, kind = ?props.kind().as_ref().map(ShortString::as_str), %reason, "rejecting message");
        if let Err(error) = delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await {
            tracing::warn!(agent = %config.agent_id, %error, "could not settle rejected delivery");
        }
        return;
    }
    // What the agent does with it is contracts' flow: the trust checks, then the request.
    let received = Received {
        kind: props.kind().as_ref().map(ShortString::to_string),
        bytes: delivery.data.len(),
        source,
        shutdown: &shutdown,
        ack: Some(Box::pin(ack(&agent, &delivery))),
    };
    let (served, acked_early, unsettled) = {
        let mut handling = Handling::new(&agent, Some(received));
        let served = contracts::agent::flow::serve::serve(
            &mut handling,
            Delivery { body: &delivery.data, seal: seal_of(props) },
        )
        .await;
        // The place a start took for its script is given back here unless the script runs in it.
        (served, handling.acked_early(), handling.unsettled())
    };
    let (reply, answer, settle) = match served {
        Served::Answered { reply, answer, settle } => (reply, answer, settle),
        Served::Returned => {
            // Never started here: back to the queue, for another worker.
            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            return;
        }
    };
    send_reply(&agent, &channel, reply_to, correlation_id, &reply, &answer).await;
    let settled = match settle {
        Settle::Ack if acked_early => return,
        Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
        // Dead-lettered to cuttle.dead; the reason is in the log line the flow's note made.
        Settle::DeadLetter => delivery.nack(BasicNackOptions { requeue: false, ..Default::default() }).await,
    };
    if let Err(error) = settled {
        // An ack lost: the broker redelivers; the request is idempotent, so that is harmless.
        tracing::warn!(agent = %config.agent_id, %error, "{unsettled}");
    }
}

async fn ack(agent: &Agent, delivery: &lapin::message::Delivery) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The broker redelivers; the request is idempotent, so that is harmless.
        tracing::warn!(agent = %agent.config().agent_id, %error, "could not ack delivery");
    }
}

async fn send_reply(
    agent: &Agent,
    channel: &Channel,
    reply_to: Option<String>,
    correlation_id: Option<String>,
    reply: &Reply,
    answer: &Answer,
) {
    let (Some(reply_to), Some(correlation_id)) = (reply_to, correlation_id) else {
        tracing::debug!(agent = %agent.config().agent_id, "request without reply-to; not answering");
        return;
    };
    let issued_at = unix_millis(SystemTime::now());
    let agent_id = &agent.config().agent_id;
    let in_reply_to = answer.in_reply_to.clone();
    let bytes =
        match reply.encode_answering(agent_id, issued_at, in_reply_to, answer.key_share.as_ref(), &mut OsEntropy) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "could not encode reply");
                return;
            }
        };
    let mut properties =
        BasicProperties::default().with_type(reply.kind().as_str().into()).with_content_type(CONTENT_TYPE.into());
    // Signed over the request's correlation id and, inside the body, the request's digest.
    if let Some(seal) = agent.trust().seal_answer(answer.session.as_ref(), &correlation_id, &bytes) {
        properties = with_seal(properties, &seal);
    }
    let properties = properties.with_correlation_id(correlation_id.into());
    let publish = channel.basic_publish("".into(), reply_to.into(), BasicPublishOptions::default(), &bytes, properties);
    if let Err(error) = call("basic.publish", BROKER_CALL_TIMEOUT, publish).await {
        // The dispatcher asks again for what it did not get.
        tracing::warn!(agent = %agent.config().agent_id, %error, "could not send reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pool_worker_enrolled_as_a_pool_declares_its_own_queue() {
        assert_eq!(Declare::own_queue(false, "web-01", None), Declare::All);
        assert_eq!(Declare::own_queue(true, "web-01", None), Declare::Nothing);
        assert_eq!(Declare::own_queue(true, "w-1", Some("batch")), Declare::Nothing);
        assert_eq!(Declare::own_queue(true, "batch.cuttle-worker-7f-x2", Some("batch")), Declare::Queue);
        assert_eq!(Declare::own_queue(true, "batch.cuttle-worker-7f-x2", None), Declare::Nothing);
        assert_eq!(Declare::pool_queues(true), Declare::Nothing);
        assert_eq!(Declare::pool_queues(false), Declare::All);
    }
}
