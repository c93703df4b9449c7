//! The agent's side of trust (ARCHITECTURE.md, Trust): its own key, which signs every answer and presence
//! announcement, the dispatcher keys it trusts, which every command must be signed by, and the
//! sessions dispatchers agreed with it, in which commands and answers carry a MAC instead
//! ([`contracts::trust::session`]). The keys and sessions, and the checks with them, are contracts'
//! [`AgentKeys`], which the agent's flow uses; this loads the keys from their files and reloads
//! the trusted ones (on SIGHUP).

use crate::config::{AgentConfig, Protocol};
use contracts::agent::keys::AgentKeys;
use contracts::receipt::{Receipt, SignedReceipt};
use contracts::trust::files::TrustedKeys;
use contracts::trust::seal::Seal;
use contracts::trust::session::Session;
use edge::keys::KeyError;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the agent keeps its key unless told otherwise.
pub(crate) const DEFAULT_KEY_FILE: &str = "agent.key";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "no trusted dispatcher keys: give --trusted-keys FILE (CUTTLE_TRUSTED_KEYS) holding the public key of each \
         dispatcher allowed to run scripts here (`dispatcher keygen --out FILE` prints it), or \
         --insecure-allow-unsigned to run commands from anyone who can publish to the broker"
    )]
    NoTrustedKeys,
    #[error(
        "trusted keys {path}: the file holds no key, so no command could ever run (or give --insecure-allow-unsigned)"
    )]
    EmptyTrustedKeys { path: PathBuf },
    #[error("agent key: {0}")]
    Key(KeyError),
    #[error("trusted keys: {0}")]
    Trusted(KeyError),
}

/// The agent's keys, and the file its trusted keys are reloaded from.
#[derive(Debug)]
pub struct AgentTrust {
    keys: AgentKeys,
    trusted_file: Option<PathBuf>,
}

impl AgentTrust {
    /// Loads (or, on first start, creates) the agent's key and loads its trusted keys. Refuses
    /// to go on with no trusted key unless unsigned commands are allowed.
    pub fn load(config: &AgentConfig) -> Result<AgentTrust, TrustError> {
        let trusted = match &config.trusted_keys_file {
            Some(path) => edge::keys::load_trusted(path).map_err(TrustError::Trusted)?,
            None if config.insecure_allow_unsigned => TrustedKeys::default(),
            None => return Err(TrustError::NoTrustedKeys),
        };
        if let (true, false, Some(path)) =
            (trusted.is_empty(), config.insecure_allow_unsigned, &config.trusted_keys_file)
        {
            return Err(TrustError::EmptyTrustedKeys { path: path.clone() });
        }
        let key = match config.protocol {
            Protocol::V1 => None,
            Protocol::V2 => {
                let path = config.key_file.clone().unwrap_or_else(|| config.work_dir.join(DEFAULT_KEY_FILE));
                let (key, created) = edge::keys::load_or_create_secret(&path).map_err(TrustError::Key)?;
                let pin = format!("{} {}", config.agent_id, key.public());
                if created {
                    tracing::info!(agent = %config.agent_id, path = %path.display(), key_id = %key.id(), "created the agent key; pin it on each dispatcher (known-agents file): {pin}");
                } else {
                    tracing::info!(agent = %config.agent_id, path = %path.display(), key_id = %key.id(), "agent key loaded; its known-agents line: {pin}");
                }
                Some(key)
            }
        };
        if config.insecure_allow_unsigned {
            tracing::warn!(agent = %config.agent_id, "--insecure-allow-unsigned: this agent runs UNSIGNED commands from anyone who can publish to the broker");
        }
        let ids: Vec<String> = trusted.ids().map(|id| id.to_string()).collect();
        tracing::info!(agent = %config.agent_id, trusted_keys = ?ids, "trusting commands signed by these dispatcher keys");
        // Sessions' secrets from the operating system's random source.
        let keys = AgentKeys::new(key, trusted, config.insecure_allow_unsigned, Box::new(edge::entropy::OsEntropy));
        Ok(AgentTrust { keys, trusted_file: config.trusted_keys_file.clone() })
    }

    /// Reads the trusted keys file again (SIGHUP): added keys are trusted and removed ones
    /// revoked from the next command on. A file that does not parse leaves the keys as they were.
    pub fn reload(&self) -> Result<usize, KeyError> {
        let Some(path) = &self.trusted_file else { return Ok(0) };
        let trusted = edge::keys::load_trusted(path)?;
        let count = trusted.len();
        self.keys.replace_trusted(trusted);
        Ok(count)
    }

