//! Edge agents with `--store local`: the same exactly-once rules without Redis, and a claim that
//! survives `kill -9` at every step of a ticket's life.

use contracts::submission::retry::RetryPolicy;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::exit_code;
use contracts::wire::messages::{CompleteScriptV2, StartScriptV2};
use contracts::wire::status::{LogStream, ScriptState, ScriptStatus};
use contracts::wire::ticket::Ticket;
use dispatcher::rpc::CallTiming;
use std::time::{Duration, SystemTime};
use tests::*;
use worker_agent::config::{AgentConfig, StoreKind};

fn edge_config(what: &str) -> AgentConfig {
    let mut config = tests::agent::test_config(what);
    config.store = StoreKind::Local;
    // Nothing may need Redis: point it nowhere.
    config.redis_url = "redis://127.0.0.1:1".into();
    config
}

fn timing() -> CallTiming {
    CallTiming { reply_timeout: Duration::from_secs(20), not_after: SystemTime::now() + Duration::from_secs(60) }
}

fn start(ticket: &Ticket, script: String) -> Request {
    Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(script),
        wait_for_output: Some(2000),
        first_issued_at: None,
    })
}

async fn status_of(
    orchestrator: &dispatcher::orchestrator::Orchestrator,
    route: &dispatcher::route::Route,
    request: &Request,
) -> ScriptStatus {
    let reply = orchestrator.request(
        route,
        request,
        RetryPolicy::new(Duration::from_secs(30)),
        Duration::from_secs(2),
        None,
        &|_| {},
    );
    match reply.await.expect("answered") {
        Reply::ScriptStatus(status) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_run_once_without_redis() {
    let agent = TestAgent::start_with(edge_config("edge-dups")).await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let request = start(&ticket, format!("{}; sleep 0.3; echo once", markers.record("run")));
    let route = agent.route();
    let replies =
        futures_util::future::join_all((0..200).map(|_| orchestrator.rpc().call(&route, &request, timing()))).await;
    assert!(replies.iter().all(|r| matches!(r, Ok(Reply::ScriptStatus(s)) if s.ticket == ticket)));
    let (outcome, lines) = submit(&orchestrator, &route, sh("echo second script")).await;
    assert_eq!((outcome.exit_code, texts(&lines, LogStream::Stdout)), (Some(0), vec!["second script".to_string()]));
    eventually("the first to end", Duration::from_secs(10), || async { (agent.agent.running() == 0).then_some(()) })
        .await;
    assert_eq!(markers.count("run"), 1);
    agent.stop().await;
}

/// Kills the agent with SIGKILL at `step` of a ticket's life, restarts it, sends the same start
/// again, and checks it never runs twice and reports what it knows.
async fn killed_at(step: &str) {
    let mut agent = AgentProcess::start(edge_config(&format!("edge-kill-{step}"))).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let script = format!(
        "{}; echo started; sleep {}; echo finished",
        markers.record("run"),
        if step == "running" { 3 } else { 0 }
    );
    let request = start(&ticket, script);
    match step {
        "queued" => {
            agent.kill().await;
            // Published while the agent is down: it waits in the queue.
            orchestrator.rpc().send(&route, &request, SystemTime::now() + Duration::from_secs(60)).await.unwrap();
        }
        "running" => {
            assert_eq!(status_of(&orchestrator, &route, &request).await.state, ScriptState::Running);
            agent.kill().await;
        }
        "ended" | "completed" => {
            // A start's reply may come before the end is stored (its wait ends at the first output).
            eventually("the script to end", Duration::from_secs(20), || {
                let (orchestrator, route, request) = (&orchestrator, &route, &request);
                async move { status_of(orchestrator, route, request).await.is_complete().then_some(()) }
            })
            .await;
            if step == "completed" {
                let complete = Request::CompleteScriptV2(CompleteScriptV2::new(ticket.clone()));
                status_of(&orchestrator, &route, &complete).await;
            }
            agent.kill().await;
        }
        _ => unreachable!(),
    }
    agent.restart().await;
    let status = eventually("the ticket's end", Duration::from_secs(20), || {
        let (orchestrator, route, request) = (&orchestrator, &route, &request);
        async move {
            let status = status_of(orchestrator, route, request).await;
            status.is_complete().then_some(status)
        }
    })
    .await;
    let expected = if step == "running" { exit_code::UNKNOWN_RESULT } else { 0 };
    assert_eq!(status.exit_code, Some(expected), "after a kill while {step}: {status:?}");
    if step == "ended" || step == "queued" {
        let texts: Vec<_> = status.logs.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["started", "finished"], "the output survived the kill");
    }
    assert_eq!(markers.count("run"), 1, "never run twice (killed while {step})");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_the_start_still_queued() {
    killed_at("queued").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_run() {
    killed_at("running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_script_ended() {
    killed_at("ended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_complete() {
    killed_at("completed").await;
}

/// The tickets with a record in the local store's file (opened after the agent stopped: redb
/// allows one process at a time; opening it this way removes nothing).
fn records_in(file: &std::path::Path) -> Vec<String> {
    use redb::{ReadableDatabase, ReadableTable};
    const RECORDS: redb::TableDefinition<&str, (&str, u64)> = redb::TableDefinition::new("records");
    let db = redb::Database::open(file).expect("the local store's file");
    let txn = db.begin_read().unwrap();
    let records = txn.open_table(RECORDS).unwrap();
    records.iter().unwrap().map(|entry| entry.unwrap().0.value().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_leave_the_file_while_the_agent_runs_every_janitor_interval() {
    // Script v1 tombstones live --tombstone-ttl (v2 ones until their command's deadline).
    let mut config = tests::agent::legacy_config("edge-prune");
    config.store = StoreKind::Local;
    config.redis_url = "redis://127.0.0.1:1".into();
    let mut command = AgentProcess::command(&config);
    command.args(["--tombstone-ttl", "1s", "--janitor-interval", "1s"]);
    let mut agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let submit = |word: &str| {
        let script = format!("echo {word}");
        let args = ["--protocol", "v1", "submit", "--target", &config.agent_id, "--", &script].map(String::from);
        async move {
            let out = dispatcher_command().args(args).output().await.unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stderr)
        }
    };
    let stderr = submit("first").await;
    let first = stderr.split("ticket ").nth(1).and_then(|t| t.split_whitespace().next()).expect("a ticket");
    let first = first.to_ascii_lowercase();
    // Every later claim may prune; the first tombstone expires first, so once anything was
    // removed, it was.
    eventually("expired records to be removed while running", Duration::from_secs(30), || async {
        submit("later").await;
        agent.log_text().contains("removed expired tickets from the local store").then_some(())
    })
    .await;
    agent.kill().await;
    let records = records_in(&config.work_dir.join(worker_agent::LOCAL_STORE_FILE));
    assert!(!records.is_empty(), "the store holds the later tickets");
    assert!(records.iter().all(|r| !r.contains(&first)), "{first} still in the file: {records:?}");
    agent.stop().await;
}
