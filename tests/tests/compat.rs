//! Old and new together: {old dispatcher, new dispatcher} × {legacy agent, new agent}, driven
//! through the real binaries and broker, running a script and stopping one (Ctrl-C, `cancel`);
//! a legacy agent's lost start reply is never retried, and a lost status reply leaves the script
//! running on either kind of agent. A legacy agent cannot sign: it runs with
//! `--insecure-allow-unsigned` and is pinned `legacy`.

use contracts::submission::outcome::OutcomeKind;
use contracts::submission::retry::Timing;
use dispatcher::orchestrator::Orchestrator;
use dispatcher::rpc::RpcClient;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tests::proxy::{Direction, FaultProxy};
use tests::*;
use worker_agent::config::Protocol;

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
    let unsigned_warning = format!("warning: believing unsigned answers and announcements from agent {}", agent.id());
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

/// A script that writes its process id to `pid`, then would write `done` after 30 s.
fn long_script(markers: &Markers) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (pid, done) = (markers.dir.join("pid"), markers.dir.join("done"));
    let script = format!("echo $$ > '{}'; echo started; sleep 30; touch '{}'", pid.display(), done.display());
    (script, pid, done)
}

/// `dispatcher [--protocol v1] submit` of `script`, its output piped.
fn spawn_submit(old_dispatcher: bool, agent_id: &str, script: &str, json: bool) -> tokio::process::Child {
    let mut command = dispatcher_command();
    if old_dispatcher {
        command.args(["--protocol", "v1"]);
    }
    command.arg("submit").args(json.then_some("--json")).args(["--target", agent_id, "--", script]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("dispatcher runs")
}

/// Ctrl-C (SIGINT to the dispatcher) while the script runs: the script's process is stopped, it
/// never reaches its end, and the dispatcher exits cancelled (106).
async fn ctrl_c_cell(old_dispatcher: bool, agent_protocol: Protocol) {
    let name = format!("ctrlc-{}-{:?}", if old_dispatcher { "old" } else { "new" }, agent_protocol).to_lowercase();
    let agent = agent(&name, agent_protocol).await;
    let markers = Markers::new();
    let (script, pid_file, done) = long_script(&markers);
    let child = spawn_submit(old_dispatcher, agent.id(), &script, false);
    let pid = script_pid(&pid_file).await;
    sigint(&child);
    let (code, stderr) = ended(child, Duration::from_secs(20)).await;
    assert_eq!(code, Some(106), "{stderr}");
    assert!(stderr.contains("cancelling ticket"), "{stderr}");
    assert!(process_gone(pid), "the script's process {pid} was stopped");
    assert!(!done.exists(), "the script never reached its end");
    assert_eq!(agent.agent.running(), 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_legacy_agents_script_from_an_old_dispatcher() {
    ctrl_c_cell(true, Protocol::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_legacy_agents_script_from_a_new_dispatcher() {
    ctrl_c_cell(false, Protocol::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_new_agents_script_from_an_old_dispatcher() {
    ctrl_c_cell(true, Protocol::V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_protocol_v1_cancel_stops_a_legacy_agents_script() {
    use tokio::io::AsyncBufReadExt;
    let agent = agent("v1-cancel", Protocol::V1).await;
    let markers = Markers::new();
    let (script, pid_file, done) = long_script(&markers);
    let mut submit = spawn_submit(true, agent.id(), &script, true);
    let mut stdout = tokio::io::BufReader::new(submit.stdout.take().expect("piped")).lines();
    let ticket = loop {
        let line = stdout.next_line().await.unwrap().expect("the ticket event");
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
        if event["event"] == "ticket" {
            break event["ticket"].as_str().expect("a ticket").to_owned();
        }
    };
    let pid = script_pid(&pid_file).await;
    let out = run_dispatcher(&["--protocol", "v1", "cancel", &ticket, "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(106), "{}", text(&out.stderr));
    assert!(process_gone(pid), "the script's process {pid} was stopped");
    let (code, stderr) = ended(submit, Duration::from_secs(20)).await;
    assert_eq!(code, Some(106), "the submission sees its script cancelled: {stderr}");
    assert!(!done.exists(), "the script never reached its end");
    // The ticket reads as cancelled afterwards, through script v1 too.
    let out = run_dispatcher(&["--protocol", "v1", "status", &ticket, "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(106), "{}", text(&out.stderr));
    agent.stop().await;
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
    let policy = contracts::submission::retry::RetryPolicy::new(Duration::from_secs(30));
    // Negotiate first (legacy), then lose whatever comes back for the start.
    let kind = orchestrator.agent_kind(&agent.route(), policy, &|_| {}).await.unwrap();
    assert_eq!(kind, contracts::submission::negotiate::AgentKind::Legacy);
    let markers = Markers::new();
    link.drop_next_and_reset(Direction::Downstream);
    let notices = std::sync::Mutex::new(Vec::new());
    let events = |e| {
        if let dispatcher::orchestrator::Event::Notice(n) = e {
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

/// The reply to a status request is lost with the link while a script runs, and status is not
/// repeated (script v1 never repeats it; script v2 under `--no-retries`): `submit` ends with its
/// outcome unknown (105) and leaves the script running, as Octopus Tentacle does, instead of
/// cancelling it unasked; it says so and how to follow it, and `status --follow` then follows it
/// to its own end.
async fn lost_status_reply_cell(agent_protocol: Protocol) {
    use tokio::io::AsyncBufReadExt;
    let agent = agent(&format!("lost-status-{agent_protocol:?}").to_lowercase(), agent_protocol).await;
    let link = FaultProxy::start(tests::proxy::broker_addr()).await;
    let markers = Markers::new();
    let (pid_file, go) = (markers.dir.join("pid"), markers.dir.join("go"));
    let script = format!(
        "echo $$ > '{}'; echo started; while [ ! -e '{}' ]; do sleep 0.1; done; echo finished; exit 7",
        pid_file.display(),
        go.display()
    );
    let mut submit = dispatcher_command()
        .env("CUTTLE_AMQP_URL", link.amqp_url())
        .args(["submit", "--no-retries", "--target", agent.id(), "--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dispatcher runs");
    let mut stdout = tokio::io::BufReader::new(submit.stdout.take().expect("piped")).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await.expect("output in time");
    assert_eq!(first.unwrap().as_deref(), Some("started"));
    let pid = script_pid(&pid_file).await;
    // The next chunk from the broker to the dispatcher: the answer to the status request in
    // flight (v1 asks every 250 ms; v2's waits on the agent, so a heartbeat or its reply).
    link.drop_next_and_reset(Direction::Downstream);
    let (code, stderr) = ended(submit, Duration::from_secs(30)).await;
    assert!(link.resets() >= 1, "the reply was lost: {stderr}");
    assert_eq!(code, Some(105), "{stderr}");
    assert!(stderr.contains("it was not cancelled and may still be running"), "{stderr}");
    assert!(!stderr.contains("cancelling ticket") && !stderr.contains("a cancel was sent"), "{stderr}");
    let ticket = stderr.split("cuttle: ticket ").nth(1).expect("the ticket").split_whitespace().next().unwrap();
    let protocol: &[&str] = match agent_protocol {
        Protocol::V1 => &["--protocol", "v1"],
        Protocol::V2 => &[],
    };
    let hint = format!("status {ticket} --target {} --follow", agent.id());
    assert!(stderr.contains(&hint), "how to follow it: {stderr}");
    assert_eq!(stderr.contains("dispatcher --protocol v1 status"), agent_protocol == Protocol::V1, "{stderr}");
    assert!(!process_gone(pid), "the script's process {pid} goes on");
    // Picked up from another command, it runs to its own end.
    std::fs::write(&go, "").unwrap();
    let args = [protocol, &["status", ticket, "--target", agent.id(), "--follow"]].concat();
    let out = run_dispatcher(&args).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "started\nfinished\n");
    eventually("the agent to be idle", Duration::from_secs(10), || async {
        (agent.agent.running() == 0).then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_status_reply_leaves_a_legacy_agents_script_running() {
    lost_status_reply_cell(Protocol::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_status_reply_leaves_a_current_agents_script_running() {
    lost_status_reply_cell(Protocol::V2).await;
}
