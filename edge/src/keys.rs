//! Key files, read and written the same way by both binaries: a secret key file (one line,
//! `contracts::trust::keys`' text form, readable by its owner only), the agent's trusted-keys file
//! and the dispatcher's known-agents file (their line formats parsed by `contracts::trust::files`).

use crate::entropy::OsEntropy;
use contracts::entropy::EntropyError;
use contracts::trust::files::{KnownAgents, LineError, TrustedKeys};
use contracts::trust::keys::{SecretKey, SECRET_KEY_PREFIX};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: not overwriting a key")]
    Exists { path: PathBuf },
    #[error("{path}: not a cuttle secret key (expected one line `{SECRET_KEY_PREFIX}<base64>`)")]
    NotAKey { path: PathBuf },
    /// The random source's error is kept, not offered as `source()`: the message tells it, and
    /// `worker-agent keygen` prints an error with its chain of sources.
    #[error("cannot get random bytes from the system: {0}")]
    Random(EntropyError),
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: LineError },
}

/// Reads a whole (small) text file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })
}

/// Reads a key file written by [`create_secret`].
pub fn load_secret(path: &Path) -> Result<SecretKey, KeyError> {
    let text = Zeroizing::new(read_file(path)?);
    SecretKey::from_text(&text).ok_or_else(|| KeyError::NotAKey { path: path.to_owned() })
}

/// Generates a key (from the system's random source) and writes it to `path`, readable by its owner
/// only (mode 0600). Never overwrites: an existing file is an error.
pub fn create_secret(path: &Path) -> Result<SecretKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::generate(&mut OsEntropy).map_err(KeyError::Random)?;
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyError::Exists { path: path.to_owned() })
        }
        opened => opened.map_err(io)?,
    };
    file.write_all(key.to_text().as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

/// The key at `path`, created there first if there is none. `true` when it was created.
pub fn load_or_create_secret(path: &Path) -> Result<(SecretKey, bool), KeyError> {
    match create_secret(path) {
        Ok(key) => Ok((key, true)),
        Err(KeyError::Exists { .. }) => Ok((load_secret(path)?, false)),
        Err(error) => Err(error),
    }
}

/// Reads an agent's trusted-keys file (`--trusted-keys`).
pub fn load_trusted(path: &Path) -> Result<TrustedKeys, KeyError> {
    TrustedKeys::parse(&read_file(path)?).map_err(|(line, reason)| KeyError::Line {
        path: path.to_owned(),
        line,
        reason,
    })
}

/// Reads a dispatcher's known-agents file (`--known-agents`).
pub fn load_known_agents(path: &Path) -> Result<KnownAgents, KeyError> {
    KnownAgents::parse(&read_file(path)?).map_err(|(line, reason)| KeyError::Line {
        path: path.to_owned(),
        line,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cuttle-trust-{}", uuid::Uuid::new_v4()));
        let path = dir.join("sub").join("agent.key");
        let (created, fresh) = load_or_create_secret(&path).unwrap();
        assert!(fresh);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (loaded, fresh) = load_or_create_secret(&path).unwrap();
        assert!(!fresh);
        assert_eq!(loaded.id(), created.id());
        assert!(matches!(create_secret(&path), Err(KeyError::Exists { .. })));
        assert_eq!(load_secret(&path).unwrap().id(), created.id(), "the file was left as it was");
        std::fs::write(dir.join("junk"), "hello").unwrap();
        assert!(matches!(load_secret(&dir.join("junk")), Err(KeyError::NotAKey { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
