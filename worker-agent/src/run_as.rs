//! Scripts run as another user (`--allow-run-as`, `--default-run-as`; whom a command may name is
//! decided by `contracts::agent::run_as` before the claim): the accounts looked up, the agent's
//! readiness checked at start, and the command that changes user.
//!
//! The change of user is made by `setpriv` (util-linux) between the agent's spawn and the shell:
//! it takes the user's uid, gid and supplementary groups (initgroups) and execs the shell. Doing
//! it in the agent's own child would need code run between fork and exec, which this crate,
//! free of unsafe code, does not have; and a script run as the agent itself keeps the plain
//! spawn, with no extra process.

use contracts::agent::run_as::{RunAsConfigError, RunAsPolicy};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The program that changes user.
const SETPRIV: &str = "setpriv";

/// The PATH of a script run as another user unless its command sets one: the system's
/// directories, none of them the user's own.
pub(crate) const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The agent's run-as policy: `allowed` and `default` as the flags give them, for the user this
/// process runs as.
pub fn policy(allowed: Vec<String>, default: Option<String>) -> Result<RunAsPolicy, RunAsConfigError> {
    let euid = nix::unistd::geteuid();
    let own = match nix::unistd::User::from_uid(euid) {
        Ok(Some(user)) => user.name,
        _ => euid.to_string(),
    };
    RunAsPolicy::new(allowed, default, own, euid.is_root())
}

/// A user scripts run as, from the system's accounts.
#[derive(Clone, Debug)]
pub(crate) struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Why scripts cannot run as the users the agent allows.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error("user {0} does not exist on this machine")]
    NoSuchUser(String),
    #[error("cannot look up user {user}: {source}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "--allow-run-as names other users, but {SETPRIV} (util-linux), which changes user, is not on the agent's PATH"
    )]
    NoSetpriv,
    #[error(
        "work dir {work_dir}: {path} on the way to it is not searchable by other users (mode {mode:o}), so a script run \
         as another user could not reach its workspace: give it o+x, or choose a --work-dir below directories that have it"
    )]
    Unreachable { work_dir: PathBuf, path: PathBuf, mode: u32 },
    #[error("work dir {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The account named `name`.
pub(crate) fn account(name: &str) -> Result<Account, RunAsError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => {
            Ok(Account { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw(), home: user.dir })
        }
        Ok(None) => Err(RunAsError::NoSuchUser(name.to_owned())),
        Err(source) => Err(RunAsError::Lookup { user: name.to_owned(), source }),
    }
}

/// Readies the agent to run scripts as the users `policy` allows, at start: says which listed
/// users it cannot run as (an agent not running as root), and, when it can change user, checks
/// that each user exists and that `setpriv` is at hand, and opens the work dir to be searched
/// (0711: each user reaches its own workspace, 0700 and its own, and lists nothing).
pub(crate) fn prepare(policy: &RunAsPolicy, work_dir: &Path, agent_id: &str) -> Result<(), RunAsError> {
    let out_of_reach = policy.out_of_reach();
    if !out_of_reach.is_empty() {
        tracing::warn!(agent = %agent_id, users = ?out_of_reach, "this agent does not run as root, so it runs scripts only as itself: commands naming these users will be refused");
    }
    if !policy.changes_user() {
        return Ok(());
    }
    for user in policy.allowed() {
        account(user)?;
    }
    setpriv().ok_or(RunAsError::NoSetpriv)?;
    let work_dir_error = |source| RunAsError::WorkDir { path: work_dir.to_owned(), source };
    std::fs::set_permissions(work_dir, std::fs::Permissions::from_mode(0o711)).map_err(work_dir_error)?;
    let canonical = work_dir.canonicalize().map_err(work_dir_error)?;
    for path in canonical.ancestors() {
        let mode = std::fs::metadata(path).map_err(work_dir_error)?.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Err(RunAsError::Unreachable { work_dir: work_dir.to_owned(), path: path.to_owned(), mode });
        }
    }
    let users: Vec<&str> = policy.allowed().collect();
    tracing::info!(agent = %agent_id, ?users, "scripts may run as these users when their command names one");
    Ok(())
}

/// Where `setpriv` is, on the agent's PATH.
pub(crate) fn setpriv() -> Option<PathBuf> {
    crate::programs::resolve_program(SETPRIV, std::env::var_os("PATH").as_deref())
}

/// The start of a command that runs the rest as `account`: `setpriv` (at `setpriv`) taking the
/// account's uid, gid and groups.
pub(crate) fn argv(setpriv: &Path, account: &Account) -> Vec<std::ffi::OsString> {
    vec![
        setpriv.as_os_str().to_owned(),
        format!("--reuid={}", account.uid).into(),
        format!("--regid={}", account.gid).into(),
        "--init-groups".into(),
        "--".into(),
    ]
}

/// What a script run as `account` finds in its environment about its user, before its
/// command's own variables.
pub(crate) fn environment(account: &Account) -> [(&'static str, std::ffi::OsString); 4] {
    [
        ("HOME", account.home.clone().into_os_string()),
        ("USER", account.name.clone().into()),
        ("LOGNAME", account.name.clone().into()),
        ("PATH", USER_PATH.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_read_from_the_system() {
        let root = account("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(account("no-such-user-cuttle"), Err(RunAsError::NoSuchUser(_))));
    }

    #[test]
    fn the_command_changes_uid_gid_and_groups_before_the_shell() {
        let account = Account { name: "nobody".into(), uid: 65534, gid: 65534, home: "/nonexistent".into() };
        let argv = argv(Path::new("/usr/bin/setpriv"), &account);
        let argv: Vec<_> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv, ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--init-groups", "--"]);
    }
}
