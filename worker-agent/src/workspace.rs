//! The agent's work dir and the scripts' workspaces in it. The work dir is private to the agent's
//! user (created 0700; one owned by another user, or writable by its group or others, is
//! refused), each ticket's workspace is a directory of its own created 0700 (never one that
//! exists already), files written into it are 0600 and never written through a link, and every
//! workspace path is checked to lie directly inside the work dir.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why the work dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("cannot create work dir {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("work dir {path} is owned by uid {owner}, not by the agent's user (uid {uid}): refusing it")]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("work dir {path} is writable by its group or others (mode {mode:o}): refusing it (chmod go-w, or 0700)")]
    Writable { path: PathBuf, mode: u32 },
    #[error("work dir {path} is not a directory")]
    NotADirectory { path: PathBuf },
}

/// Where the work dir is when none is given: `/var/lib/cuttle/<id>` for root, the user's state
/// dir otherwise (`$XDG_STATE_HOME/cuttle/<id>`, by default `~/.local/state/cuttle/<id>`); never
/// a shared temporary directory.
pub fn default_work_dir(agent_id: &str) -> PathBuf {
    let base = if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib")
    } else {
        match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
            (Some(state), _) if Path::new(&state).is_absolute() => PathBuf::from(state),
            (_, Some(home)) if !home.is_empty() => Path::new(&home).join(".local/state"),
            // No home at all (a bare service account): the root default, which fails clearly
            // unless the operator made it ours.
            _ => PathBuf::from("/var/lib"),
        }
    };
    base.join("cuttle").join(agent_id)
}

/// Creates the work dir (0700, with its missing parents) or checks an existing one: a directory
/// owned by the agent's user and not writable by group or others.
pub fn prepare_work_dir(path: &Path) -> Result<(), WorkDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| WorkDirError::Create { path: path.to_owned(), source })?;
    let meta = std::fs::metadata(path).map_err(|source| WorkDirError::Create { path: path.to_owned(), source })?;
    check_private(path, &meta, nix::unistd::geteuid().as_raw())
}

/// The ownership and mode rules, apart from the file system for tests.
fn check_private(path: &Path, meta: &std::fs::Metadata, uid: u32) -> Result<(), WorkDirError> {
    if !meta.is_dir() {
        return Err(WorkDirError::NotADirectory { path: path.to_owned() });
    }
    if meta.uid() != uid {
        return Err(WorkDirError::NotOwned { path: path.to_owned(), owner: meta.uid(), uid });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(WorkDirError::Writable { path: path.to_owned(), mode });
    }
    Ok(())
}

/// The workspace of a ticket: `<work dir>/<ticket>`, or `None` when the ticket is not one plain
/// name (decoding refuses such tickets already; this is the last check before the file system).
pub fn workspace_path(work_dir: &Path, ticket_key: &str) -> Option<PathBuf> {
    let mut components = Path::new(ticket_key).components();
    let plain =
        matches!((components.next(), components.next()), (Some(Component::Normal(name)), None) if name == ticket_key);
    let path = work_dir.join(ticket_key);
    (plain && path.parent() == Some(work_dir)).then_some(path)
}

/// Creates a ticket's workspace, 0700; fails if anything exists there already.
pub async fn create_workspace(path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::DirBuilder::new().mode(0o700).create(path))
        .await
        .map_err(std::io::Error::other)?
}

/// Writes a new file, 0600, refusing to write through anything that exists at `path` (a link
/// planted by another script included).
pub async fn write_private_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .await?;
    file.write_all(content).await?;
    file.flush().await
}

/// Removes a ticket's workspace (after CompleteScript).
pub async fn remove_workspace(path: &Path) {
    match tokio::fs::remove_dir_all(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "could not remove workspace"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspaces_lie_directly_inside_the_work_dir() {
        let dir = Path::new("/w/agent");
        assert_eq!(workspace_path(dir, "abc-1"), Some(dir.join("abc-1")));
        for hostile in ["", ".", "..", "../x", "a/b", "/etc", "a/..", "./a"] {
            assert_eq!(workspace_path(dir, hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn a_work_dir_of_another_user_or_writable_by_others_is_refused() {
        let dir = std::env::temp_dir().join(format!("cuttle-wd-{}", uuid::Uuid::new_v4().simple()));
        prepare_work_dir(&dir).unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        let uid = nix::unistd::geteuid().as_raw();
        assert!(matches!(check_private(&dir, &meta, uid + 1), Err(WorkDirError::NotOwned { .. })));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(matches!(prepare_work_dir(&dir), Err(WorkDirError::Writable { mode: 0o770, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
