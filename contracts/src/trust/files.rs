//! The line formats of the trust files: the agent's `--trusted-keys` ([`TrustedKeys`]) and the
//! dispatcher's `--known-agents` ([`KnownAgents`]), parsed from their text (read by
//! `edge::keys`).

use super::approval::{Approvers, Rule, RuleError};
use super::keys::{KeyId, PublicKey, PublicKeyError};
use crate::wire::approvals::check_name;
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
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    ApproverName(#[from] crate::wire::approvals::NameError),
    #[error("the name {0} is given to two keys")]
    NameTwice(String),
    #[error("key {0} is given two names")]
    KeyNamedTwice(KeyId),
    #[error("the rule names {0}, which no key line is named (`ed25519:<key> name={0}`)")]
    UnknownName(String),
}

/// A public key file line: the key and what follows it (a comment, or an agent name).
fn parse_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (index + 1, line.split_whitespace().collect()))
    })
}

/// The dispatcher keys an agent trusts (`--trusted-keys`): one `ed25519:<base64> [name=<name>]
/// [comment]` per line, `#` comments and blank lines ignored. Several keys allow rotation;
/// removing a line (and reloading, SIGHUP) revokes the key. A key may be named (a second word
/// `name=<name>`; any other second word begins a comment, as it always has), and `require <N> of
/// <name>... [for purpose=<P>] [on <selector>]` lines require approvals by named keys for the
/// commands they select (`crate::trust::approval`).
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
    approvers: Approvers,
}

impl TrustedKeys {
    pub fn parse(text: &str) -> Result<TrustedKeys, (usize, LineError)> {
        let mut keys = BTreeMap::new();
        let mut approvers = Approvers::default();
        let mut rules = Vec::new();
        for (line, words) in parse_lines(text) {
            let at = |reason: LineError| (line, reason);
            if words[0] == "require" {
                rules.push((line, Rule::parse(&words).map_err(|e| at(e.into()))?));
                continue;
            }
            let key = PublicKey::parse(words[0]).map_err(|reason| at(reason.into()))?;
            if let Some(name) = words.get(1).and_then(|w| w.strip_prefix("name=")) {
                check_name("key name", name).map_err(|e| at(e.into()))?;
                if approvers.named.values().any(|k| k.id() == key.id()) {
                    return Err(at(LineError::KeyNamedTwice(key.id())));
                }
                if approvers.named.insert(name.to_owned(), key).is_some() {
                    return Err(at(LineError::NameTwice(name.to_owned())));
                }
            }
            keys.insert(key.id(), key);
        }
        for (line, rule) in rules {
            if let Some(unknown) = rule.names.iter().find(|name| !approvers.named.contains_key(*name)) {
                return Err((line, LineError::UnknownName(unknown.clone())));
            }
            approvers.rules.push(rule);
        }
        Ok(TrustedKeys { keys, approvers })
    }

    pub fn of(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        TrustedKeys { keys: keys.into_iter().map(|k| (k.id(), k)).collect(), approvers: Approvers::default() }
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

    /// The named keys and the approval rules.
    pub fn approvers(&self) -> &Approvers {
        &self.approvers
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
        assert!(trusted.approvers().in_force(anyone()).is_empty(), "comments name nothing");
    }

    fn anyone() -> crate::wire::labels::Selectable<'static> {
        static NONE: crate::wire::labels::Labels = crate::wire::labels::Labels::new();
        crate::wire::labels::Selectable { id: "web-01", pool: None, labels: &NONE }
    }

    #[test]
    fn trusted_keys_files_name_keys_and_require_approvals_by_them() {
        let (a, b, c) = (key(1), key(2), key(3));
        let text = format!(
            "require 2 of release-manager oncall for purpose=deployment\n{} name=release-manager laptop\n{} name=oncall\n{} ci\n",
            a.public(),
            b.public(),
            c.public()
        );
        let trusted = TrustedKeys::parse(&text).unwrap();
        assert_eq!(trusted.len(), 3, "named keys are trusted keys");
        let rules = trusted.approvers().in_force(anyone());
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].rule, "require 2 of release-manager oncall for purpose=deployment");
        assert_eq!(rules[0].approvers[1].key, b.public().to_string());
        let refused = |text: String| TrustedKeys::parse(&text).unwrap_err();
        let (line, why) = refused(format!("{} name=ops\nrequire 1 of ops security\n", a.public()));
        assert_eq!((line, why.to_string().contains("security")), (2, true), "{why}");
        let (line, why) = refused(format!("{} name=ops\n{} name=ops\n", a.public(), b.public()));
        assert_eq!((line, why.to_string()), (2, "the name ops is given to two keys".into()));
        assert!(matches!(
            refused(format!("{} name=a\n{} name=b\n", a.public(), a.public())).1,
            LineError::KeyNamedTwice(_)
        ));
        assert!(matches!(refused(format!("{} name=a/b\n", a.public())).1, LineError::ApproverName(_)));
        assert!(matches!(refused(format!("{} name=a\nrequire 2 of a\n", a.public())).1, LineError::Rule(_)));
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
