//! The agent's work dir and the scripts' workspaces in it. The work dir is private to the agent's
//! user (created 0700; one owned by another user, or writable by its group or others, is
//! refused), and so is the way to it: each directory above it must be owned by root or the
//! agent's user and not writable by group or others unless sticky (as `sshd`'s StrictModes
//! checks a user's home), else whoever can write there could rename the work dir away and put
//! their own in its place. Each ticket's workspace is a directory of its own created 0700 (never one that
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
    #[error(
        "work dir {work_dir}: {path}, on the way to it, is owned by uid {owner} (mode {mode:o}), neither root nor the \
         agent's user (uid {uid}), who could replace the work dir: refusing it (give a --work-dir whose every parent \
         is owned by root or uid {uid})"
    )]
    ParentNotOwned { work_dir: PathBuf, path: PathBuf, owner: u32, mode: u32, uid: u32 },
    #[error(
        "work dir {work_dir}: {path}, on the way to it, is writable by its group or others without the sticky bit \
         (owner uid {owner}, mode {mode:o}), so they could rename the work dir and put their own in its place: \
         refusing it (chmod go-w {path}; a directory writable by all is accepted only sticky, as /tmp is)"
    )]
    ParentWritable { work_dir: PathBuf, path: PathBuf, owner: u32, mode: u32 },
    #[error("work dir {work_dir}: cannot check {path}, on the way to it: {source}")]
    ParentUnreadable { work_dir: PathBuf, path: PathBuf, source: std::io::Error },
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
/// owned by the agent's user and not writable by group or others, every directory above it
/// safe too ([`check_parents`]).
pub fn prepare_work_dir(path: &Path) -> Result<(), WorkDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| WorkDirError::Create { path: path.to_owned(), source })?;
    let meta = std::fs::metadata(path).map_err(|source| WorkDirError::Create { path: path.to_owned(), source })?;
    let uid = nix::unistd::geteuid().as_raw();
    check_private(path, &meta, uid)?;
    check_parents(path, uid)
}

/// Checks every directory on the way to `work_dir`, up to `/`: as written (a link there counts
/// by its owner, since only its owner or whoever can write its directory, checked too, can change
/// it) and as resolved (the directories the links lead through), each by [`check_parent`].
fn check_parents(work_dir: &Path, uid: u32) -> Result<(), WorkDirError> {
    let unreadable = |path: &Path| {
        let (work_dir, path) = (work_dir.to_owned(), path.to_owned());
        move |source| WorkDirError::ParentUnreadable { work_dir, path, source }
    };
    let written = std::path::absolute(work_dir).map_err(unreadable(work_dir))?;
    let resolved = work_dir.canonicalize().map_err(unreadable(work_dir))?;
    // The work dir itself passed the stricter check_private (and, as written, may be a link).
    for path in written.ancestors().chain(resolved.ancestors().skip(1)) {
        let meta = std::fs::symlink_metadata(path).map_err(unreadable(path))?;
        let (owner, mode) = (meta.uid(), meta.permissions().mode() & 0o7777);
        let safe =
            if meta.file_type().is_symlink() { owned_by_root_or(owner, uid) } else { check_parent(owner, mode, uid) };
        match safe {
            Ok(()) => {}
            Err(Unsafe::Owner) => {
                let (work_dir, path) = (work_dir.to_owned(), path.to_owned());
                return Err(WorkDirError::ParentNotOwned { work_dir, path, owner, mode, uid });
            }
            Err(Unsafe::Writable) => {
                let (work_dir, path) = (work_dir.to_owned(), path.to_owned());
                return Err(WorkDirError::ParentWritable { work_dir, path, owner, mode });
            }
        }
    }
    Ok(())
}

/// Why a directory on the way to the work dir is not safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unsafe {
    /// Owned by neither root nor the agent's user.
    Owner,
    /// Writable by group or others, and not sticky.
    Writable,
}

fn owned_by_root_or(owner: u32, uid: u32) -> Result<(), Unsafe> {
    if owner == 0 || owner == uid {
        Ok(())
    } else {
        Err(Unsafe::Owner)
    }
}

