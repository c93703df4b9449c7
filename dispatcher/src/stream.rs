//! Reading one of the agents' streams (presence, receipts) from a point in time up to the
//! present: the reader appends a marker of its own, and what came before it is what the stream
//! held when it asked. Used by [`crate::inventory`] and [`crate::receipts`].

use contracts::trust::amqp::seal_of;
use contracts::trust::seal::{Seal, SealHeaderError};
use contracts::wire::topology::MARKER_TYPE;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use std::time::SystemTime;

/// Deliveries in flight while reading; acked in batches of half of it. The client holds each one
/// whole before it can be looked at, so this bounds what junk on the stream can cost: at most 64
/// bodies at the broker's limit (16 MiB), however much junk there is. Real messages are a few
/// hundred bytes, and reading ahead by 64 keeps the broker sending while the rest is checked.
const PREFETCH: u16 = 64;

/// A broker call that failed while reading.
#[derive(Debug, thiserror::Error)]
#[error("broker call {call} failed: {source}")]
pub struct StreamError {
    pub call: &'static str,
    #[source]
    pub source: lapin::Error,
}

/// Reads `stream` from `from` (the broker's append time, in whole seconds) up to now, giving each
/// message of AMQP type `kind` to `keep` with the seal its headers carry. `Ok(false)`: there is
/// no such stream (no agent ever declared it).
pub async fn read(
    connection: &lapin::Connection,
    stream: &str,
    kind: &str,
    from: SystemTime,
    mut keep: impl FnMut(Vec<u8>, Result<Option<Seal>, SealHeaderError>),
) -> Result<bool, StreamError> {
    let broker = |call: &'static str| move |source: lapin::Error| StreamError { call, source };
    let channel = connection.create_channel().await.map_err(broker("channel.open"))?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    if let Err(error) = channel.queue_declare(stream.into(), passive, FieldTable::default()).await {
        tracing::debug!(%error, stream, "no such stream yet");
        return Ok(false);
    }
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(broker("basic.qos"))?;
    let mut arguments = FieldTable::default();
    let from_secs = from.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(from_secs));
    let mut consumer = channel
        .basic_consume(stream.into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .map_err(broker("basic.consume"))?;
    // Everything appended before our marker is what the stream held when we asked.
    let marker = uuid::Uuid::new_v4().to_string();
    let properties = BasicProperties::default().with_type(MARKER_TYPE.into()).with_message_id(marker.clone().into());
    channel
        .basic_publish("".into(), stream.into(), BasicPublishOptions::default(), b"", properties)
        .await
        .map_err(broker("basic.publish"))?;
    let mut unacked = 0u16;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(broker("basic.deliver"))?;
        unacked += 1;
        if unacked >= PREFETCH / 2 {
            let ack = BasicAckOptions { multiple: true };
            channel.basic_ack(delivery.delivery_tag, ack).await.map_err(broker("basic.ack"))?;
            unacked = 0;
        }
        let message_kind = delivery.properties.kind().as_ref().map(ShortString::as_str);
        let message_id = delivery.properties.message_id().as_ref().map(ShortString::as_str);
        match message_kind {
            Some(MARKER_TYPE) if message_id == Some(marker.as_str()) => break,
            Some(found) if found == kind => keep(delivery.data, seal_of(&delivery.properties)),
            _ => {}
        }
    }
    Ok(true)
}
