//! Hand-made messages: publish any bytes to an agent's queue with a reply-to, and read the reply
//! and the dead letters it caused.

use crate::amqp_url;
use contracts::trust::amqp::{seal_of, with_seal};
use contracts::trust::seal::{Seal, SealHeaderError};
use contracts::wire::envelope::Reply;
use contracts::wire::topology::{agent_queue, DEAD_EXCHANGE, REPLY_TO};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use std::time::Duration;

pub struct RawBroker {
    connection: Connection,
    channel: Channel,
    replies: Consumer,
    /// A queue of this test's own, bound to the dead-letter fanout: a copy of every dead letter
    /// (none for [`RawBroker::replies_only`]).
    dead: Option<Consumer>,
}

/// A reply as it came: its seal (as read from its headers) and its body.
pub type SealedReply = (Result<Option<Seal>, SealHeaderError>, Vec<u8>);

/// A message found in the dead-letter exchange.
#[derive(Debug)]
pub struct DeadLetter {
    pub correlation_id: Option<String>,
    pub reason: Option<String>,
}

impl RawBroker {
    /// On the shared broker.
    pub async fn connect() -> RawBroker {
        RawBroker::connect_to(&amqp_url()).await
    }

    /// On the broker at `url` (a private node), whose `cuttle.dead` exchange an agent declared.
    pub async fn connect_to(url: &str) -> RawBroker {
        let mut raw = RawBroker::replies_only(url).await;
        let channel = &raw.channel;
        let dead_queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("dead-letter tap");
        channel
            .queue_bind(
                dead_queue.name().clone(),
                DEAD_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind dead-letter tap");
        let dead = channel
            .basic_consume(
                dead_queue.name().clone(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume dead letters");
        raw.dead = Some(dead);
        raw
    }

    /// On the broker at `url`, reading replies only: no copy of the dead letters, which would
    /// cost this process every message an agent refuses (16 MiB ones, in the tests of size).
    pub async fn replies_only(url: &str) -> RawBroker {
        let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        let replies = channel
            .basic_consume(
                REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume replies");
        RawBroker { connection, channel, replies, dead: None }
    }

    /// Publishes `body` straight to the agent's queue, with `kind` as AMQP type, signed with the
    /// test dispatcher key (so the agent gets as far as decoding it), and returns the
    /// correlation id used.
    pub async fn publish(&self, agent_id: &str, kind: &str, body: &[u8]) -> String {
        self.publish_replying_to(agent_id, kind, body, REPLY_TO).await
    }

    /// [`RawBroker::publish`] asking for the reply to go to `reply_to`.
    pub async fn publish_replying_to(&self, agent_id: &str, kind: &str, body: &[u8], reply_to: &str) -> String {
        let seal = crate::trust::keys().dispatcher.seal_command(body);
        self.publish_with(&agent_queue(agent_id), kind, body, Some(&seal), reply_to).await
    }

    /// Publishes `body` to `queue` with `kind` as AMQP type and the given seal (or none), and
    /// returns the correlation id used.
    pub async fn publish_to(&self, queue: &str, kind: &str, body: &[u8], seal: Option<&Seal>) -> String {
        self.publish_with(queue, kind, body, seal, REPLY_TO).await
    }

    async fn publish_with(&self, queue: &str, kind: &str, body: &[u8], seal: Option<&Seal>, reply_to: &str) -> String {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let mut properties = BasicProperties::default()
            .with_reply_to(reply_to.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_type(kind.into())
            .with_delivery_mode(2);
        if let Some(seal) = seal {
            properties = with_seal(properties, seal);
        }
        self.channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties)
            .await
            .expect("publish")
            .await
            .expect("publish confirm");
        correlation_id
    }

    /// Waits for the reply with this correlation id.
    pub async fn reply(&mut self, correlation_id: &str) -> Reply {
        let (_, body) = self.sealed_reply(correlation_id).await;
        Reply::decode(&body).expect("decodable reply")
    }

    /// Waits for the reply with this correlation id: its seal (as read from its headers) and body.
    pub async fn sealed_reply(&mut self, correlation_id: &str) -> SealedReply {
        self.sealed_replies(&[correlation_id.to_owned()]).await.pop().expect("one reply")
    }

    /// Waits for the replies with these correlation ids, in whatever order they come (each
    /// within 20 s of the one before): their seals and bodies, in the order of the ids.
    pub async fn sealed_replies(&mut self, correlation_ids: &[String]) -> Vec<SealedReply> {
        let mut wanted: std::collections::HashMap<&str, usize> =
            correlation_ids.iter().enumerate().map(|(at, id)| (id.as_str(), at)).collect();
        let mut replies: Vec<Option<SealedReply>> = vec![None; correlation_ids.len()];
        while !wanted.is_empty() {
            let next = tokio::time::timeout(Duration::from_secs(20), self.replies.next());
            let delivery = match next.await.expect("a reply within 20s") {
                Some(Ok(delivery)) => delivery,
                _ => panic!("reply consumer closed"),
            };
            let id = delivery.properties.correlation_id().as_ref().map(|c| c.as_str());
            if let Some(at) = id.and_then(|id| wanted.remove(id)) {
                replies[at] = Some((seal_of(&delivery.properties), delivery.data));
            }
        }
        replies.into_iter().map(|reply| reply.expect("every reply came")).collect()
    }

    /// Waits for the dead letter of the message with this correlation id.
    pub async fn dead_letter(&mut self, correlation_id: &str) -> DeadLetter {
        let wait = async {
            let dead = self.dead.as_mut().expect("a RawBroker reading dead letters (connect_to)");
            while let Some(Ok(delivery)) = dead.next().await {
                let id = delivery.properties.correlation_id().as_ref().map(|c| c.to_string());
                if id.as_deref() != Some(correlation_id) {
                    continue;
                }
                let reason =
                    delivery.properties.headers().as_ref().and_then(|h| match h.inner().get("x-first-death-reason") {
                        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                        _ => None,
                    });
                return DeadLetter { correlation_id: id, reason };
            }
            panic!("dead-letter consumer closed");
        };
        tokio::time::timeout(Duration::from_secs(20), wait).await.expect("a dead letter within 20s")
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// A hand-made message: an envelope of `kind` around `body`, written as the dispatcher writes
/// (a msgpack map), without any of the checks the typed encoder would make.
pub fn envelope(kind: &str, body: serde_json::Value) -> Vec<u8> {
    let value = serde_json::json!({
        "version": 2, "kind": kind, "message_id": "m-1", "target": "x",
        "issued_at": contracts::time::unix_millis(std::time::SystemTime::now()), "not_after": null, "body": body,
    });
    rmp_serde::to_vec_named(&value).expect("a JSON value encodes")
}

/// A queue as a passive declaration reports it.
async fn declared(queue: &str) -> lapin::Queue {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("queue exists");
    let _ = connection.close(200, "done".into()).await;
    declared
}

/// Messages in a queue as its declaration reports them (a quorum queue counts those delivered
/// and not yet acked too).
pub async fn queue_depth(queue: &str) -> u32 {
    declared(queue).await.message_count()
}

/// Consumers of a queue now.
pub async fn consumer_count(queue: &str) -> u32 {
    declared(queue).await.consumer_count()
}

/// Deletes a queue (a pool's, after its test).
pub async fn delete_queue(queue: &str) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
    let _ = connection.close(200, "done".into()).await;
}

/// Messages ready and messages delivered but unacked in a queue, from `rabbitmqctl`.
pub async fn ready_and_unacked(queue: &str) -> Option<(u64, u64)> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"])
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(queue))?;
    let mut numbers = line.split_whitespace().skip(1).map(|n| n.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}
