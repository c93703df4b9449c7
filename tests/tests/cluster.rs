//! A three-node RabbitMQ cluster on this machine: an agent and dispatchers given every node's URL
//! keep running a batch of scripts while the node they use is stopped, killed, or while every
//! node is restarted in turn. Each script completes, each exactly once. Each test prints one row
//! of the failure table in docs/performance.md ("Failover") (`--no-capture` shows it).

use contracts::submission::retry::{RetryPolicy, Timing};
use dispatcher::orchestrator::Orchestrator;
use dispatcher::rpc::RpcClient;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::cluster::RabbitCluster;
use tests::*;

/// Scripts in a batch.
const BATCH: usize = 8;

fn orchestrator_at(amqp_urls: String) -> Orchestrator {
    let rpc = RpcClient::new(tests::rpc_config(amqp_urls, Duration::from_secs(2)));
    Orchestrator::new(Arc::new(rpc), Timing { attempt_timeout: Duration::from_secs(3), ..Timing::default() })
}

/// One submission's result: exit code, lines, and the longest gap between two lines arriving,
/// with what else happened (retries, notices, the outcome) to explain a failure.
struct Finished {
    exit_code: Option<i32>,
    lines: usize,
    longest_gap: Duration,
    story: String,
}

fn script(markers: &Markers, name: &str, lines: usize) -> String {
    format!("{}; for i in $(seq 1 {lines}); do echo line $i; sleep 0.2; done", markers.record(name))
}

fn submit_in_background(
    orchestrator: &Orchestrator,
    route: dispatcher::route::Route,
    script: String,
) -> tokio::task::JoinHandle<Finished> {
    let orchestrator = orchestrator.clone();
    tokio::spawn(async move {
        let begun = Instant::now();
        let arrivals = Mutex::new(Vec::new());
        let story = Mutex::new(String::new());
        let events = |e| match e {
            dispatcher::orchestrator::Event::Log(_) => arrivals.lock().unwrap().push(Instant::now()),
            other => story.lock().unwrap().push_str(&format!("{:.1}s {other:?}\n", begun.elapsed().as_secs_f64())),
        };
        let policy = RetryPolicy::new(Duration::from_secs(120));
        let outcome = orchestrator.submit(&route, sh(script), policy, &events, &Default::default()).await;
        let arrivals = arrivals.into_inner().unwrap();
        let longest_gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        let mut story = story.into_inner().unwrap();
        story.push_str(&format!("{:.1}s {outcome:?}", begun.elapsed().as_secs_f64()));
        Finished { exit_code: outcome.exit_code, lines: arrivals.len(), longest_gap, story }
    })
}

/// Runs a batch through the cluster, applying `fault` once every script is running, and checks
/// that every script completed with all its output, each exactly once.
/// Each script runs `script_seconds` (a line every 0.2 s): long enough to span the fault.
async fn batch_through<F, Fut>(what: &str, script_seconds: f32, fault: F)
where
    F: FnOnce(Arc<RabbitCluster>, usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tests::skip_unless!(tests::needs::private_rabbit());
    let cluster = Arc::new(RabbitCluster::start().await);
    let mut config = tests::agent::test_config("cluster");
    config.amqp_url = cluster.amqp_urls();
    // The real binary, given every node's URL through CUTTLE_AMQP_URL.
    let agent = AgentProcess::start(config).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let queue = contracts::wire::topology::agent_queue(&agent.config.agent_id);
    assert_eq!(cluster.queue_members(&queue).len(), 3, "the agent's quorum queue has a replica on every node");
    // Two dispatchers, each starting at a random node of the list.
    let dispatchers = [orchestrator_at(cluster.amqp_urls()), orchestrator_at(cluster.amqp_urls())];
    let markers = Markers::new();
    let lines = (script_seconds / 0.2) as usize;
    let submissions: Vec<_> = (0..BATCH)
        .map(|i| submit_in_background(&dispatchers[i % 2], route.clone(), script(&markers, &format!("s{i}"), lines)))
        .collect();
    eventually("every script of the batch to run", Duration::from_secs(30), || async {
        ((0..BATCH).all(|i| markers.count(&format!("s{i}")) == 1)).then_some(())
    })
    .await;
    let in_use = eventually("the agent's connection to show on a node", Duration::from_secs(10), || async {
        cluster.node_of(&format!("cuttle-agent {}", agent.config.agent_id))
    })
    .await;
    let started = Instant::now();
    fault(cluster.clone(), in_use).await;
    let mut longest_gap = Duration::ZERO;
    let mut completed = 0;
    for submission in submissions {
        let finished = submission.await.unwrap();
        let log = agent.log_text();
        let log_tail = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        assert_eq!(finished.exit_code, Some(0), "{}\nagent log, last lines:\n{log_tail}", finished.story);
        assert_eq!(finished.lines, lines, "every line arrives once\n{}", finished.story);
        longest_gap = longest_gap.max(finished.longest_gap);
        completed += 1;
    }
    let twice = (0..BATCH).filter(|i| markers.count(&format!("s{i}")) != 1).count();
    assert_eq!(twice, 0, "no script ran twice (or not at all)");
    eprintln!(
        "FAILURE-TABLE | {what} | scripts run {BATCH} | completed {completed} | run twice {twice} | longest pause {:.1} s | fault and recovery took {:.1} s",
        longest_gap.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_in_use_stopped_mid_batch_loses_no_script_and_runs_none_twice() {
    batch_through("RabbitMQ node in use stopped (stop_app)", 6.0, |cluster, in_use| async move {
        cluster.nodes[in_use].stop_app().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_in_use_killed_mid_batch_loses_no_script_and_runs_none_twice() {
    batch_through("RabbitMQ node in use killed (SIGKILL)", 6.0, |cluster, in_use| async move {
        cluster.nodes[in_use].kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_mid_batch_loses_no_script_and_runs_none_twice() {
    batch_through("rolling restart of all three RabbitMQ nodes", 30.0, |cluster, _| async move {
        for node in &cluster.nodes {
            node.restart().await;
        }
    })
    .await;
}

/// The shared broker, listed after a node that is down: both binaries find the one that answers,
/// wherever in the list they start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_take_a_list_of_urls_and_use_a_node_that_answers() {
    let down = format!("amqp://guest:guest@127.0.0.1:{}/%2f", tests::services::free_port());
    let list = format!("{down}, {}", amqp_url());
    let mut config = tests::agent::test_config("url-list");
    config.amqp_url = list.clone();
    let agent = AgentProcess::start(config).await;
    for _ in 0..3 {
        let out = dispatcher_command()
            .args(["submit", "--target", &agent.config.agent_id, "--amqp-url", &list, "--", "echo via the list"])
            .env_remove("CUTTLE_AMQP_URL")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "via the list\n");
    }
    let out = dispatcher_command()
        .args(["capabilities", &agent.config.agent_id])
        .env("CUTTLE_AMQP_URL", format!("{},,{down}", amqp_url()))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a list with an empty entry is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty entry"));
    agent.stop().await;
}
