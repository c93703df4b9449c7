//! The line formats of the trust files: the agent's `--trusted-keys` ([`TrustedKeys`]) and the
//! dispatcher's `--known-agents` ([`KnownAgents`]), parsed from their text (read by
//! `edge::keys`).

use super::keys::{KeyId, PublicKey, PublicKeyError};
use crate::wire::topology::{validate_name, NameError};
use std::collections::BTreeMap;

/// Why a line of a trust file cannot be read (the parsers answer it with the line's number).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error(transparent)]
    Key(#[from] PublicKeyError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("expected `<agent-id> ed25519:<key>`, `pool:<name> ed25519:<key>` or `<agent-id> legacy`")]
    Shape,
    #[error("{0} is pinned both to keys and as legacy")]
    KeysAndLegacy(String),
    #[error("a pool cannot be legacy: script v1 agents do not serve pools")]
    LegacyPool,
}

/// A public key file line: the key and what follows it (a comment, or an agent name).
fn parse_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (index + 1, line.split_whitespace().collect()))
    })
}

/// The dispatcher keys an agent trusts (`--trusted-keys`): one `ed25519:<base64> [comment]` per
/// line, `#` comments and blank lines ignored. Several keys allow rotation; removing a line (and
/// reloading, SIGHUP) revokes the key.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    pub fn parse(text: &str) -> Result<TrustedKeys, (usize, LineError)> {
        let mut keys = BTreeMap::new();
        for (line, words) in parse_lines(text) {
            let key = PublicKey::parse(words[0]).map_err(|reason| (line, reason.into()))?;
            keys.insert(key.id(), key);
        }
        Ok(TrustedKeys { keys })
    }

    pub fn of(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        TrustedKeys { keys: keys.into_iter().map(|k| (k.id(), k)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    pub(crate) fn get(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.get(&id)
    }
}

/// What the dispatcher believes of one agent or pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Answers count only if signed by one of these keys.
    Keys(Vec<PublicKey>),
    /// An old agent that cannot sign: its answers are taken unsigned (with a warning).
    Legacy,
}

/// The agents a dispatcher knows (`--known-agents`): `<agent-id> ed25519:<base64> [comment]`,
/// `pool:<name> ed25519:<base64> [comment]` (several lines for one agent or pool: any of their
/// keys counts), or `<agent-id> legacy`. `#` comments and blank lines ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownAgents {
    /// By agent id, or `pool:<name>`.
    pins: BTreeMap<String, Pin>,
}

impl KnownAgents {
    pub fn parse(text: &str) -> Result<KnownAgents, (usize, LineError)> {
        let mut pins: BTreeMap<String, Pin> = BTreeMap::new();
        for (line, words) in parse_lines(text) {
            let [name, what, ..] = words[..] else {
                return Err((line, LineError::Shape));
            };
            let (kind, bare) = match name.strip_prefix("pool:") {
                Some(pool) => ("pool name", pool),
                None => ("agent id", name),
            };
            validate_name(kind, bare).map_err(|reason| (line, reason.into()))?;
            let conflict = || (line, LineError::KeysAndLegacy(name.to_owned()));
            match (what, pins.get_mut(name)) {
                ("legacy", _) if kind == "pool name" => return Err((line, LineError::LegacyPool)),
                ("legacy", None) => {
                    pins.insert(name.to_owned(), Pin::Legacy);
                }
                ("legacy", Some(Pin::Legacy)) => {}
                ("legacy", Some(Pin::Keys(_))) | (_, Some(Pin::Legacy)) => return Err(conflict()),
                (key, existing) => {
                    let key = PublicKey::parse(key).map_err(|reason| (line, reason.into()))?;
                    match existing {
                        Some(Pin::Keys(keys)) => keys.push(key),
                        _ => {
                            pins.insert(name.to_owned(), Pin::Keys(vec![key]));
                        }
                    }
                }
            }
        }
        Ok(KnownAgents { pins })
    }

    /// The pin of a target as written in an envelope: an agent id, or `pool:<name>`.
    pub fn pin(&self, target: &str) -> Option<&Pin> {
        self.pins.get(target)
    }

    /// The pin an agent's own word (its presence announcements) is checked against: the agent
    /// id's, or, for an agent with none, the pin of the pool it says it is in. An agent pinned by
    /// id is never believed under a pool key.
    pub fn pin_of_agent(&self, agent_id: &str, pool: Option<&str>) -> Option<&Pin> {
        self.pin(agent_id).or_else(|| self.pin(&format!("pool:{}", pool?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::keys::tests::key;

    #[test]
    fn trusted_keys_files_parse_with_comments_and_report_bad_lines() {
        let (a, b) = (key(1), key(2));
        let text = format!("# dispatchers\n{} ci\n\n  {} old laptop\n", a.public(), b.public());
        let trusted = TrustedKeys::parse(&text).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.get(a.id()).is_some() && trusted.get(b.id()).is_some());
        assert_eq!(TrustedKeys::parse("# x\nnot-a-key\n").unwrap_err().0, 2);
    }

    #[test]
    fn known_agents_files_parse_agents_pools_and_legacy() {
        let (a, b, c) = (key(1), key(2), key(3));
        let text = format!(
            "web-01 {} rotated in 2026\nweb-01 {}\npool:workers {}\npool:workers {}\nold-box legacy\n",
            a.public(),
            b.public(),
            b.public(),
            c.public()
        );
        let known = KnownAgents::parse(&text).unwrap();
        assert_eq!(known.pin("web-01"), Some(&Pin::Keys(vec![*a.public(), *b.public()])));
        assert_eq!(known.pin("pool:workers"), Some(&Pin::Keys(vec![*b.public(), *c.public()])));
        assert_eq!(known.pin("old-box"), Some(&Pin::Legacy));
        assert_eq!(known.pin("workers"), None, "a pool's pin is not an agent's");
        assert_eq!(known.pin("web-02"), None);
        for bad in ["web-01", "web 01 legacy", &format!("x legacy\nx {}", a.public()), "pool:p legacy", "a:b legacy"] {
            assert!(KnownAgents::parse(bad).is_err(), "{bad:?} is refused");
        }
    }
}