    /// The keys and sessions the flow checks commands and seals answers with.
    pub fn keys(&self) -> &AgentKeys {
        &self.keys
    }

    /// Seals an answer to the request with correlation id `request_id`: MAC'd in `session`, the
    /// session the request came in, else signed; `None` for a legacy agent.
    pub fn seal_answer(&self, session: Option<&Session>, request_id: &str, body: &[u8]) -> Option<Seal> {
        self.keys.seal_answer(session, request_id, body)
    }

    /// Whether this agent has a key: it signs its answers (each naming the request it answers),
    /// and opens secrets sealed to it. A legacy agent has none.
    pub fn signs(&self) -> bool {
        self.keys.signs()
    }

    /// Seals a presence announcement; `None` for a legacy agent (which does not announce).
    pub fn seal_announcement(&self, body: &[u8]) -> Option<Seal> {
        self.keys.seal_announcement(body)
    }

    /// Signs a run's receipt; `None` for a legacy agent.
    pub fn sign_receipt(&self, receipt: &Receipt) -> Option<SignedReceipt> {
        self.keys.sign_receipt(receipt)
    }
}

/// Reloads the trusted keys on every SIGHUP, for as long as the agent runs.
pub(crate) async fn reload_on_sighup(trust: Arc<AgentTrust>, agent_id: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(agent = %agent_id, "cannot listen for SIGHUP; trusted keys reload only with a restart");
        return;
    };
    while hangups.recv().await.is_some() {
        match trust.reload() {
            Ok(keys) => tracing::info!(agent = %agent_id, keys, "SIGHUP: trusted keys reloaded"),
            Err(error) => {
                tracing::error!(agent = %agent_id, %error, "SIGHUP: trusted keys not reloaded; keeping the previous ones")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::trust::verify::{Origin, Refusal};

    fn config(dir: &std::path::Path) -> AgentConfig {
        let mut config = AgentConfig::new("web-01");
        config.work_dir = dir.to_owned();
        config
    }

    #[test]
    fn an_agent_without_trusted_keys_refuses_to_start_unless_told_to_be_insecure() {
        let dir = std::env::temp_dir().join(format!("cuttle-agent-trust-{}", uuid::Uuid::new_v4()));
        let mut config = config(&dir);
        assert!(matches!(AgentTrust::load(&config), Err(TrustError::NoTrustedKeys)));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nobody yet\n").unwrap();
        config.trusted_keys_file = Some(empty);
        assert!(matches!(AgentTrust::load(&config), Err(TrustError::EmptyTrustedKeys { .. })));
        config.insecure_allow_unsigned = true;
        let trust = AgentTrust::load(&config).unwrap();
        assert_eq!(trust.keys().check_seal(Ok(None), b"x", 0).map(|(origin, _)| origin), Ok(Origin::Unsigned));
        assert!(dir.join(DEFAULT_KEY_FILE).exists(), "the agent key is created in the work dir");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reloading_revokes_removed_keys_and_keeps_the_old_ones_on_a_bad_file() {
        let dir = std::env::temp_dir().join(format!("cuttle-agent-trust-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let dispatcher = edge::keys::create_secret(&dir.join("d.key")).unwrap();
        let file = dir.join("trusted");
        std::fs::write(&file, format!("{} ci\n", dispatcher.public())).unwrap();
        let mut config = config(&dir);
        config.trusted_keys_file = Some(file.clone());
        let trust = AgentTrust::load(&config).unwrap();
        let body = b"command";
        let seal = || Ok(Some(dispatcher.seal_command(body)));
        let origin = |seal| trust.keys().check_seal(seal, body, 0).map(|(origin, _)| origin);
        assert_eq!(origin(seal()), Ok(Origin::Key(dispatcher.id())));
        std::fs::write(&file, "not a key\n").unwrap();
        assert!(trust.reload().is_err());
        assert!(origin(seal()).is_ok(), "a bad file keeps the keys");
        std::fs::write(&file, "").unwrap();
        assert_eq!(trust.reload().unwrap(), 0);
        assert_eq!(origin(seal()), Err(Refusal::UntrustedKey(dispatcher.id())), "revoked");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
