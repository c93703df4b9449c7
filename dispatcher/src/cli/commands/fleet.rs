//! `dispatcher agents` and `submit --select`: the live fleet from the presence stream, as far
//! as the known agents' pinned keys vouch for it.

use crate::cli::args::AgentsArgs;
use crate::cli::output::printer::usage_error;
use crate::cli::output::terminal;
use crate::event::{IgnoredAnnouncements, JsonEvent};
use crate::inventory::{self, Ignored, Inventory};
use crate::route::Route;
use crate::rpc::RpcConfig;
use crate::trust::{legacy_warning, DispatcherTrust};
use contracts::submission::outcome::exit;
use contracts::trust::files::KnownAgents;
use contracts::wire::labels::Selector;
use contracts::wire::presence::Announcement;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Unpinned agents named in a warning; the rest are counted.
const NAMED_UNPINNED: usize = 10;

/// The pins announcements are checked against, and the file they come from (named in warnings).
struct Pins<'a> {
    pub known: &'a KnownAgents,
    pub file: &'a Path,
}

/// Reads the live fleet, telling the user why it could not.
async fn read_inventory(rpc: &RpcConfig, pins: &Pins<'_>) -> Result<Inventory, ExitCode> {
    inventory::read(rpc, pins.known).await.map_err(|error| {
        eprintln!("cuttle: cannot read the live agents: {error}");
        ExitCode::from(exit::BROKER_UNREACHABLE)
    })
}

/// How many announcements were not believed, by why (`--json` counts).
fn ignored_counts(inventory: &Inventory) -> IgnoredAnnouncements {
    let mut counts = IgnoredAnnouncements::default();
    for ignored in inventory.ignored() {
        match ignored {
            Ignored::Forged { .. } => counts.forged += 1,
            Ignored::Unpinned { .. } => counts.unpinned += 1,
            Ignored::Invalid(_) => counts.invalid += 1,
        }
    }
    counts
}

/// What the user is warned of after reading the fleet: one line per agent whose announcements
/// were forged (how many, and why the newest failed), one naming the agents with no pinned key,
/// one counting undecodable announcements, and what `legacy` says of each agent believed
/// unsigned as `legacy` (nothing once it was said).
fn warnings(inventory: &Inventory, known_file: &Path, legacy: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut forged: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    let mut unpinned: Vec<&str> = Vec::new();
    let mut invalid: Vec<&str> = Vec::new();
    for ignored in inventory.ignored() {
        match ignored {
            Ignored::Forged { agent, reason } => {
                forged.entry(agent).or_insert_with(|| (0, reason.to_string())).0 += 1;
            }
            Ignored::Unpinned { agent } if unpinned.last() != Some(&agent.as_str()) => unpinned.push(agent),
            Ignored::Unpinned { .. } => {}
            Ignored::Invalid(error) => invalid.push(error),
        }
    }
    let mut lines: Vec<String> = forged
        .into_iter()
        .map(|(agent, (count, reason))| {
            // What the forgeries did to the agent: nothing if a genuine announcement of it was read.
            let effect = if inventory.believes(agent) {
                "only its announcements signed by its pinned key count, and those were read"
            } else {
                "none of its announcements read was signed by its pinned key, so it is not listed and no --select reaches it"
            };
            format!("ignored {count} forged announcement(s) in the name of agent {agent}: {reason}; {effect}")
        })
        .collect();
    if !unpinned.is_empty() {
        let more = unpinned.len().saturating_sub(NAMED_UNPINNED);
        let named = unpinned[..unpinned.len().min(NAMED_UNPINNED)].join(", ");
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        lines.push(format!(
            "ignored the announcements of {} agent(s) with no key pinned in {}: {named}{more}",
            unpinned.len(),
            known_file.display()
        ));
    }
    if let Some(first) = invalid.first() {
        lines.push(format!("ignored {} announcement(s) that are not valid: {first}", invalid.len()));
    }
    lines.extend(inventory.legacy().iter().filter_map(|agent| legacy(agent)));
    lines
}

fn warn_on_stderr(lines: Vec<String>) {
    for line in lines {
        eprintln!("cuttle: warning: {}", terminal::err(&line));
    }
}

/// `dispatcher agents`, believing the announcements the known agents' pins vouch for (no key
/// needed: nothing is signed).
pub(crate) async fn run(
    rpc: &RpcConfig,
    key: Option<PathBuf>,
    known_agents: Option<PathBuf>,
    args: AgentsArgs,
) -> ExitCode {
    let (known, file) = match super::known_agents(key, known_agents) {
        Ok(read) => read,
        Err(code) => return code,
    };
    agents(rpc, &Pins { known: &known, file: &file }, args).await
}

