//! The workspace janitor: at start and then every `--janitor-interval`, removes the workspaces
//! left in the work dir by tickets that completed (a `CompleteScript` that never came, a crash
//! between the tombstone and the removal) and those older than `--workspace-max-age` that no
//! script of this process runs. A young workspace whose ticket the store no longer knows is kept:
//! while it is there, a late copy of its start cannot run the script again on this agent.

use crate::service::Agent;
use contracts::store::SKIP_LOGS;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What to do with one workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Remove(&'static str),
}

/// The decision for one workspace: `running_here` if a script of this process runs in it,
/// `completed` if the store holds its ticket as complete, `age` since it last changed.
pub(crate) fn judge(running_here: bool, completed: bool, age: Duration, max_age: Duration) -> Verdict {
    if running_here {
        Verdict::Keep
    } else if completed {
        Verdict::Remove("completed")
    } else if age >= max_age {
        Verdict::Remove("stale")
    } else {
        Verdict::Keep
    }
}

/// Sweeps at once, then every `interval`, until `shutdown`.
pub(crate) async fn run(agent: Arc<Agent>, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => sweep(&agent).await,
        }
    }
}

/// The directories in the work dir that are named as workspaces are, with their age.
async fn workspaces(work_dir: PathBuf) -> std::io::Result<Vec<(String, PathBuf, Duration)>> {
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&work_dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let Some(path) = crate::workspace::workspace_path(&work_dir, &name) else { continue };
            // Never follows a link: only real directories are workspaces.
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if !meta.is_dir() {
                continue;
            }
            let changed = meta.modified().unwrap_or_else(|_| SystemTime::now());
            found.push((name, path, changed.elapsed().unwrap_or_default()));
        }
        Ok(found)
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn sweep(agent: &Agent) {
    let config = agent.config();
    let found = match workspaces(config.work_dir.clone()).await {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(agent = %config.agent_id, %error, "janitor cannot list the work dir");
            return;
        }
    };
    let mut removed = 0;
    for (ticket, path, age) in found {
        let completed = match agent.store().read(&agent.store().keys(&ticket), SKIP_LOGS).await {
            Ok(view) => view.record.is_some_and(|(record, _)| record.state.is_complete()),
            Err(error) => {
                tracing::debug!(agent = %config.agent_id, %ticket, %error, "janitor cannot read the ticket; keeping its workspace");
                continue;
            }
        };
        if let Verdict::Remove(reason) = judge(agent.is_running(&ticket), completed, age, config.workspace_max_age) {
            crate::workspace::remove_workspace(&path).await;
            tracing::info!(agent = %config.agent_id, %ticket, reason, "janitor removed a workspace");
            removed += 1;
        }
    }
    tracing::debug!(agent = %config.agent_id, removed, "janitor swept the work dir");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_and_stale_workspaces_go_running_and_young_ones_stay() {
        let (young, old, max) = (Duration::from_secs(5), Duration::from_secs(7200), Duration::from_secs(3600));
        assert_eq!(judge(false, true, young, max), Verdict::Remove("completed"));
        assert_eq!(judge(true, true, old, max), Verdict::Keep, "a script of ours runs in it");
        assert_eq!(judge(false, false, old, max), Verdict::Remove("stale"));
        assert_eq!(judge(false, false, young, max), Verdict::Keep, "guards against a late duplicate start");
    }
}
