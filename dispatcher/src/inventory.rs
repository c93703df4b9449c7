//! The live fleet, from the agents' own announcements on the presence stream (see
//! [`contracts::presence`]): who is alive, in which pool, with which labels and version.
//!
//! [`Inventory`] is the plain part (newest announcement per agent, liveness, selection), fed by
//! [`read`], which reads the stream from one lookback back until it has caught up with the
//! present (a marker it appends itself comes back), checking every announcement on the way.

use crate::rpc::{self, RpcConfig};
use contracts::labels::{Selectable, Selector};
use contracts::presence::{Announcement, ANNOUNCEMENT_TYPE, LOOKBACK_MS, MARKER_TYPE, PRESENCE_STREAM};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Longest time reading the stream may take before giving up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight while reading; acked in batches of half of it.
const PREFETCH: u16 = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot reach the broker: {0}")]
    Connect(String),
    #[error("broker call {call} failed: {reason}")]
    Broker { call: &'static str, reason: String },
    #[error("the presence stream did not catch up within {0:?}")]
    Timeout(Duration),
}

/// Why an announcement was not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// It did not decode or failed its checks.
    Invalid(String),
    /// Its signature does not verify against the key pinned for its agent.
    Forged(String),
}

/// The newest announcement of every agent seen.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    newest: BTreeMap<String, Announcement>,
    ignored: Vec<Ignored>,
}

impl Inventory {
    /// Takes one announcement that passed its checks: kept if it is the agent's newest.
    pub fn observe(&mut self, announcement: Announcement) {
        match self.newest.get(&announcement.agent_id) {
            Some(known) if known.at > announcement.at => {}
            _ => {
                self.newest.insert(announcement.agent_id.clone(), announcement);
            }
        }
    }

    /// Notes an announcement that was not counted.
    pub fn ignore(&mut self, why: Ignored) {
        self.ignored.push(why);
    }

    pub fn ignored(&self) -> &[Ignored] {
        &self.ignored
    }

    /// The agents alive at `now` (unix ms), by id.
    pub fn live(&self, now: u64) -> impl Iterator<Item = &Announcement> {
        self.newest.values().filter(move |a| a.is_live(now))
    }

    /// The live agents `selector` matches, by id (all live agents without one).
    pub fn select(&self, selector: Option<&Selector>, now: u64) -> Vec<&Announcement> {
        self.live(now)
            .filter(|a| {
                selector.is_none_or(|s| {
                    s.matches(Selectable { id: &a.agent_id, pool: a.pool.as_deref(), labels: &a.labels })
                })
            })
            .collect()
    }
}

/// Decodes one delivery's body into the inventory, or notes why it does not count.
pub fn accept(inventory: &mut Inventory, body: &[u8]) {
    match Announcement::decode(body) {
        Ok(announcement) => inventory.observe(announcement),
        Err(error) => inventory.ignore(Ignored::Invalid(error.to_string())),
    }
}

/// Reads the presence stream into an inventory: from [`LOOKBACK_MS`] ago up to now.
pub async fn read(config: &RpcConfig) -> Result<Inventory, InventoryError> {
    let connection = rpc::connect(config, "cuttle-dispatcher inventory")
        .await
        .map_err(|e| InventoryError::Connect(e.to_string()))?;
    let result = tokio::time::timeout(READ_TIMEOUT, read_on(&connection)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "inventory read".into())).await;
    result.map_err(|_| InventoryError::Timeout(READ_TIMEOUT))?
}

