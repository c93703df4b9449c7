//! The dispatcher's side of trust (ARCHITECTURE.md, Trust): its key, which signs every command, the
//! agents it knows, whose pinned keys every answer must be signed by, and the sessions agreed with
//! them, in which commands and answers carry a MAC instead ([`contracts::trust::session`]). The
//! decisions are [`contracts::trust::verify`]'s and [`contracts::trust::session`]'s plain
//! functions; this holds the keys and sessions and finds a target's pin, reading the known-agents
//! file again when a target is not in it (so an agent enrolled while `dispatcher serve` runs is
//! pinned without a restart).

use contracts::trust::files::{KnownAgents, Pin};
use contracts::trust::keys::{KeyId, PublicKey, SecretKey};
use contracts::trust::seal::Seal;
use contracts::trust::seal::SessionId;
use contracts::trust::session::{Offer, Session};
use contracts::trust::sessions::{Plan, SessionCache};
use edge::keys::KeyError;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The files under the user's configuration directory used when no flag or variable names one.
pub const DEFAULT_KEY_FILE: &str = "dispatcher.key";
pub const DEFAULT_KNOWN_AGENTS_FILE: &str = "known_agents";

/// `$XDG_CONFIG_HOME/cuttle`, else `$HOME/.config/cuttle`.
pub fn default_dir() -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    non_empty("XDG_CONFIG_HOME")
        .or_else(|| non_empty("HOME").map(|home| home.join(".config")))
        .map(|d| d.join("cuttle"))
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("dispatcher key: {0}")]
    Key(KeyError),
    #[error("known agents: {0}")]
    KnownAgents(KeyError),
    #[error("no configuration directory ($HOME unset): give --key and --known-agents")]
    NoConfigDir,
}

/// The dispatcher's key and the agents it believes.
#[derive(Debug)]
pub struct DispatcherTrust {
    key: SecretKey,
    known: RwLock<Arc<KnownAgents>>,
    /// Read again when a target is not pinned; `None` for pins given in memory.
    known_file: Option<PathBuf>,
    /// Legacy agents already warned about (once per agent and process).
    warned_legacy: Mutex<HashSet<String>>,
    /// Agents whose unbound answers were already warned about (once per agent and process).
    warned_unbound: Mutex<HashSet<String>>,
    /// `--strict-answers`: answers that do not name their request are not believed.
    strict_answers: bool,
    /// Workers of pools with no pin of their own, by agent id, as the presence stream vouched
    /// for them ([`crate::inventory::Inventory::pool_workers`]): believed under their pool's pin.
    pool_workers: RwLock<BTreeMap<String, String>>,
    sessions: Mutex<SessionCache>,
}

/// Where the dispatcher's key and known agents come from.
#[derive(Clone, Debug)]
pub struct TrustFiles {
    pub key: PathBuf,
    /// Create the key if the file does not exist (the default location only: a key named
    /// explicitly must exist).
    pub create_key: bool,
    pub known_agents: PathBuf,
}

impl TrustFiles {
    /// The files given (flags, environment), the defaults under the configuration dir otherwise.
    pub fn resolve(key: Option<PathBuf>, known_agents: Option<PathBuf>) -> Result<TrustFiles, TrustError> {
        let dir = || default_dir().ok_or(TrustError::NoConfigDir);
        let create_key = key.is_none();
        let key = match key {
            Some(key) => key,
            None => dir()?.join(DEFAULT_KEY_FILE),
        };
        let known_agents = match known_agents {
            Some(known) => known,
            None => dir()?.join(DEFAULT_KNOWN_AGENTS_FILE),
        };
        Ok(TrustFiles { key, create_key, known_agents })
    }
}

