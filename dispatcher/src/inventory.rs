//! The live fleet, from the agents' announcements on the presence stream (see
//! [`contracts::wire::presence`]): who is alive, in which pool, with which labels and version.
//!
//! [`Inventory`] is the plain part: [`Inventory::settle`] believes, for each agent, its newest
//! announcement signed by the key pinned for it (ARCHITECTURE.md, Trust, as answers are), and keeps why the
//! others were ignored; then liveness and selection. It is fed by [`read`], which reads the
//! stream from one lookback back until it has caught up with the present (a marker it appends
//! itself comes back), dropping each announcement too large to be one as it reads it
//! ([`Sighting::read`]).
//!
//! The broker is not an authority: anyone who can publish can append to the stream. An
//! announcement counts only if it verifies under the key pinned for its agent id (or, for an
//! agent not pinned by id, for the pool it names, `pool:<name>`), or its agent is pinned
//! `legacy`, whose word is taken unsigned as its answers are. So a forged agent never enters
//! `dispatcher agents` nor a `submit --select`. The signature covers the whole body, `at`
//! included, so a genuine announcement replayed later still says when it was made, and drops out
//! once that is older than its heartbeat window: replaying cannot keep a dead agent alive.
//!
//! Verifying costs a signature check, so it is done newest first, per agent, and stops at the
//! first one believed: about one check per agent however many heartbeats the lookback holds.

use crate::rpc::{self, RpcConfig};
use contracts::trust::files::KnownAgents;
use contracts::trust::seal::{Seal, SealHeaderError};
use contracts::trust::verify::{check_announcement, Believed, Forged};
use contracts::wire::labels::{Selectable, Selector};
use contracts::wire::presence::{Announcement, LOOKBACK_MS};
use contracts::wire::topology::{ANNOUNCEMENT_TYPE, PRESENCE_STREAM};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

/// Longest time reading the stream may take before giving up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot reach the broker: {0}")]
    Connect(#[source] crate::error::RpcError),
    #[error("broker call {call} failed: {source}")]
    Broker { call: &'static str, source: lapin::Error },
    #[error("the presence stream did not catch up within {}", contracts::time::short(*.0))]
    Timeout(Duration),
}

/// An announcement as read from the stream: its body and the seal its headers carry.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub body: Vec<u8>,
    pub seal: Result<Option<Seal>, SealHeaderError>,
}

impl Sighting {
    /// What a reader keeps of an announcement it reads: a sighting, or, for a body over
    /// [`contracts::wire::presence::MAX_ANNOUNCEMENT_BYTES`], only why it was dropped: anyone may append
    /// to the stream, and junk kept until it is decoded cost its size for each one read.
    pub fn read(body: Vec<u8>, seal: Result<Option<Seal>, SealHeaderError>) -> Result<Sighting, Ignored> {
        match Announcement::check_size(body.len()) {
            Ok(()) => Ok(Sighting { body, seal }),
            Err(error) => Err(Ignored::Invalid(error.to_string())),
        }
    }
}

/// What the stream held: the announcements kept, and those dropped as they were read.
#[derive(Debug, Default)]
pub struct Sightings {
    pub kept: Vec<Sighting>,
    pub dropped: Vec<Ignored>,
}

impl Sightings {
    /// Takes one announcement read ([`Sighting::read`]).
    pub fn push(&mut self, body: Vec<u8>, seal: Result<Option<Seal>, SealHeaderError>) {
        match Sighting::read(body, seal) {
            Ok(sighting) => self.kept.push(sighting),
            Err(ignored) => self.dropped.push(ignored),
        }
    }
}

/// Why an announcement was not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// It did not decode or failed its checks.
    Invalid(String),
    /// No key is pinned for its agent id, nor for the pool it names.
    Unpinned { agent: String },
    /// It is not signed by the key pinned for its agent.
    Forged { agent: String, reason: Forged },
}

/// The newest believed announcement of every agent seen.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    newest: BTreeMap<String, Announcement>,
    ignored: Vec<Ignored>,
    /// Agents pinned `legacy` whose announcements were believed unsigned.
    legacy: BTreeSet<String>,
    /// Agents with no pin of their own believed under their pool's (`pool:<name>`), with that pool.
    pool_workers: BTreeMap<String, String>,
}

