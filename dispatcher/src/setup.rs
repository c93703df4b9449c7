//! Operator steps on the broker, run once with an operator's credentials, so that agents and
//! dispatchers can run with users that may configure nothing (docs/security.md, "Least privilege on the broker"):
//! `setup-broker` declares the shared topology, `enrol-agent` one agent's queue and binding,
//! `enrol-pool` a pool's queues (its workers declare their own).

use crate::error::{LinkLost, RpcError};
use crate::rpc::{self, RpcConfig};
use contracts::wire::topology::amqp::{
    bounded_dead_queue_arguments, command_queue_arguments, presence_stream_arguments, receipts_stream_arguments,
};
use contracts::wire::topology::{
    agent_queue, pool_queue, pool_routing_key, pool_service_queue, pool_service_routing_key, COMMANDS_EXCHANGE,
    DEAD_EXCHANGE, DEAD_QUEUE,
};
use contracts::wire::topology::{PRESENCE_STREAM, RECEIPTS_STREAM};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use std::time::Duration;

/// How [`DEAD_QUEUE`] is bounded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeadLimits {
    pub max_length: u32,
    pub ttl: Duration,
}

/// What `setup-broker` found of the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadQueue {
    /// Declared now, with the limits.
    Bounded,
    /// It was there already: its arguments cannot change; the limits need a broker policy.
    Existing,
}

fn failed(call: &'static str) -> impl Fn(lapin::Error) -> RpcError {
    move |source| RpcError::ConnectionLost(LinkLost::Setup { call, source })
}

/// Declares the exchanges, the presence stream and the dead-letter queue (bounded by `dead`
/// when it is new) with its binding. Idempotent.
pub(crate) async fn setup_broker(
    config: &RpcConfig,
    dead: DeadLimits,
    receipts: &ReceiptsRetention,
) -> Result<(DeadQueue, bool), RpcError> {
    let connection = rpc::connect(config, "cuttle-dispatcher setup-broker").await?;
    let result = match declare_shared(&connection, dead).await {
        Ok(dead) => declare_receipts(&connection, receipts).await.map(|existed| (dead, existed)),
        Err(error) => Err(error),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "setup done".into())).await;
    result
}

async fn declare_shared(connection: &Connection, dead: DeadLimits) -> Result<DeadQueue, RpcError> {
    let channel = connection.create_channel().await.map_err(failed("channel.open"))?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    for (exchange, kind) in [(COMMANDS_EXCHANGE, ExchangeKind::Direct), (DEAD_EXCHANGE, ExchangeKind::Fanout)] {
        channel
            .exchange_declare(exchange.into(), kind, durable, FieldTable::default())
            .await
            .map_err(failed("exchange.declare"))?;
    }
    let queue = QueueDeclareOptions { durable: true, ..Default::default() };
    channel
        .queue_declare(PRESENCE_STREAM.into(), queue, presence_stream_arguments())
        .await
        .map_err(failed("queue.declare"))?;
    // A queue's arguments are fixed once declared: an existing dead-letter queue is left as it is.
    let passive = QueueDeclareOptions { passive: true, ..queue };
    let (channel, found) = match channel.queue_declare(DEAD_QUEUE.into(), passive, FieldTable::default()).await {
        Ok(_) => (channel, DeadQueue::Existing),
        Err(_) => {
            let channel = connection.create_channel().await.map_err(failed("channel.open"))?;
            let arguments = bounded_dead_queue_arguments(dead.max_length, dead.ttl);
            channel.queue_declare(DEAD_QUEUE.into(), queue, arguments).await.map_err(failed("queue.declare"))?;
            (channel, DeadQueue::Bounded)
        }
    };
    bind(&channel, DEAD_QUEUE, DEAD_EXCHANGE, "").await?;
    Ok(found)
}

/// How long and how much the receipts stream keeps, when it is first declared.
pub(crate) struct ReceiptsRetention {
    pub max_age: String,
    pub max_bytes: i64,
}

/// Declares the receipts stream with `retention` unless it exists (whose retention then stays:
/// a stream's arguments cannot change). Whether it existed.
async fn declare_receipts(connection: &Connection, retention: &ReceiptsRetention) -> Result<bool, RpcError> {
    let channel = connection.create_channel().await.map_err(failed("channel.open"))?;
    let passive = QueueDeclareOptions { durable: true, passive: true, ..Default::default() };
    if channel.queue_declare(RECEIPTS_STREAM.into(), passive, FieldTable::default()).await.is_ok() {
        return Ok(true);
    }
    let channel = connection.create_channel().await.map_err(failed("channel.open"))?;
    let arguments = receipts_stream_arguments(&retention.max_age, retention.max_bytes);
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(RECEIPTS_STREAM.into(), durable, arguments).await.map_err(failed("queue.declare"))?;
    Ok(false)
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) -> Result<(), RpcError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed("queue.bind"))
}

/// Declares an agent's queue bound to its id (with `agent_id`) and, with `pool`, the pool's work
/// and service queues bound to theirs, as an agent itself would. Idempotent.
pub(crate) async fn enrol(config: &RpcConfig, agent_id: Option<&str>, pool: Option<&str>) -> Result<(), RpcError> {
    let connection = rpc::connect(config, "cuttle-dispatcher enrol").await?;
    let result = async {
        let channel = connection.create_channel().await.map_err(failed("channel.open"))?;
        let mut queues: Vec<_> = agent_id.map(|id| (agent_queue(id), id.to_owned())).into_iter().collect();
        if let Some(pool) = pool {
            queues.push((pool_queue(pool), pool_routing_key(pool)));
            queues.push((pool_service_queue(pool), pool_service_routing_key(pool)));
        }
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        for (queue, routing_key) in queues {
            channel
                .queue_declare(queue.as_str().into(), options, command_queue_arguments(None))
                .await
                .map_err(failed("queue.declare"))?;
            bind(&channel, &queue, COMMANDS_EXCHANGE, &routing_key).await?;
        }
        Ok(())
    }
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "enrol done".into())).await;
    result
}

/// The vhost a broker URL names (`/` when it names none), for `rabbitmqctl -p`.
pub(crate) fn vhost_of(amqp_url: &str) -> String {
    amqp_url.parse::<lapin::uri::AMQPUri>().map(|uri| uri.vhost).unwrap_or_else(|_| "/".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_comes_from_the_url() {
        assert_eq!(vhost_of("amqp://u:p@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672/cuttle"), "cuttle");
        assert_eq!(vhost_of("amqp://h"), "/");
    }
}