impl DispatcherTrust {
    /// Keys given in memory (tests, embedding).
    pub fn new(key: SecretKey, known: KnownAgents) -> DispatcherTrust {
        DispatcherTrust {
            key,
            known: RwLock::new(Arc::new(known)),
            known_file: None,
            warned_legacy: Mutex::default(),
            warned_unbound: Mutex::default(),
            strict_answers: false,
            pool_workers: RwLock::default(),
            sessions: Mutex::default(),
        }
    }

    /// The same, refusing answers that do not name the request they answer (`--strict-answers`).
    pub fn with_strict_answers(mut self, strict: bool) -> DispatcherTrust {
        self.strict_answers = strict;
        self
    }

    /// Whether answers that do not name their request are refused
    /// ([`contracts::trust::verify::check_binding`]).
    pub fn strict_answers(&self) -> bool {
        self.strict_answers
    }

    /// Loads the key (creating it at the default location on first use, with a notice on
    /// stderr) and the known agents (a missing file pins no one).
    pub fn load(files: &TrustFiles) -> Result<DispatcherTrust, TrustError> {
        let key = if files.create_key {
            let (key, created) = edge::keys::load_or_create_secret(&files.key).map_err(TrustError::Key)?;
            if created {
                eprintln!(
                    "dispatcher: created a dispatcher key at {}; agents run its commands once their --trusted-keys file holds its public key:\n{}",
                    files.key.display(),
                    key.public()
                );
            }
            key
        } else {
            edge::keys::load_secret(&files.key).map_err(TrustError::Key)?
        };
        let known = read_known(&files.known_agents).map_err(TrustError::KnownAgents)?;
        Ok(DispatcherTrust {
            key,
            known: RwLock::new(Arc::new(known)),
            known_file: Some(files.known_agents.clone()),
            warned_legacy: Mutex::default(),
            warned_unbound: Mutex::default(),
            strict_answers: false,
            pool_workers: RwLock::default(),
            sessions: Mutex::default(),
        })
    }

    /// Seals a command: MAC'd in `session`, else signed with the dispatcher's key.
    pub fn seal_command(&self, session: Option<&Session>, body: &[u8]) -> Seal {
        match session {
            Some(session) => session.seal_command(body),
            None => self.key.seal_command(body),
        }
    }

    /// Signs a schedule's record (`dispatcher schedule add`, `POST /v1/schedules`): the service
    /// runs its slots only while this signature over it verifies under the service's own key.
    pub fn seal_schedule(&self, record: &[u8]) -> Seal {
        self.key.seal_schedule(record)
    }

    /// The dispatcher's public key (what agents trust, and what schedules are checked against).
    pub fn public_key(&self) -> &PublicKey {
        self.key.public()
    }

    /// How to seal the next request to `target`, pinned `pin` ([`SessionCache::plan`]). Agents
    /// pinned as legacy are only ever signed.
    pub fn session_plan(&self, target: &str, pin: &Pin) -> Plan {
        let Some(pinned) = session_keys(pin) else { return Plan::Sign };
        self.sessions.lock().expect("sessions poisoned").plan(target, &pinned, now_ms())
    }

    /// The session agreed with `target`, for a message that gets no answer (and so offers none).
    pub fn session(&self, target: &str, pin: &Pin) -> Option<Session> {
        let pinned = session_keys(pin)?;
        self.sessions.lock().expect("sessions poisoned").established(target, &pinned, now_ms())
    }

    /// `target`'s believed answer (under `agent_key`) to `offer`, sent as request `request_id`:
    /// the session, if it carried a share. An answer without one is a refusal (`refused`: the
    /// next request offers again) or an agent that predates sessions.
    pub fn offer_answered(
        &self,
        target: &str,
        offer: &Offer,
        request_id: &str,
        share: Option<&[u8]>,
        agent_key: KeyId,
        refused: bool,
    ) {
        let completed = share.map(|share| offer.complete(request_id, share, self.key.id(), agent_key));
        if let Some(Ok(session)) = &completed {
            tracing::debug!(agent = %target, session = %session.id(), agent_key = %agent_key, "session agreed");
        }
        let mut sessions = self.sessions.lock().expect("sessions poisoned");
        if let Err(error) = sessions.offer_answered(target, completed, refused, now_ms()) {
            tracing::warn!(agent = %target, %error, "the agent's session share is not usable; signing its requests");
        }
    }