impl Inventory {
    /// Believes what `known` allows of the announcements read: for each agent, the newest one
    /// (by its `at`) that [`check_announcement`] accepts under its pin; each newer one that fails
    /// is noted as ignored, and older ones are not looked at.
    pub fn settle(sightings: Vec<Sighting>, known: &KnownAgents) -> Inventory {
        let mut inventory = Inventory::default();
        let mut by_agent: BTreeMap<String, Vec<(Announcement, Sighting)>> = BTreeMap::new();
        for sighting in sightings {
            match Announcement::decode(&sighting.body) {
                Ok(announcement) => {
                    by_agent.entry(announcement.agent_id.clone()).or_default().push((announcement, sighting))
                }
                Err(error) => inventory.ignored.push(Ignored::Invalid(error.to_string())),
            }
        }
        for (agent, mut candidates) in by_agent {
            candidates.sort_by_key(|(announcement, _)| std::cmp::Reverse(announcement.at));
            for (announcement, sighting) in candidates {
                let Some(pin) = known.pin_of_agent(&agent, announcement.pool.as_deref()) else {
                    inventory.ignored.push(Ignored::Unpinned { agent: agent.clone() });
                    continue;
                };
                match check_announcement(pin, sighting.seal, &sighting.body) {
                    Ok(believed) => {
                        if believed == Believed::Legacy {
                            inventory.legacy.insert(agent.clone());
                        }
                        if let (None, Some(pool)) = (known.pin(&agent), &announcement.pool) {
                            inventory.pool_workers.insert(agent.clone(), pool.clone());
                        }
                        inventory.newest.insert(agent.clone(), announcement);
                        break;
                    }
                    Err(reason) => inventory.ignored.push(Ignored::Forged { agent: agent.clone(), reason }),
                }
            }
        }
        inventory
    }

    pub fn ignored(&self) -> &[Ignored] {
        &self.ignored
    }

    /// Whether an announcement of `agent` was believed (it is listed while that one is live),
    /// whatever was ignored in its name.
    pub fn believes(&self, agent: &str) -> bool {
        self.newest.contains_key(agent)
    }

    /// Agents pinned `legacy` believed without a signature.
    pub fn legacy(&self) -> &BTreeSet<String> {
        &self.legacy
    }

    /// The agents with no pin of their own whose announcement verified under their pool's pin,
    /// with that pool: their answers are to be believed under it too.
    pub fn pool_workers(&self) -> &BTreeMap<String, String> {
        &self.pool_workers
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

    /// The live agents `selector` matches at `now` (`--select`), to run on: `trust` then
    /// believes the workers of pools among them that have no pin of their own under their pool's
    /// pin, as it believed their announcements.
    pub fn select_to_run(
        &self,
        selector: &Selector,
        now: u64,
        trust: &crate::trust::DispatcherTrust,
    ) -> Vec<&Announcement> {
        let matching = self.select(Some(selector), now);
        trust.know_pool_workers(
            self.pool_workers().iter().filter(|(agent, _)| matching.iter().any(|a| a.agent_id == **agent)),
        );
        matching
    }
}

/// Reads the presence stream from [`LOOKBACK_MS`] ago up to now, and believes what `known`
/// allows of it ([`Inventory::settle`]).
pub async fn read(config: &RpcConfig, known: &KnownAgents) -> Result<Inventory, InventoryError> {
    let connection = rpc::connect(config, "cuttle-dispatcher inventory").await.map_err(InventoryError::Connect)?;
    let result = tokio::time::timeout(READ_TIMEOUT, read_on(&connection)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "inventory read".into())).await;
    let sightings = result.map_err(|_| InventoryError::Timeout(READ_TIMEOUT))??;
    let mut inventory = Inventory::settle(sightings.kept, known);
    inventory.ignored.extend(sightings.dropped);
    Ok(inventory)
}

