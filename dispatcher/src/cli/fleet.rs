//! `dispatcher agents` and `submit --select`: the live fleet from the presence stream.

use super::usage_error;
use crate::inventory::{self, Ignored, Inventory};
use crate::outcome::exit;
use crate::route::Route;
use crate::rpc::RpcConfig;
use clap::Args;
use contracts::labels::Selector;
use contracts::presence::Announcement;
use serde_json::json;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct AgentsArgs {
    /// Only agents matching all of these comma-separated terms: `key=value` (label equals),
    /// `key!=value` (label differs or is absent); `id` and `pool` match the agent's id and pool.
    #[arg(long, value_parser = parse_selector)]
    pub select: Option<Selector>,
    /// One JSON object per agent and line.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_selector(raw: &str) -> Result<Selector, String> {
    Selector::parse(raw).map_err(|e| e.to_string())
}

/// Reads the live fleet, telling the user (on stderr) why it could not.
async fn read_inventory(rpc: &RpcConfig) -> Result<Inventory, ExitCode> {
    match inventory::read(rpc).await {
        Ok(inventory) => {
            let forged = inventory.ignored().iter().filter(|i| matches!(i, Ignored::Forged(_))).count();
            if forged > 0 {
                eprintln!(
                    "cuttle: ignored {forged} announcement(s) whose signature does not verify against the pinned key"
                );
            }
            Ok(inventory)
        }
        Err(error) => {
            eprintln!("cuttle: cannot read the live agents: {error}");
            Err(ExitCode::from(exit::BROKER_UNREACHABLE))
        }
    }
}

/// `dispatcher agents`: the live agents (matching `--select`), by id.
pub async fn agents(rpc: &RpcConfig, args: AgentsArgs) -> ExitCode {
    let inventory = match read_inventory(rpc).await {
        Ok(inventory) => inventory,
        Err(code) => return code,
    };
    let now = inventory::now_ms();
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
/// refused (exit 102) rather than run on nothing.
pub async fn resolve(rpc: &RpcConfig, selector: &Selector, json: bool) -> Result<Vec<Route>, ExitCode> {
    let inventory = read_inventory(rpc).await?;
    let now = inventory::now_ms();
    let matching = inventory.select(Some(selector), now);
    if matching.is_empty() {
        let live = inventory.live(now).count();
        eprintln!("dispatcher: no live agent matches --select {selector} ({live} live agents in all); nothing was run");
        return Err(ExitCode::from(exit::NO_SUCH_AGENT));
    }
    let ids: Vec<&str> = matching.iter().map(|a| a.agent_id.as_str()).collect();
    eprintln!("cuttle: --select {selector} matches {} live agents: {}", ids.len(), ids.join(", "));
    if json {
        outln!("{}", json!({"event": "selected", "select": selector.to_string(), "targets": ids}));
    }
    ids.iter().map(|id| Route::agent(id).map_err(usage_error)).collect()
}
