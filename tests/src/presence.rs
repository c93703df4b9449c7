//! The presence stream as anyone holding the broker's credentials sees it: they can read every
//! agent's announcements and append their own, forged or copied (and so to the receipts stream).

use contracts::trust::amqp::{seal_of, with_seal};
use contracts::trust::seal::Seal;
use contracts::wire::presence::{Announcement, ANNOUNCEMENT_VERSION};
use contracts::wire::topology::{ANNOUNCEMENT_TYPE, PRESENCE_STREAM};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::{Duration, SystemTime};

/// An announcement as it travelled: its body and the seal its headers carried.
#[derive(Clone, Debug)]
pub struct Captured {
    pub announcement: Announcement,
    pub body: Vec<u8>,
    pub seal: Option<Seal>,
}

/// A connection to the presence stream of the test broker.
pub struct PresenceStream {
    connection: lapin::Connection,
    channel: lapin::Channel,
}

impl PresenceStream {
    pub async fn connect() -> PresenceStream {
        let connection = lapin::Connection::connect(&crate::amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("the test broker must be running (see README)");
        let channel = connection.create_channel().await.expect("channel");
        PresenceStream { connection, channel }
    }

    /// Appends `body` to the stream as an announcement, with `seal` in its headers (or none).
    pub async fn append(&self, body: &[u8], seal: Option<&Seal>) {
        self.append_to(PRESENCE_STREAM, ANNOUNCEMENT_TYPE, body, seal).await;
    }

    /// Appends `body` to another of the agents' streams (the receipts stream), as a message of
    /// AMQP type `kind`, with `seal` in its headers (or none): anyone with the broker's
    /// credentials can.
    pub async fn append_to(&self, stream: &str, kind: &str, body: &[u8], seal: Option<&Seal>) {
        let mut properties = BasicProperties::default().with_type(kind.into());
        if let Some(seal) = seal {
            properties = with_seal(properties, seal);
        }
        let publish = BasicPublishOptions::default();
        self.channel.basic_publish("".into(), stream.into(), publish, body, properties).await.expect("append");
    }

    /// An announcement of `agent_id` appended from a few seconds ago on (waits up to 20 s).
    pub async fn capture(&self, agent_id: &str) -> Captured {
        let channel = self.connection.create_channel().await.expect("channel");
        channel.basic_qos(500, BasicQosOptions::default()).await.expect("qos");
        let mut arguments = FieldTable::default();
        let from = SystemTime::now() - Duration::from_secs(5);
        let from = from.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs();
        arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(from));
        let mut consumer = channel
            .basic_consume(PRESENCE_STREAM.into(), "".into(), BasicConsumeOptions::default(), arguments)
            .await
            .expect("consume the presence stream");
        let found = async {
            while let Some(Ok(delivery)) = consumer.next().await {
                let _ = delivery.acker.ack(lapin::options::BasicAckOptions::default()).await;
                let Ok(announcement) = Announcement::decode(&delivery.data) else { continue };
                if announcement.agent_id == agent_id {
                    let seal = seal_of(&delivery.properties).expect("well-formed seal headers");
                    return Captured { announcement, body: delivery.data, seal };
                }
            }
            panic!("the presence stream ended");
        };
        let captured = tokio::time::timeout(Duration::from_secs(20), found).await.expect("an announcement within 20s");
        let _ = channel.close(200, "captured".into()).await;
        captured
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "presence stream done".into()).await;
    }
}

/// What an agent would say of itself now: `agent_id` with `labels`, beating every second.
pub fn announcement(agent_id: &str, labels: &[(&str, &str)]) -> Announcement {
    Announcement {
        version: ANNOUNCEMENT_VERSION,
        agent_id: agent_id.into(),
        pool: None,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        services: vec![contracts::wire::messages::SERVICE_SCRIPT_V2.into()],
        running_scripts: 0,
        interval_ms: 1_000,
        at: contracts::time::unix_millis(SystemTime::now()),
        leaving: false,
    }
}