/// The announcements on the stream from [`LOOKBACK_MS`] ago up to now. Before the first agent
/// ever started there is no stream, and no one is alive.
async fn read_on(connection: &lapin::Connection) -> Result<Sightings, InventoryError> {
    let from = SystemTime::now() - Duration::from_millis(LOOKBACK_MS);
    let mut sightings = Sightings::default();
    crate::stream::read(connection, PRESENCE_STREAM, ANNOUNCEMENT_TYPE, from, |body, seal| sightings.push(body, seal))
        .await
        .map_err(|error| InventoryError::Broker { call: error.call, source: error.source })?;
    Ok(sightings)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use contracts::trust::keys::SecretKey;
    use contracts::wire::presence::ANNOUNCEMENT_VERSION;

    pub(crate) fn announcement(id: &str, at: u64, labels: &[(&str, &str)]) -> Announcement {
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

    /// `announcement` as read from the stream, signed with `key` (unsigned without one).
    pub(crate) fn sighting(key: Option<&SecretKey>, announcement: &Announcement) -> Sighting {
        let body = announcement.encode().unwrap();
        Sighting { seal: Ok(key.map(|key| key.seal_announcement(&body))), body }
    }

    /// An agent key, and known agents pinning `ids` to it.
    pub(crate) fn pinned(ids: &[&str]) -> (SecretKey, KnownAgents) {
        let key = SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap();
        let lines: String = ids.iter().map(|id| format!("{id} {}\n", key.public())).collect();
        (key, KnownAgents::parse(&lines).unwrap())
    }

    fn live_ids(inventory: &Inventory, now: u64) -> Vec<&str> {
        inventory.live(now).map(|a| a.agent_id.as_str()).collect()
    }

    #[test]
    fn the_newest_announcement_of_each_agent_counts() {
        let (key, known) = pinned(&["a", "b"]);
        let sightings = [
            announcement("a", 10_000, &[("env", "prod")]),
            announcement("a", 9_000, &[("env", "old")]),
            announcement("b", 5_000, &[("env", "prod")]),
        ];
        let inventory = Inventory::settle(sightings.iter().map(|a| sighting(Some(&key), a)).collect(), &known);
        assert_eq!(live_ids(&inventory, 10_500), ["a"], "b's window has passed");
        assert_eq!(inventory.live(10_500).next().unwrap().labels["env"], "prod", "the older one did not win");
        assert!(inventory.ignored().is_empty());
        let leaving = Announcement { leaving: true, ..announcement("a", 11_000, &[]) };
        let sightings = [sighting(Some(&key), &announcement("a", 10_000, &[])), sighting(Some(&key), &leaving)];
        let inventory = Inventory::settle(sightings.to_vec(), &known);
        assert_eq!(inventory.live(11_000).count(), 0, "a leaving agent drops out at once");
    }

    #[test]
    fn selection_keeps_the_live_matching_agents() {
        let (key, known) = pinned(&["web-1", "web-2", "db-1"]);
        let sightings = [
            announcement("web-1", 10_000, &[("env", "prod"), ("role", "web")]),
            announcement("web-2", 10_000, &[("env", "staging"), ("role", "web")]),
            announcement("db-1", 10_000, &[("env", "prod"), ("role", "db")]),
        ];
        let inventory = Inventory::settle(sightings.iter().map(|a| sighting(Some(&key), a)).collect(), &known);
        let ids = |selector: &str| -> Vec<String> {
            let selector = Selector::parse(selector).unwrap();
            inventory.select(Some(&selector), 10_000).into_iter().map(|a| a.agent_id.clone()).collect()
        };
        assert_eq!(ids("env=prod"), ["db-1", "web-1"]);
        assert_eq!(ids("role=web,env!=prod"), ["web-2"]);
        assert!(ids("role=cache").is_empty());
        assert_eq!(inventory.select(None, 10_000).len(), 3);
    }

    /// Today the reader keeps every body it reads until it decodes them: ten junk bodies of
    /// 1 MiB cost `dispatcher agents` 8 MB.
    #[test]
    fn announcements_over_the_size_limit_are_dropped_as_they_are_read() {
        let (key, known) = pinned(&["a"]);
        let genuine = sighting(Some(&key), &announcement("a", 10_000, &[]));
        let mut sightings = Sightings::default();
        for _ in 0..10 {
            sightings.push(vec![0x90; 1 << 20], Ok(None));
        }
        sightings.push(vec![0x90; contracts::wire::presence::MAX_ANNOUNCEMENT_BYTES + 1], Ok(None));
        sightings.push(genuine.body.clone(), genuine.seal.clone());
        assert_eq!(sightings.kept.len(), 1, "only the genuine one is kept");
        assert_eq!(sightings.kept[0].body, genuine.body);
        assert_eq!(sightings.dropped.len(), 11);
        assert!(
            matches!(&sightings.dropped[0], Ignored::Invalid(why) if why.contains("over the limit of 16384 bytes")),
            "{:?}",
            sightings.dropped[0]
        );
        let inventory = Inventory::settle(sightings.kept, &known);
        assert_eq!(live_ids(&inventory, 10_500), ["a"]);
    }

    #[test]
    fn undecodable_announcements_are_noted_and_ignored() {
        let inventory =
            Inventory::settle(vec![Sighting { body: b"\xc1".to_vec(), seal: Ok(None) }], &KnownAgents::default());
        assert_eq!(inventory.live(0).count(), 0);
        assert!(matches!(inventory.ignored(), [Ignored::Invalid(_)]));
    }

    #[test]
    fn only_announcements_signed_by_the_pinned_key_count() {
        let (key, mut known_text) = (SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(), String::new());
        let (pool_key, impostor) = (
            SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(),
            SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(),
        );
        known_text.push_str(&format!("web-1 {}\nold-1 legacy\npool:workers {}\n", key.public(), pool_key.public()));
        let known = KnownAgents::parse(&known_text).unwrap();
        let genuine = announcement("web-1", 10_000, &[("env", "prod")]);
        let retagged =
            Announcement { labels: [("env".to_string(), "canary".to_string())].into(), at: 10_500, ..genuine.clone() };
        // The genuine body with other labels and a newer time, under the genuine seal.
        let mut tampered = sighting(Some(&key), &genuine);
        tampered.body = retagged.encode().unwrap();
        let worker = Announcement { pool: Some("workers".into()), ..announcement("w-1", 10_000, &[]) };
        let sightings = vec![
            sighting(Some(&key), &genuine),
            tampered,
            sighting(Some(&impostor), &Announcement { at: 10_600, ..retagged.clone() }),
            sighting(Some(&key), &Announcement { at: 10_700, ..announcement("evil-1", 10_000, &[]) }),
            sighting(None, &Announcement { at: 10_800, leaving: true, ..genuine.clone() }),
            sighting(Some(&pool_key), &worker),
            sighting(None, &announcement("old-1", 10_000, &[])),
        ];
        let inventory = Inventory::settle(sightings, &known);
        assert_eq!(live_ids(&inventory, 11_000), ["old-1", "w-1", "web-1"]);
        let web = inventory.live(11_000).find(|a| a.agent_id == "web-1").unwrap();
        assert_eq!(web.labels["env"], "prod", "the genuine labels, not the tampered ones");
        assert_eq!(web.at, 10_000, "a forged leaving announcement does not remove it");
        let forged = |reason: Forged| Ignored::Forged { agent: "web-1".into(), reason };
        assert_eq!(
            inventory.ignored(),
            [
                Ignored::Unpinned { agent: "evil-1".into() },
                forged(Forged::Unsigned),
                forged(Forged::UnpinnedKey(impostor.id())),
                forged(Forged::BadSignature(key.id())),
            ],
            "newest first, by agent"
        );
        assert_eq!(inventory.legacy().iter().collect::<Vec<_>>(), ["old-1"], "believed unsigned, as its answers");
        let workers: Vec<_> = inventory.pool_workers().iter().collect();
        assert_eq!(workers, [(&"w-1".to_string(), &"workers".to_string())], "believed under the pool's key");
        let pretender = Announcement { pool: Some("workers".into()), ..announcement("web-1", 12_000, &[]) };
        let claims = Announcement { pool: Some("workers".into()), ..announcement("w-2", 12_000, &[]) };
        let sightings = vec![sighting(Some(&pool_key), &pretender), sighting(Some(&impostor), &claims)];
        let inventory = Inventory::settle(sightings, &known);
        assert_eq!(inventory.live(12_000).count(), 0, "a pool key never speaks for an agent pinned by id");
        assert!(inventory.pool_workers().is_empty(), "no worker of a pool without its key: {inventory:?}");
    }

    #[test]
    fn a_replayed_announcement_keeps_no_dead_agent_alive() {
        let (key, known) = pinned(&["web-1"]);
        let last = sighting(Some(&key), &announcement("web-1", 10_000, &[]));
        // The agent died after this announcement; someone appends copies of it to the stream.
        let replayed = vec![last.clone(), last.clone(), last];
        let inventory = Inventory::settle(replayed, &known);
        assert_eq!(live_ids(&inventory, 12_000), ["web-1"], "within its window");
        assert_eq!(inventory.live(13_001).count(), 0, "past its window however often it is replayed");
        assert!(inventory.ignored().is_empty(), "a copy verifies: it is its age that drops it");
    }
}