async fn read_on(connection: &lapin::Connection) -> Result<Inventory, InventoryError> {
    let broker = |call: &'static str| move |e: lapin::Error| InventoryError::Broker { call, reason: e.to_string() };
    let channel = connection.create_channel().await.map_err(broker("channel.open"))?;
    // The agents declare the stream; before the first agent ever started there is none, and no
    // one is alive.
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    if let Err(error) = channel.queue_declare(PRESENCE_STREAM.into(), passive, FieldTable::default()).await {
        tracing::debug!(%error, "no presence stream yet");
        return Ok(Inventory::default());
    }
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(broker("basic.qos"))?;
    let from = SystemTime::now() - Duration::from_millis(LOOKBACK_MS);
    let mut arguments = FieldTable::default();
    let from_secs = from.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    arguments.insert("x-stream-offset".into(), AMQPValue::Timestamp(from_secs));
    let mut consumer = channel
        .basic_consume(PRESENCE_STREAM.into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .map_err(broker("basic.consume"))?;
    // Everything appended before our marker is what the stream held when we asked.
    let marker = uuid::Uuid::new_v4().to_string();
    let properties = BasicProperties::default().with_type(MARKER_TYPE.into()).with_message_id(marker.clone().into());
    channel
        .basic_publish("".into(), PRESENCE_STREAM.into(), BasicPublishOptions::default(), b"", properties)
        .await
        .map_err(broker("basic.publish"))?;
    let mut inventory = Inventory::default();
    let mut unacked = 0u16;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(broker("basic.deliver"))?;
        unacked += 1;
        if unacked >= PREFETCH / 2 {
            let ack = BasicAckOptions { multiple: true };
            channel.basic_ack(delivery.delivery_tag, ack).await.map_err(broker("basic.ack"))?;
            unacked = 0;
        }
        let kind = delivery.properties.kind().as_ref().map(ShortString::as_str);
        let message_id = delivery.properties.message_id().as_ref().map(ShortString::as_str);
        match kind {
            Some(MARKER_TYPE) if message_id == Some(marker.as_str()) => break,
            Some(ANNOUNCEMENT_TYPE) => accept(&mut inventory, &delivery.data),
            _ => {}
        }
    }
    Ok(inventory)
}

/// Now, in unix ms, for liveness checks.
pub fn now_ms() -> u64 {
    contracts::unix_millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::presence::ANNOUNCEMENT_VERSION;

    fn announcement(id: &str, at: u64, labels: &[(&str, &str)]) -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            agent_id: id.into(),
            pool: None,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            agent_version: "0.1.0".into(),
            services: Vec::new(),
            running_scripts: 0,
            interval_ms: 1_000,
            at,
            leaving: false,
        }
    }

    #[test]
    fn the_newest_announcement_of_each_agent_counts() {
        let mut inventory = Inventory::default();
        inventory.observe(announcement("a", 10_000, &[("env", "prod")]));
        inventory.observe(announcement("a", 9_000, &[("env", "old")]));
        inventory.observe(announcement("b", 5_000, &[("env", "prod")]));
        let live: Vec<&str> = inventory.live(10_500).map(|a| a.agent_id.as_str()).collect();
        assert_eq!(live, ["a"], "b's window has passed");
        assert_eq!(inventory.live(10_500).next().unwrap().labels["env"], "prod", "the older one did not win");
        inventory.observe(Announcement { leaving: true, ..announcement("a", 11_000, &[]) });
        assert_eq!(inventory.live(11_000).count(), 0, "a leaving agent drops out at once");
    }

    #[test]
    fn selection_keeps_the_live_matching_agents() {
        let mut inventory = Inventory::default();
        inventory.observe(announcement("web-1", 10_000, &[("env", "prod"), ("role", "web")]));
        inventory.observe(announcement("web-2", 10_000, &[("env", "staging"), ("role", "web")]));
        inventory.observe(announcement("db-1", 10_000, &[("env", "prod"), ("role", "db")]));
        let ids = |selector: &str| -> Vec<String> {
            let selector = Selector::parse(selector).unwrap();
            inventory.select(Some(&selector), 10_000).into_iter().map(|a| a.agent_id.clone()).collect()
        };
        assert_eq!(ids("env=prod"), ["db-1", "web-1"]);
        assert_eq!(ids("role=web,env!=prod"), ["web-2"]);
        assert!(ids("role=cache").is_empty());
        assert_eq!(inventory.select(None, 10_000).len(), 3);
    }

    #[test]
    fn undecodable_announcements_are_noted_and_ignored() {
        let mut inventory = Inventory::default();
        accept(&mut inventory, b"\xc1");
        assert_eq!(inventory.live(0).count(), 0);
        assert!(matches!(inventory.ignored(), [Ignored::Invalid(_)]));
    }
}