/// `sshd`'s StrictModes rule for a directory above the work dir, owned by `owner` with `mode`,
/// for an agent running as `uid`: owned by root or `uid`, and not writable by group or others
/// unless it has the sticky bit (like /tmp: then only an entry's owner may remove or rename it,
/// so the work dir's parent that the agent made there stays its own).
fn check_parent(owner: u32, mode: u32, uid: u32) -> Result<(), Unsafe> {
    owned_by_root_or(owner, uid)?;
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(Unsafe::Writable);
    }
    Ok(())
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

/// Creates a ticket's workspace, 0700, given to `owner` (uid, gid) when the script runs as
/// another user; fails if anything exists there already.
///
/// Made on the calling thread, not the blocking pool: one `mkdir` (and a `chown`) in the agent's
/// own work dir costs less than the two thread hops a blocking task takes, once per script.
pub fn create_workspace(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)?;
    // Made by the agent a moment ago in its own work dir, which no one else can write: the
    // directory given away is the one just made.
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// Writes a new file, 0600, given to `owner` (uid, gid) if any, refusing to write through
/// anything that exists at `path` (a link planted by another script included).
pub async fn write_private_file(path: &Path, content: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .await?;
    file.write_all(content).await?;
    file.flush().await?;
    if let Some((uid, gid)) = owner {
        let file = file.into_std().await;
        tokio::task::spawn_blocking(move || std::os::unix::fs::fchown(&file, Some(uid), Some(gid)))
            .await
            .map_err(std::io::Error::other)??;
    }
    Ok(())
}

/// Removes a ticket's workspace (after CompleteScript): at once when it is empty (an inline
/// script that left nothing, the usual case: one `rmdir`), else on the blocking pool.
pub async fn remove_workspace(path: &Path) {
    let removed = match std::fs::remove_dir(path) {
        Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => tokio::fs::remove_dir_all(path).await,
        removed => removed,
    };
    match removed {
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

    #[test]
    fn each_parent_must_be_owned_by_root_or_the_agent_and_writable_by_others_only_if_sticky() {
        let (me, other) = (1000, 1001);
        assert_eq!(check_parent(0, 0o755, me), Ok(()), "/ or /var/lib");
        assert_eq!(check_parent(me, 0o700, me), Ok(()), "the user's own");
        assert_eq!(check_parent(0, 0o1777, me), Ok(()), "/tmp: others cannot rename our entries");
        assert_eq!(check_parent(me, 0o1770, me), Ok(()), "sticky and group-writable");
        assert_eq!(check_parent(0, 0o777, me), Err(Unsafe::Writable), "world-writable, not sticky");
        assert_eq!(check_parent(me, 0o775, me), Err(Unsafe::Writable), "group-writable");
        assert_eq!(check_parent(me, 0o2777, me), Err(Unsafe::Writable), "setgid is no sticky bit");
        assert_eq!(check_parent(other, 0o755, me), Err(Unsafe::Owner), "another user's");
        assert_eq!(check_parent(other, 0o1777, me), Err(Unsafe::Owner), "another user's, sticky or not");
    }

    #[test]
    fn a_work_dir_below_a_directory_writable_by_all_and_not_sticky_is_refused() {
        let base = std::env::temp_dir().join(format!("cuttle-wd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&base).unwrap();
        // As the check resolves it, so that the directory it names compares equal.
        let base = base.canonicalize().unwrap();
        let open = base.join("open");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = prepare_work_dir(&open.join("agent")).unwrap_err();
        assert!(
            matches!(&refused, WorkDirError::ParentWritable { path, mode: 0o777, .. } if *path == open),
            "{refused}"
        );
        assert!(refused.to_string().contains("without the sticky bit"), "{refused}");
        // Reached through a link in a safe directory: the directory it leads to is checked.
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let refused = prepare_work_dir(&link.join("agent")).unwrap_err();
        assert!(matches!(&refused, WorkDirError::ParentWritable { path, .. } if *path == open), "{refused}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_work_dir(&open.join("agent")).expect("sticky, as /tmp");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_work_dir(&link.join("agent")).expect("through a link to a safe directory");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
