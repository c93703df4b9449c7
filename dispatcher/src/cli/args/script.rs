//! The flags that describe a script (`submit`, `schedule add`): its shell and isolation, its
//! files, variables and secrets, the user it runs as and its limits.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(in crate::cli) enum ShellArg {
    Sh,
    Bash,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(in crate::cli) enum IsolationArg {
    None,
    Full,
}

/// Who the script runs as on the agent, and within which limits: all signed with the script.
#[derive(Args, Debug, Clone, Default)]
pub(in crate::cli) struct BoundsArgs {
    /// The user the script runs as on the agent, with that user's groups, HOME and a workspace
    /// of its own; the agent must allow it (its --allow-run-as), or refuses the start and nothing
    /// runs (exit 103). Signed with the script [default: the agent's --default-run-as, else the
    /// agent's own user].
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    pub(in crate::cli) run_as: Option<String>,
    /// The most memory the script (with every process it starts) may have on the agent (`256MiB`,
    /// `2GiB`); past it the script is killed (exit 113). Within the agent's cap (its
    /// --max-memory-per-script), or the start is refused and nothing runs (exit 103). Signed with
    /// the script [default: the agent's cap].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(in crate::cli) memory_max: Option<u64>,
    /// The most CPU the script may use, in cores (`0.5`, `2`), within the agent's cap [default:
    /// the agent's cap].
    #[arg(long, value_name = "CORES", value_parser = parse_cores)]
    pub(in crate::cli) cpu_max: Option<u32>,
    /// The most processes and threads the script may have at once: a fork past it fails (a fork
    /// bomb stops there). Within the agent's cap [default: the agent's cap].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(in crate::cli) tasks_max: Option<u32>,
    /// The largest file the script may write (`100MiB`), within the agent's cap [default: the
    /// agent's cap].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(in crate::cli) file_size_max: Option<u64>,
}

/// `--file LOCAL[:NAME]`.
#[derive(Clone, Debug)]
pub(in crate::cli) struct FileArg {
    pub local: PathBuf,
    pub name: String,
}

pub(super) fn parse_file_arg(raw: &str) -> Result<FileArg, String> {
    // A colon followed by a plain name renames; any other colon belongs to the path.
    let (local, name) = match raw.rsplit_once(':') {
        Some((local, name)) if !local.is_empty() && !name.is_empty() && !name.contains('/') => {
            (PathBuf::from(local), name.to_owned())
        }
        _ => {
            let local = PathBuf::from(raw);
            let name = local.file_name().ok_or_else(|| format!("{raw:?} names no file"))?;
            (local.clone(), name.to_string_lossy().into_owned())
        }
    };
    Ok(FileArg { local, name })
}

/// `--secret-env NAME=VALUE`; `Debug` shows the name only.
#[derive(Clone)]
pub(in crate::cli) struct SecretArg {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, contracts::wire::messages::SECRET_MASK)
    }
}

pub(super) fn parse_secret(raw: &str) -> Result<SecretArg, String> {
    // Never echo the value in an error.
    let (name, value) = raw.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok(SecretArg { name: name.to_owned(), value: value.to_owned() })
}

pub(super) fn parse_env(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {raw:?}"))?;
    if name.is_empty() {
        return Err("empty variable name".into());
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// `--run-as USER`: a name that can be a user's, refused here before anything is sent.
pub(super) fn parse_user(raw: &str) -> Result<String, String> {
    contracts::wire::messages::check_user_name(raw).map(|()| raw.to_owned()).map_err(|e| e.to_string())
}

fn parse_size(raw: &str) -> Result<u64, String> {
    contracts::agent::limits::parse_size(raw).map_err(|e| e.to_string())
}

fn parse_cores(raw: &str) -> Result<u32, String> {
    contracts::agent::limits::parse_cores(raw).map_err(|e| e.to_string())
}