    /// An offer to `target` got no believed answer: the next request may offer again.
    pub fn offer_unanswered(&self, target: &str) {
        self.sessions.lock().expect("sessions poisoned").unanswered(target);
    }

    /// `target` no longer holds `session`.
    pub fn forget_session(&self, target: &str, session: SessionId) {
        tracing::debug!(agent = %target, %session, "the agent no longer holds the session; signing again");
        self.sessions.lock().expect("sessions poisoned").forget(target, session);
    }

    /// The pin of `target` (an agent id, or `pool:<name>`), reading the file again if it is
    /// not pinned yet. An agent id with no pin of its own that [`DispatcherTrust::know_pool_workers`]
    /// was told is a worker of pool P has `pool:P`'s ([`KnownAgents::pin_of_agent`]).
    pub fn pin(&self, target: &str) -> Option<Pin> {
        let pool = self.pool_workers.read().expect("pool workers poisoned").get(target).cloned();
        let pin_in = |known: &KnownAgents| known.pin_of_agent(target, pool.as_deref()).cloned();
        if let Some(pin) = pin_in(&self.known.read().expect("known agents poisoned")) {
            return Some(pin);
        }
        let path = self.known_file.as_ref()?;
        match read_known(path) {
            Ok(known) => {
                let pin = pin_in(&known);
                *self.known.write().expect("known agents poisoned") = Arc::new(known);
                pin
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the known agents again; keeping the ones read before");
                None
            }
        }
    }

    /// Every pin as it is now, for checking many agents at once (the presence stream): the
    /// known-agents file read again, so an agent enrolled since is believed; the pins read
    /// before if it cannot be read.
    pub fn known_agents(&self) -> Arc<KnownAgents> {
        if let Some(path) = &self.known_file {
            match read_known(path) {
                Ok(known) => *self.known.write().expect("known agents poisoned") = Arc::new(known),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the known agents again; keeping the ones read before")
                }
            }
        }
        self.known.read().expect("known agents poisoned").clone()
    }

    /// The known-agents file, for messages telling the user how to pin an agent.
    pub fn known_file(&self) -> Option<&Path> {
        self.known_file.as_deref()
    }

    /// Workers of pools (agent id, pool) whose announcements verified under their pool's pin
    /// and not under one of their own ([`crate::inventory::Inventory::pool_workers`]): their
    /// answers are believed under the pool's pin from now on.
    pub fn know_pool_workers<'a>(&self, workers: impl IntoIterator<Item = (&'a String, &'a String)>) {
        let mut known = self.pool_workers.write().expect("pool workers poisoned");
        known.extend(workers.into_iter().map(|(agent, pool)| (agent.clone(), pool.clone())));
    }

    /// The warning that `agent`, pinned as legacy, is believed unsigned: the first time this
    /// process believes it (an announcement or an answer), `None` after.
    pub fn legacy_warning(&self, agent: &str) -> Option<String> {
        self.warned_legacy.lock().expect("warned poisoned").insert(agent.to_owned()).then(|| legacy_warning(agent))
    }

    /// The warning that `agent`'s answers do not name the request they answer: the first time
    /// this process believes such an answer, `None` after.
    pub fn unbound_warning(&self, agent: &str) -> Option<String> {
        self.warned_unbound.lock().expect("warned poisoned").insert(agent.to_owned()).then(|| unbound_warning(agent))
    }
}

/// The keys a session may be agreed under: `None` for an agent pinned as legacy (it cannot sign).
fn session_keys(pin: &Pin) -> Option<Vec<KeyId>> {
    match pin {
        Pin::Keys(keys) => Some(keys.iter().map(|k| k.id()).collect()),
        Pin::Legacy => None,
    }
}

