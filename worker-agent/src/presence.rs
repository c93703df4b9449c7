//! The agent's announcements on the presence stream (see [`contracts::wire::presence`]), each signed
//! with the agent key as its answers are: one at start, one per heartbeat interval, and a last
//! one saying it is leaving when it stops, so dispatchers see it within about a second of
//! starting and drop it at once when it stops (or within its heartbeat window when it dies).

use crate::broker_call::{call, BrokerError};
use crate::service::Agent;
use contracts::trust::amqp::with_seal;
use contracts::wire::presence::{Announcement, ANNOUNCEMENT_VERSION};
use contracts::wire::topology::amqp::presence_stream_arguments;
use contracts::wire::topology::{ANNOUNCEMENT_TYPE, CONTENT_TYPE, PRESENCE_STREAM};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Declares the presence stream (idempotent); only checks it, passively, for an `enrolled` agent.
pub(crate) async fn declare_stream(channel: &Channel, enrolled: bool) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions { durable: true, passive: enrolled, ..Default::default() };
    let arguments = if enrolled { FieldTable::default() } else { presence_stream_arguments() };
    call("queue.declare", CALL_TIMEOUT, channel.queue_declare(PRESENCE_STREAM.into(), options, arguments)).await?;
    Ok(())
}

/// What the agent says about itself now.
pub(crate) fn announcement(agent: &Agent, leaving: bool) -> Announcement {
    let config = agent.config();
    Announcement {
        version: ANNOUNCEMENT_VERSION,
        agent_id: config.agent_id.clone(),
        pool: config.pool.clone(),
        labels: config.labels.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        services: agent.services(),
        running_scripts: u32::try_from(agent.running()).unwrap_or(u32::MAX),
        interval_ms: config.announce_interval.as_millis() as u64,
        at: contracts::time::unix_millis(SystemTime::now()),
        leaving,
    }
}

/// Publishes one announcement, signed with the agent key (no confirm: the next heartbeat
/// repeats it anyway).
pub(crate) async fn publish(agent: &Agent, channel: &Channel, leaving: bool) -> Result<(), BrokerError> {
    let body = match announcement(agent, leaving).encode() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "could not encode announcement");
            return Ok(());
        }
    };
    let mut properties =
        BasicProperties::default().with_type(ANNOUNCEMENT_TYPE.into()).with_content_type(CONTENT_TYPE.into());
    if let Some(seal) = agent.trust().seal_announcement(&body) {
        properties = with_seal(properties, &seal);
    }
    let publish =
        channel.basic_publish("".into(), PRESENCE_STREAM.into(), BasicPublishOptions::default(), &body, properties);
    call("basic.publish", CALL_TIMEOUT, publish).await?;
    Ok(())
}

/// The heartbeat of one broker connection: started once the agent consumes, stopped with a
/// `leaving` announcement when it stops, or dropped (and stopped) when the connection is lost.
pub(crate) struct Announcer {
    channel: Channel,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Declares the stream and starts announcing on a channel of its own. Presence is not worth
    /// refusing work for: if the stream cannot be used, the agent serves without announcing.
    pub(crate) async fn start(agent: Arc<Agent>, connection: &Connection) -> Option<Announcer> {
        let id = agent.config().agent_id.clone();
        let channel = match call("channel.open", CALL_TIMEOUT, connection.create_channel()).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(agent = %id, %error, "cannot announce this agent; serving without presence");
                return None;
            }
        };
        if let Err(error) = declare_stream(&channel, agent.config().enrolled).await {
            tracing::warn!(agent = %id, %error, "cannot declare the presence stream; serving without presence");
            return None;
        }
        let stop = CancellationToken::new();
        let (beating, stopped) = (channel.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(agent.config().announce_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = ticks.tick() => {
                        if let Err(error) = publish(&agent, &beating, false).await {
                            // The connection is going; the agent's reconnection starts a new heartbeat.
                            tracing::warn!(agent = %agent.config().agent_id, %error, "could not announce this agent");
                            return;
                        }
                    }
                }
            }
        });
        tracing::info!(agent = %id, stream = PRESENCE_STREAM, "announcing this agent");
        Some(Announcer { channel, stop, task })
    }

    /// Stops the heartbeat and says the agent is leaving, so it drops out at once.
    pub(crate) async fn leave(mut self, agent: &Agent) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        if let Err(error) = publish(agent, &self.channel, true).await {
            tracing::debug!(%error, "could not announce leaving; the agent drops out after its window");
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