/// The live agents (matching `--select`) whose announcements verify, by id; what was ignored is
/// told on stderr.
async fn agents(rpc: &RpcConfig, pins: &Pins<'_>, args: AgentsArgs) -> ExitCode {
    let inventory = match read_inventory(rpc, pins).await {
        Ok(inventory) => inventory,
        Err(code) => return code,
    };
    warn_on_stderr(warnings(&inventory, pins.file, &|agent| Some(legacy_warning(agent))));
    let now = edge::clock::now_ms();
    let live = inventory.select(args.select.as_ref(), now);
    if args.json {
        for agent in &live {
            outln!("{}", describe_json(agent, now));
        }
        return ExitCode::SUCCESS;
    }
    if live.is_empty() {
        eprintln!("cuttle: no live agents{}", args.select.map(|s| format!(" match {s}")).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    outln!("{:<28} {:<16} {:<9} {:>7} {:>9}  LABELS", "ID", "POOL", "VERSION", "RUNNING", "LAST SEEN");
    for agent in live {
        let labels: Vec<String> = agent.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{:<28} {:<16} {:<9} {:>7} {:>9}  {}",
            agent.agent_id,
            agent.pool.as_deref().unwrap_or("-"),
            agent.agent_version,
            agent.running_scripts,
            format!("{:.1}s ago", now.saturating_sub(agent.at) as f64 / 1000.0),
            labels.join(",")
        );
    }
    ExitCode::SUCCESS
}

fn describe_json(agent: &Announcement, now: u64) -> serde_json::Value {
    json!({
        "agent": agent.agent_id, "pool": agent.pool, "labels": agent.labels, "version": agent.agent_version,
        "services": agent.services, "running_scripts": agent.running_scripts, "last_seen_ms_ago": now.saturating_sub(agent.at),
        "heartbeat_ms": agent.interval_ms,
    })
}

/// `submit --select`: the live agents matching `selector` now, printed; an empty match is
/// refused (exit 102) rather than run on nothing. Under `--json` what was ignored is counted in
/// the `selected` event and each warning is a `warning` event; otherwise both go to stderr. The
/// workers of pools among them with no pin of their own are made known to `trust`, which then
/// believes their answers under their pool's pin, as it did their announcements.
pub(crate) async fn resolve(
    rpc: &RpcConfig,
    trust: &DispatcherTrust,
    selector: &Selector,
    json: bool,
) -> Result<Vec<Route>, ExitCode> {
    let known = trust.known_agents();
    let file = trust.known_file().map(Path::to_path_buf).unwrap_or_default();
    let inventory = read_inventory(rpc, &Pins { known: &known, file: &file }).await?;
    let lines = warnings(&inventory, &file, &|agent| trust.legacy_warning(agent));
    if json {
        for message in lines {
            outln!("{}", JsonEvent::Warning { message, target: None });
        }
    } else {
        warn_on_stderr(lines);
    }
    let now = edge::clock::now_ms();
    let matching = inventory.select_to_run(selector, now, trust);
    if matching.is_empty() {
        let live = inventory.live(now).count();
        eprintln!("dispatcher: no live agent matches --select {selector} ({live} live agents in all); nothing was run");
        return Err(ExitCode::from(exit::NO_SUCH_AGENT));
    }
    let ids: Vec<&str> = matching.iter().map(|a| a.agent_id.as_str()).collect();
    eprintln!("cuttle: --select {selector} matches {} live agents: {}", ids.len(), ids.join(", "));
    if json {
        let ignored = ignored_counts(&inventory);
        let targets = ids.iter().map(|id| id.to_string()).collect();
        outln!("{}", JsonEvent::Selected { select: selector.to_string(), targets, ignored });
    }
    ids.iter().map(|id| Route::agent(id).map_err(usage_error)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::{announcement, pinned, sighting};
    use contracts::trust::keys::SecretKey;

    #[test]
    fn forged_announcements_are_reported_with_what_they_did_to_their_agent() {
        let (key, known) = pinned(&["web-1", "web-2"]);
        let impostor = SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap();
        let sightings = vec![
            sighting(Some(&key), &announcement("web-1", 10_000, &[])),
            sighting(Some(&impostor), &announcement("web-1", 10_500, &[])),
            sighting(Some(&impostor), &announcement("web-2", 10_500, &[])),
            sighting(None, &announcement("web-2", 10_600, &[])),
        ];
        let inventory = Inventory::settle(sightings, &known);
        let lines = warnings(&inventory, Path::new("known_agents"), &|_| None);
        let [web1, web2] = &lines[..] else { panic!("one line per agent: {lines:?}") };
        assert!(
            web1.starts_with("ignored 1 forged announcement(s) in the name of agent web-1: signed by key"),
            "{web1}"
        );
        assert!(web1.ends_with("only its announcements signed by its pinned key count, and those were read"), "{web1}");
        assert!(!web1.contains("not listed"), "the genuine web-1 is listed: {web1}");
        assert!(web2.starts_with("ignored 2 forged announcement(s) in the name of agent web-2: unsigned;"), "{web2}");
        assert!(web2.ends_with("so it is not listed and no --select reaches it"), "{web2}");
    }
}
