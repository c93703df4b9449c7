//! Approvals as they travel: one key's [`Approval`] of a command, carried in the start beside the
//! command it approves, and the rules an agent enforces ([`RequiredApprovals`]), as its
//! capabilities reply reports them. What an approval signs and how the rules are checked are
//! `crate::trust::approval`'s; this is the data, and the checks of its shape.

use serde::{Deserialize, Serialize};

/// The most approvals one start carries; a start with more is refused.
pub const MAX_APPROVALS: usize = 16;
/// Longest purpose or approver name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest submitter name.
pub const MAX_SUBMITTER_LEN: usize = 128;

/// One key's approval of one command: its signature over the command's digest and the
/// approval's own expiry, independent of the start's window. `Debug` shows the key and expiry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Hex SHA-256 of what is approved: the command's digest (`crate::trust::approval`).
    pub digest: String,
    /// The approving key's id, in hex (`crate::trust::keys::KeyId`).
    pub key: String,
    /// Unix ms past which the approval counts no more.
    pub expires_at: u64,
    /// Ed25519 signature of the key over the approval's context, digest and expiry.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for Approval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Approval(by {} of {} until {})", self.key, self.digest, self.expires_at)
    }
}

/// A rule an agent enforces: a command it selects runs only with `need` approvals by distinct
/// keys among `approvers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredApprovals {
    pub need: u32,
    pub approvers: Vec<Approver>,
    /// The purpose of the commands it selects; `None`: every command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The rule as its file writes it, for messages.
    pub rule: String,
}

/// A key a rule names: its name in the trusted-keys file and the key, `ed25519:<base64>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub name: String,
    pub key: String,
}

/// Why a purpose, a submitter or an approver's name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {value:?} must be 1 to {MAX_NAME_LEN} characters of [A-Za-z0-9._-]")]
    Name { what: &'static str, value: String },
    #[error("submitter {0:?} must be 1 to {MAX_SUBMITTER_LEN} printable characters")]
    Submitter(String),
}

/// A purpose (`deployment`, `runbook`) or an approver's name: 1 to 63 of `[A-Za-z0-9._-]`.
pub fn check_name(what: &'static str, value: &str) -> Result<(), NameError> {
    let good = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if good {
        Ok(())
    } else {
        Err(NameError::Name { what, value: value.to_owned() })
    }
}

/// A submitter's name: shown in receipts, journals and the web view, so printable, on one line.
pub fn check_submitter(value: &str) -> Result<(), NameError> {
    let good = !value.trim().is_empty() && value.len() <= MAX_SUBMITTER_LEN && !value.chars().any(char::is_control);
    if good {
        Ok(())
    } else {
        Err(NameError::Submitter(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_submitters_are_plain_names_on_one_line() {
        assert!(check_name("purpose", "deployment").is_ok());
        assert!(check_name("purpose", "health-check.v2").is_ok());
        for bad in ["", "deploy ment", "a/b", "é", &"x".repeat(64)] {
            assert!(check_name("purpose", bad).is_err(), "{bad:?}");
        }
        assert!(check_submitter("Ada Lovelace <ada@example.com>").is_ok());
        for bad in ["", "  ", "ada\nroot", "ada\u{1b}[2J", &"x".repeat(129)] {
            assert!(check_submitter(bad).is_err(), "{bad:?}");
        }
    }
}
