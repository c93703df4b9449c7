//! Which user a script runs as. A command may name one (`submit --run-as`, signed with the rest of
//! the script); the agent allows only the users its operator listed (`--allow-run-as`) and may
//! name one for commands that name none (`--default-run-as`). The decision is made before the
//! claim, so a refused start leaves nothing behind: nothing runs, nothing is stored.
//!
//! Root is a user like any other here: a script runs as root only when root is listed, even on
//! an agent that runs as root itself. An agent that does not run as root cannot change user at
//! all, so it runs scripts only as itself.

use crate::wire::messages::{check_user_name, BadUserName};
use std::collections::BTreeSet;

/// The user a script runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// The agent's own user: no change of user.
    Itself,
    /// Another user, by name.
    User(String),
}

/// Why a start is refused for the user it would run as.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunAsRefusal {
    #[error("this agent may not act as {user} (it allows {allowed}; see --allow-run-as)")]
    NotAllowed { user: String, allowed: String },
    #[error("this agent runs as {own}, not as root, so it runs scripts only as itself, not as {user}")]
    Unprivileged { user: String, own: String },
}

/// What is wrong with an agent's run-as settings, found at start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunAsConfigError {
    #[error("--default-run-as {0} is not among the users --allow-run-as lists")]
    DefaultNotAllowed(String),
    #[error(transparent)]
    BadName(#[from] BadUserName),
}

/// The users an agent may run scripts as and the one it runs commands that name none as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunAsPolicy {
    allowed: BTreeSet<String>,
    default: Option<String>,
    /// The agent's own user name.
    own: String,
    /// Whether the agent can change user (it runs as root).
    privileged: bool,
}

impl RunAsPolicy {
    /// The policy of an agent running as `own` (`privileged` when that is root), allowing
    /// `allowed` and running commands that name no user as `default`.
    pub fn new(
        allowed: impl IntoIterator<Item = String>,
        default: Option<String>,
        own: String,
        privileged: bool,
    ) -> Result<Self, RunAsConfigError> {
        let allowed: BTreeSet<String> = allowed.into_iter().collect();
        for name in allowed.iter().chain(default.iter()) {
            check_user_name(name)?;
        }
        if let Some(default) = &default {
            let itself = !privileged && *default == own;
            if !itself && !allowed.contains(default) {
                return Err(RunAsConfigError::DefaultNotAllowed(default.clone()));
            }
        }
        Ok(RunAsPolicy { allowed, default, own, privileged })
    }

    /// The users listed that this agent cannot run as, since it does not run as root: it says so
    /// at start.
    pub fn out_of_reach(&self) -> Vec<&str> {
        if self.privileged {
            return Vec::new();
        }
        self.allowed.iter().filter(|user| **user != self.own).map(String::as_str).collect()
    }

    /// Whether scripts may run as a user other than the agent's own: their workspaces must then
    /// be reachable by that user.
    pub fn changes_user(&self) -> bool {
        self.privileged && self.allowed.iter().any(|user| *user != self.own)
    }

    /// The users listed, for the capabilities reply and the start log.
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(String::as_str)
    }

    /// Who runs a script whose command names `requested` (or none).
    pub fn resolve(&self, requested: Option<&str>) -> Result<RunAs, RunAsRefusal> {
        let Some(user) = requested.or(self.default.as_deref()) else {
            return Ok(RunAs::Itself);
        };
        if !self.privileged {
            return match user == self.own {
                true => Ok(RunAs::Itself),
                false => Err(RunAsRefusal::Unprivileged { user: user.to_owned(), own: self.own.clone() }),
            };
        }
        if !self.allowed.contains(user) {
            let allowed = match self.allowed.is_empty() {
                true => "no other user".to_owned(),
                false => self.allowed.iter().cloned().collect::<Vec<_>>().join(", "),
            };
            return Err(RunAsRefusal::NotAllowed { user: user.to_owned(), allowed });
        }
        Ok(if user == self.own { RunAs::Itself } else { RunAs::User(user.to_owned()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(allowed: &[&str], default: Option<&str>) -> RunAsPolicy {
        let allowed = allowed.iter().map(|u| u.to_string());
        RunAsPolicy::new(allowed, default.map(str::to_owned), "root".into(), true).unwrap()
    }

    #[test]
    fn a_root_agent_runs_as_the_listed_users_only_root_included() {
        let policy = root(&["nobody", "deploy"], None);
        assert_eq!(policy.resolve(None), Ok(RunAs::Itself));
        assert_eq!(policy.resolve(Some("nobody")), Ok(RunAs::User("nobody".into())));
        assert!(matches!(policy.resolve(Some("daemon")), Err(RunAsRefusal::NotAllowed { .. })));
        assert!(matches!(policy.resolve(Some("root")), Err(RunAsRefusal::NotAllowed { .. })), "root only when listed");
        assert_eq!(root(&["root"], None).resolve(Some("root")), Ok(RunAs::Itself));
        let none = RunAsPolicy::new([], None, "root".into(), true).unwrap();
        let refusal = none.resolve(Some("nobody")).unwrap_err().to_string();
        assert!(refusal.contains("no other user"), "{refusal}");
    }

    #[test]
    fn the_default_user_runs_commands_that_name_none_and_must_be_allowed() {
        let policy = root(&["nobody"], Some("nobody"));
        assert_eq!(policy.resolve(None), Ok(RunAs::User("nobody".into())));
        let unlisted = RunAsPolicy::new([], Some("nobody".into()), "root".into(), true);
        assert_eq!(unlisted, Err(RunAsConfigError::DefaultNotAllowed("nobody".into())));
    }

    #[test]
    fn an_agent_not_running_as_root_runs_scripts_only_as_itself() {
        let policy = RunAsPolicy::new(["nobody".into(), "me".into()], None, "me".into(), false).unwrap();
        assert_eq!(policy.out_of_reach(), vec!["nobody"]);
        assert!(!policy.changes_user());
        assert_eq!(policy.resolve(Some("me")), Ok(RunAs::Itself));
        assert!(matches!(policy.resolve(Some("nobody")), Err(RunAsRefusal::Unprivileged { .. })));
        assert!(root(&["nobody"], None).changes_user() && root(&["nobody"], None).out_of_reach().is_empty());
    }

    #[test]
    fn user_names_are_checked() {
        for good in ["nobody", "www-data", "svc_1", "host$", "a.b"] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a b", "a/b", "$", "x;y", &"a".repeat(33)] {
            assert_eq!(check_user_name(bad), Err(BadUserName(bad.to_owned())));
        }
        assert!(matches!(
            RunAsPolicy::new(["a b".into()], None, "root".into(), true),
            Err(RunAsConfigError::BadName(_))
        ));
    }
}
