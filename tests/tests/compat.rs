//! Old and new together: {old dispatcher, new dispatcher} × {legacy agent, new agent}, driven
//! through the real binaries and broker; and a legacy agent's lost start reply is never retried.
//! A legacy agent cannot sign: it runs with `--insecure-allow-unsigned` and is pinned `legacy`.

use dispatcher::{Orchestrator, OutcomeKind, RpcClient, Timing};
use std::sync::Arc;
use std::time::Duration;
use tests::proxy::{Direction, FaultProxy};
use tests::*;
use worker_agent::Protocol;

async fn agent(what: &str, protocol: Protocol) -> TestAgent {
    let config = match protocol {
        Protocol::V1 => tests::agent::legacy_config(what),
        Protocol::V2 => tests::agent::test_config(what),
    };
    TestAgent::start_with(config).await
}

/// Runs `dispatcher [--protocol v1] submit` and returns (exit code, stdout, stderr).
async fn submit(old_dispatcher: bool, agent_id: &str, script: &str) -> (Option<i32>, String, String) {
    let mut command = dispatcher_command();
    if old_dispatcher {
        command.args(["--protocol", "v1"]);
    }
    command.args(["submit", "--target", agent_id, "--", script]);
    let out = tokio::time::timeout(Duration::from_secs(60), command.output()).await.unwrap().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn cell(old_dispatcher: bool, agent_protocol: Protocol) {
    let name = format!("matrix-{}-{:?}", if old_dispatcher { "old" } else { "new" }, agent_protocol).to_lowercase();
    let agent = agent(&name, agent_protocol).await;
    let markers = Markers::new();
    let script = format!("{}; echo out; echo err >&2; exit 7", markers.record("run"));
    let (code, stdout, stderr) = submit(old_dispatcher, agent.id(), &script).await;
    assert_eq!(code, Some(7), "{stderr}");
    assert_eq!(stdout, "out\n");
    assert!(stderr.contains("err"), "{stderr}");
    assert_eq!(markers.count("run"), 1, "exactly once");
    let legacy_notice = stderr.contains("legacy agent") && stderr.contains("retries are off");
    let expect_notice = !old_dispatcher && agent_protocol == Protocol::V1;
    assert_eq!(legacy_notice, expect_notice, "the user is told about retries only for a legacy agent: {stderr}");
    let unsigned_warning = format!("warning: believing unsigned answers from agent {}", agent.id());
    assert_eq!(stderr.contains(&unsigned_warning), agent_protocol == Protocol::V1, "{stderr}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_dispatcher_with_new_agent() {
    cell(false, Protocol::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_dispatcher_with_legacy_agent() {
    cell(false, Protocol::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dispatcher_with_new_agent() {
    cell(true, Protocol::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dispatcher_with_legacy_agent() {
    cell(true, Protocol::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_health_show_legacy_and_current_agents() {
    let (old, new) = (agent("health-old", Protocol::V1).await, agent("health-new", Protocol::V2).await);
    let out = dispatcher_command().args(["health", old.id(), new.id()]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(old.id())
            && lines[0].contains("protocol v1 (legacy agent)")
            && lines[0].contains("retries off"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(new.id()) && lines[1].contains("protocol v2") && lines[1].contains("retries on"),
        "{stdout}"
    );
    old.stop().await;
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_agents_lost_start_reply_is_not_retried_and_the_script_ran_at_most_once() {
    let agent = agent("legacy-lost", Protocol::V1).await;
    let link = FaultProxy::start(tests::proxy::broker_addr()).await;
    let rpc = RpcClient::new(tests::rpc_config(
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", link.addr().port()),
        Duration::from_secs(2),
    ));
    let orchestrator =
        Orchestrator::new(Arc::new(rpc), Timing { attempt_timeout: Duration::from_secs(3), ..Timing::default() });
    let policy = dispatcher::RetryPolicy::new(Duration::from_secs(30));
    // Negotiate first (legacy), then lose whatever comes back for the start.
    let kind = orchestrator.agent_kind(&agent.route(), policy, &|_| {}).await.unwrap();
    assert_eq!(kind, dispatcher::negotiate::AgentKind::Legacy);
    let markers = Markers::new();
    link.drop_next_and_reset(Direction::Downstream);
    let notices = std::sync::Mutex::new(Vec::new());
    let events = |e| {
        if let dispatcher::Event::Notice(n) = e {
            notices.lock().unwrap().push(n);
        }
    };
    let spec = sh(format!("{}; echo ran", markers.record("run")));
    let outcome = orchestrator.submit(&agent.route(), spec, policy, &events, &Default::default()).await;
    assert!(link.resets() >= 1);
    assert_eq!(outcome.outcome, OutcomeKind::Unknown, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.contains("not retried") && error.contains("could run the script twice"), "{error}");
    assert!(notices.into_inner().unwrap().iter().any(|n| n.contains("retries are off")));
    // The start reached the broker, so the agent runs it: once, never again.
    eventually("the script to run", Duration::from_secs(10), || async { (markers.count("run") == 1).then_some(()) })
        .await;
    eventually("the agent to be idle", Duration::from_secs(10), || async {
        (agent.agent.running() == 0).then_some(())
    })
    .await;
    assert!(markers.count("run") <= 1);
    agent.stop().await;
}
