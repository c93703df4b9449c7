//! Finding the programs the agent starts (the scripts' shells, `setpriv`) on its own PATH, never
//! on a PATH a command sets.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The PATH searched, and the scripts' PATH, when the agent has none.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The first executable file `name` in the directories of `path` (a PATH value); relative
/// directories are skipped.
pub(crate) fn resolve_program(name: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let path = path.unwrap_or(DEFAULT_PATH.as_ref());
    std::env::split_paths(path).filter(|dir| dir.is_absolute()).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_shell_comes_from_absolute_directories_of_the_path_only() {
        assert_eq!(resolve_program("sh", Some("/nonexistent:/bin".as_ref())), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve_program("sh", Some(".:bin".as_ref())), None);
        assert_eq!(resolve_program("no-such-shell-here", None), None);
    }
}
