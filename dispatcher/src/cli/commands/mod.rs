//! What each `dispatcher` command does, given its parsed arguments; each gives the process's exit
//! code.

pub(super) mod approve;
pub(super) mod bench;
pub(super) mod broker;
pub(super) mod cancel;
pub(super) mod completions;
pub(super) mod detach;
pub(super) mod fleet;
pub(super) mod health;
pub(super) mod history;
pub(super) mod journal;
pub(super) mod keys;
pub(super) mod receipts;
pub(super) mod schedule;
pub(super) mod serve;
pub(super) mod status;
pub(super) mod submit;
pub(super) mod transfer;

/// The known agents (`--known-agents`, else the default file) and that file, for the commands
/// that only check agents' signatures (no dispatcher key needed); either unreadable is bad usage.
fn known_agents(
    key: Option<std::path::PathBuf>,
    known_agents: Option<std::path::PathBuf>,
) -> Result<(contracts::trust::files::KnownAgents, std::path::PathBuf), std::process::ExitCode> {
    use crate::cli::output::printer::usage_error;
    let file = crate::trust::TrustFiles::resolve(key, known_agents).map_err(usage_error)?.known_agents;
    let known = crate::trust::read_known(&file).map_err(|error| usage_error(format!("known agents: {error}")))?;
    Ok((known, file))
}
