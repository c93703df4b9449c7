//! `dispatcher capabilities ID` and `dispatcher health ID...`: what agents support, asked at once.

use crate::cli::args::{CapabilitiesArgs, HealthArgs};
use crate::cli::output::printer::{usage_error, Printer};
use crate::orchestrator::Orchestrator;
use crate::policy::Purpose;
use crate::route::Route;
use contracts::submission::negotiate::AgentKind;
use contracts::submission::outcome::{exit, Outcome};
use contracts::wire::messages::{Enforcement, LimitsInForce};
use serde_json::json;
use std::process::ExitCode;

/// One agent's answer to capabilities, as `capabilities` and `health` print it.
fn describe_agent(agent: &str, kind: &AgentKind) -> (String, serde_json::Value) {
    let (protocol, services, version) = match kind {
        AgentKind::Current(caps) => {
            let v2 = caps.supports(contracts::wire::messages::SERVICE_SCRIPT_V2);
            (if v2 { "v2" } else { "v1" }, caps.services.clone(), Some(caps.agent_version.clone()))
        }
        AgentKind::Legacy => ("v1", vec![contracts::wire::messages::SERVICE_SCRIPT_V1.to_owned()], None),
    };
    let retries = protocol == "v2";
    let (limits, approvals) = match kind {
        AgentKind::Current(caps) => (caps.limits.as_deref().copied(), caps.approvals.clone()),
        AgentKind::Legacy => (None, None),
    };
    let rules: Vec<&str> = approvals.iter().flatten().map(|rule| rule.rule.as_str()).collect();
    let text = format!(
        "{agent}: protocol {protocol}{}, version {}, services {}; retries {}{}{}",
        if *kind == AgentKind::Legacy { " (legacy agent)" } else { "" },
        version.as_deref().unwrap_or("unknown"),
        services.join(", "),
        if retries { "on" } else { "off (upgrade the agent to turn them on)" },
        limits.map(|limits| format!("; limits: {}", describe_limits(&limits))).unwrap_or_default(),
        if rules.is_empty() { String::new() } else { format!("; approvals: {}", rules.join("; ")) },
    );
    let json = json!({"agent": agent, "protocol": protocol, "services": services, "agent_version": version, "retries": retries, "limits": limits, "approvals": approvals});
    (text, json)
}

/// How an agent enforces each limit, and its cap: `memory by cgroup-v1 (cap 1GiB), cpu by
/// cgroup-v1, tasks not enforced, file size by rlimit`.
fn describe_limits(limits: &LimitsInForce) -> String {
    use contracts::agent::limits::{bytes, cores};
    let caps = limits.caps;
    let one = |name: &str, how: Enforcement, cap: Option<String>| match (how, cap) {
        (Enforcement::None, _) => format!("{name} not enforced"),
        (how, Some(cap)) => format!("{name} by {} (cap {cap})", how.name()),
        (how, None) => format!("{name} by {}", how.name()),
    };
    [
        one("memory", limits.memory, caps.memory_max.map(bytes)),
        one("cpu", limits.cpu, caps.cpu_max.map(|m| cores(u64::from(m)))),
        one("tasks", limits.tasks, caps.tasks_max.map(|t| t.to_string())),
        one("file size", limits.file_size, caps.file_size_max.map(bytes)),
    ]
    .join(", ")
}

/// `dispatcher capabilities ID`: `health` of one agent.
pub(crate) async fn capabilities(orchestrator: &Orchestrator, args: CapabilitiesArgs) -> ExitCode {
    let args = HealthArgs { agents: vec![args.agent], retry: args.retry, json: args.json, wait: args.wait };
    health(orchestrator, args).await
}

/// Asks every agent at once; prints one line each, in the order given. An agent whose queue
/// nobody consumes is down at once (without `--wait`).
pub(crate) async fn health(orchestrator: &Orchestrator, args: HealthArgs) -> ExitCode {
    let config = match args.retry.config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let mut checks = Vec::with_capacity(args.agents.len());
    for agent in &args.agents {
        let route = match Route::agent(agent) {
            Ok(route) => route,
            Err(e) => return usage_error(e),
        };
        match args.retry.choice().retry(&config, &route, Purpose::HealthCheck) {
            Ok(policy) => checks.push((route, policy)),
            Err(e) => return usage_error(e),
        }
    }
    let several = checks.len() > 1;
    let answers = futures_util::future::join_all(checks.iter().map(|(route, policy)| async move {
        let agent = route.name();
        let printer = Printer::new(args.json).without_logs().for_target(several.then(|| agent.to_owned()));
        if !args.wait
            && orchestrator.rpc().consumers(route, contracts::wire::messages::Kind::GetCapabilities).await == Some(0)
        {
            let queue = route.queue(contracts::wire::messages::Kind::GetCapabilities);
            return Err((format!("down: no agent is consuming {queue} (--wait waits for it)"), exit::NO_ANSWER));
        }
        orchestrator.agent_kind(route, *policy, &|e| printer.event(e)).await.map_err(|gave_up| {
            let outcome = Outcome::from_error(None, agent, &gave_up.error, gave_up.to_string(), false);
            (format!("unreachable: {}", outcome.error.unwrap_or_default()), outcome.process_exit)
        })
    }))
    .await;
    let mut worst = ExitCode::SUCCESS;
    for ((route, _), answer) in checks.iter().zip(answers) {
        let agent = route.name();
        match answer {
            Ok(kind) => {
                let (text, value) = describe_agent(agent, &kind);
                if args.json {
                    outln!("{value}");
                } else {
                    outln!("{text}");
                }
            }
            Err((error, code)) => {
                if args.json {
                    outln!("{}", json!({"agent": agent, "error": error}));
                } else {
                    outln!("{agent}: {error}");
                }
                worst = ExitCode::from(code);
            }
        }
    }
    worst
}
