//! Presence: how agents tell dispatchers they are alive, and what they are.
//!
//! Every agent appends an [`Announcement`] to one RabbitMQ stream (`PRESENCE_STREAM`, whose name,
//! message types and arguments are [`super::topology`]'s, with every other name), when it
//! starts, every `interval_ms` after that (its heartbeat), and once more (`leaving`) when it
//! stops. A dispatcher that wants the live fleet reads the stream from a little more than one
//! heartbeat window back ([`LOOKBACK_MS`]), keeps each agent's newest announcement, and drops
//! agents whose newest is older than their window ([`heartbeat_window_ms`]) or says `leaving`.
//! Agents need to reach only the broker, and nothing here needs a queue per agent or per
//! dispatcher. The choice and its cost at 10,000 agents are in ARCHITECTURE.md, Presence.
//!
//! An announcement is a msgpack map (`to_vec_named`), so fields can be added later. The broker
//! is not an authority: an announcement counts only if it is signed with the key pinned for its
//! agent (see the dispatcher's inventory); the `at` field bounds how long a copy can be replayed.

use super::envelope::check_shape;
use super::error::{CodecError, Invalid, Malformed};
use super::labels::{validate_labels, Labels};
use super::topology::{validate_name, CLOCK_SKEW_ALLOWANCE_MS};
use serde::{Deserialize, Serialize};

/// Largest announcement a reader decodes.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 16 * 1024;
/// The heartbeat interval agents use unless told otherwise, and its bounds.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
pub const MIN_INTERVAL_MS: u64 = 500;
pub const MAX_INTERVAL_MS: u64 = 10_000;
/// Heartbeats an agent may miss before it counts as gone: its window is this many intervals.
pub const WINDOW_INTERVALS: u64 = 3;
/// How far back a reader starts: the longest window, plus a second for the stream's timestamp
/// resolution (whole seconds).
pub const LOOKBACK_MS: u64 = MAX_INTERVAL_MS * WINDOW_INTERVALS + 1_000;
/// Format version written by this code.
pub const ANNOUNCEMENT_VERSION: u16 = 1;

/// What an agent says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub version: u16,
    pub agent_id: String,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// The agent's software version.
    pub agent_version: String,
    /// The services it answers (as its capabilities reply lists them).
    #[serde(default)]
    pub services: Vec<String>,
    /// Scripts running on it when it announced.
    #[serde(default)]
    pub running_scripts: u32,
    /// Its heartbeat interval: the next announcement comes within this.
    pub interval_ms: u64,
    /// Unix ms when it announced (its own clock).
    pub at: u64,
    /// The agent is stopping: drop it now rather than at the end of its window.
    #[serde(default)]
    pub leaving: bool,
}

impl Announcement {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Refuses an announcement over [`MAX_ANNOUNCEMENT_BYTES`]: a reader checks it as it reads
    /// one, before keeping its body.
    pub fn check_size(size: usize) -> Result<(), CodecError> {
        if size > MAX_ANNOUNCEMENT_BYTES {
            return Err(CodecError::TooLarge { size, limit: MAX_ANNOUNCEMENT_BYTES });
        }
        Ok(())
    }

    /// Decodes and checks an announcement: size first, then names, labels and interval.
    pub fn decode(bytes: &[u8]) -> Result<Announcement, CodecError> {
        Announcement::check_size(bytes.len())?;
        check_shape(bytes)?;
        let announcement: Announcement =
            rmp_serde::from_slice(bytes).map_err(|e| CodecError::Malformed(Malformed::Decode(e)))?;
        validate_name("agent id", &announcement.agent_id).map_err(Invalid::from)?;
        if let Some(pool) = &announcement.pool {
            validate_name("pool name", pool).map_err(Invalid::from)?;
        }
        validate_labels(&announcement.labels).map_err(Invalid::from)?;
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&announcement.interval_ms) {
            return Err(Invalid::HeartbeatInterval(announcement.interval_ms).into());
        }
        if announcement.agent_version.len() > 64 || announcement.services.len() > 32 {
            return Err(Invalid::Oversized.into());
        }
        Ok(announcement)
    }

    /// Whether the agent counts as alive at `now` (unix ms, the reader's clock): not leaving,
    /// and announced within its window. An announcement from further in the future than the
    /// clock skew allowance is not believed (it would keep a dead agent alive).
    pub fn is_live(&self, now: u64) -> bool {
        let from_the_future = self.at > now + CLOCK_SKEW_ALLOWANCE_MS;
        !self.leaving && !from_the_future && now.saturating_sub(self.at) <= heartbeat_window_ms(self.interval_ms)
    }
}

/// How long after its last announcement an agent with this heartbeat interval counts as gone.
pub fn heartbeat_window_ms(interval_ms: u64) -> u64 {
    interval_ms * WINDOW_INTERVALS
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn announcement(id: &str, at: u64) -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            agent_id: id.into(),
            pool: None,
            labels: [("env".to_string(), "prod".to_string())].into(),
            agent_version: "0.1.0".into(),
            services: vec!["script-v2".into()],
            running_scripts: 0,
            interval_ms: 1_000,
            at,
            leaving: false,
        }
    }

    #[test]
    fn announcements_round_trip_and_are_checked() {
        let a = announcement("web-01", 5_000);
        assert_eq!(Announcement::decode(&a.encode().unwrap()).unwrap(), a);
        let bad_id = Announcement { agent_id: "web 01".into(), ..a.clone() };
        assert!(matches!(Announcement::decode(&bad_id.encode().unwrap()), Err(CodecError::Invalid(_))));
        let bad_label = Announcement { labels: [("id".to_string(), "x".to_string())].into(), ..a.clone() };
        assert!(matches!(Announcement::decode(&bad_label.encode().unwrap()), Err(CodecError::Invalid(_))));
        let bad_interval = Announcement { interval_ms: 0, ..a.clone() };
        assert!(matches!(Announcement::decode(&bad_interval.encode().unwrap()), Err(CodecError::Invalid(_))));
        assert!(matches!(Announcement::decode(&[0xc1]), Err(CodecError::Malformed(_))));
        assert!(matches!(Announcement::decode(&vec![0; 20_000]), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn an_agent_is_live_within_its_window_only() {
        let a = announcement("web-01", 10_000);
        assert!(a.is_live(10_000) && a.is_live(13_000));
        assert!(!a.is_live(13_001), "three intervals without a heartbeat");
        assert!(a.is_live(6_000), "a clock a little behind");
        assert!(!a.is_live(4_000), "further in the future than the skew allowance");
        assert!(!Announcement { leaving: true, ..a }.is_live(10_000));
    }
}
