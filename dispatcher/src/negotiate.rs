//! Capability negotiation: which script service to use with an agent. An agent that answers
//! the capabilities request `Unsupported` predates resilient communications: it gets script v1,
//! whose start is never repeated. Answers (that one included) are cached per agent for
//! [`CAPABILITIES_TTL`], so a long-running dispatcher asks each agent once in a while, not per
//! script.

use crate::route::Route;
use contracts::submission::negotiate::AgentKind;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How long an agent's capabilities are trusted.
pub(crate) const CAPABILITIES_TTL: Duration = Duration::from_secs(600);

/// Which protocol the dispatcher speaks: negotiated, or forced to the legacy one (the
/// dispatcher as it was before resilient communications).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolMode {
    #[default]
    Auto,
    V1,
}

struct Entry {
    kind: AgentKind,
    at: Instant,
    /// Whether the user was told that retries are off for this (legacy) agent.
    warned: bool,
}

/// Capabilities per agent, for [`CAPABILITIES_TTL`].
#[derive(Default)]
pub(crate) struct CapabilityCache {
    entries: Mutex<HashMap<Route, Entry>>,
}

impl CapabilityCache {
    pub(crate) fn get(&self, route: &Route) -> Option<AgentKind> {
        let entries = self.entries.lock().expect("cache poisoned");
        entries.get(route).filter(|e| e.at.elapsed() < CAPABILITIES_TTL).map(|e| e.kind.clone())
    }

    pub(crate) fn put(&self, route: &Route, kind: AgentKind) {
        let mut entries = self.entries.lock().expect("cache poisoned");
        let warned = entries.get(route).is_some_and(|e| e.warned && e.kind == kind);
        entries.insert(route.clone(), Entry { kind, at: Instant::now(), warned });
    }

    /// True the first time it is asked for an agent (while its entry lives): tell the user once.
    pub(crate) fn first_warning(&self, route: &Route) -> bool {
        let mut entries = self.entries.lock().expect("cache poisoned");
        match entries.get_mut(route) {
            Some(entry) if !entry.warned => {
                entry.warned = true;
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_are_cached_for_ten_minutes_the_legacy_one_included() {
        let cache = CapabilityCache::default();
        let route = Route::agent("old-01").unwrap();
        assert_eq!(cache.get(&route), None);
        cache.put(&route, AgentKind::Legacy);
        tokio::time::advance(CAPABILITIES_TTL - Duration::from_secs(1)).await;
        assert_eq!(cache.get(&route), Some(AgentKind::Legacy));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get(&route), None);
    }

    #[test]
    fn the_user_is_warned_once_per_agent() {
        let cache = CapabilityCache::default();
        let route = Route::agent("old-01").unwrap();
        cache.put(&route, AgentKind::Legacy);
        assert!(cache.first_warning(&route));
        assert!(!cache.first_warning(&route));
        cache.put(&route, AgentKind::Legacy);
        assert!(!cache.first_warning(&route), "a refreshed entry keeps the warning given");
    }
}