fn now_ms() -> u64 {
    contracts::time::unix_millis(std::time::SystemTime::now())
}

/// Why believing `agent`, pinned as legacy, is a risk (see [`DispatcherTrust::legacy_warning`]).
pub fn legacy_warning(agent: &str) -> String {
    format!("believing unsigned answers and announcements from agent {agent}: it is pinned as legacy (an agent that cannot sign); anyone who can publish to the broker can speak in its name")
}

/// Why believing `agent`'s answers that name no request is a risk (see
/// [`DispatcherTrust::unbound_warning`]).
pub fn unbound_warning(agent: &str) -> String {
    format!(
        "believing answers from agent {agent} that do not name the request they answer: it predates {} (upgrade it); until then anyone who can publish to its queue can make it answer a request of yours with its answer to another message (pass --strict-answers to refuse such answers)",
        contracts::wire::messages::SERVICE_ANSWER_BINDING
    )
}

/// Reads a known-agents file; a missing one pins no one.
pub fn read_known(path: &Path) -> Result<KnownAgents, KeyError> {
    match edge::keys::load_known_agents(path) {
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(KnownAgents::default()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_enrolled_after_start_is_pinned_without_a_restart() {
        let dir = std::env::temp_dir().join(format!("cuttle-dispatcher-trust-{}", uuid::Uuid::new_v4()));
        let files = TrustFiles { key: dir.join("d.key"), create_key: true, known_agents: dir.join("known") };
        let trust = DispatcherTrust::load(&files).expect("a missing known-agents file pins no one");
        assert!(files.key.exists(), "the default key is created on first use");
        assert_eq!(trust.pin("web-01"), None);
        let agent = edge::keys::create_secret(&dir.join("a.key")).unwrap();
        std::fs::write(&files.known_agents, format!("web-01 {}\nold legacy\n", agent.public())).unwrap();
        assert_eq!(trust.pin("web-01"), Some(Pin::Keys(vec![*agent.public()])));
        assert_eq!(trust.pin("old"), Some(Pin::Legacy));
        std::fs::write(&files.known_agents, format!("web-02 {}\n", agent.public())).unwrap();
        assert_eq!(trust.known_agents().pin("web-02"), Some(&Pin::Keys(vec![*agent.public()])), "read again");
        assert!(trust.legacy_warning("old").is_some_and(|w| w.contains("agent old")), "warned the first time");
        assert_eq!(trust.legacy_warning("old"), None, "and only then");
        let named = TrustFiles { key: dir.join("missing.key"), create_key: false, ..files };
        assert!(matches!(DispatcherTrust::load(&named), Err(TrustError::Key(_))), "a named key must exist");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pool_worker_vouched_for_by_the_inventory_is_believed_under_its_pools_pin_unless_pinned_itself() {
        let (own, pool) = (
            SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(),
            SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(),
        );
        let known = KnownAgents::parse(&format!("web-1 {}\npool:workers {}\n", own.public(), pool.public())).unwrap();
        let trust = DispatcherTrust::new(SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(), known);
        assert_eq!(trust.pin("w-1"), None, "not known as a worker yet");
        let (w1, web1, workers) = ("w-1".to_string(), "web-1".to_string(), "workers".to_string());
        trust.know_pool_workers([(&w1, &workers), (&web1, &workers)]);
        assert_eq!(trust.pin("w-1"), Some(Pin::Keys(vec![*pool.public()])), "the pool's pin");
        assert_eq!(trust.pin("web-1"), Some(Pin::Keys(vec![*own.public()])), "its own pin wins");
        assert_eq!(trust.pin("w-2"), None, "another agent is not a worker");
        assert_eq!(trust.pin("pool:workers"), Some(Pin::Keys(vec![*pool.public()])));
    }
}
