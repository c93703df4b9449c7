//! Restarts of the broker, the ticket store and the agent in the middle of runs: nothing runs
//! twice, and every submission ends with a correct, explained outcome. The broker and Redis
//! restarted here are private instances, so tests beside these are not disturbed.

use contracts::submission::outcome::OutcomeKind;
use contracts::submission::retry::{RetryPolicy, Timing};
use contracts::time::unix_millis;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::{CancelScriptV2, StartScriptV2};
use contracts::wire::status::LogStream;
use contracts::wire::{exit_code, topology};
use dispatcher::orchestrator::Orchestrator;
use dispatcher::rpc::RpcClient;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::services::{PrivateRabbit, PrivateRedis};
use tests::*;

fn orchestrator_at(amqp_url: String) -> Orchestrator {
    let rpc = RpcClient::new(tests::rpc_config(amqp_url, Duration::from_secs(2)));
    Orchestrator::new(Arc::new(rpc), Timing { attempt_timeout: Duration::from_secs(3), ..Timing::default() })
}

/// Submits in the background, collecting the lines.
fn submit_in_background(
    orchestrator: &Orchestrator,
    route: dispatcher::route::Route,
    script: String,
) -> tokio::task::JoinHandle<(contracts::submission::outcome::Outcome, Vec<String>)> {
    let orchestrator = orchestrator.clone();
    tokio::spawn(async move {
        let lines = Mutex::new(Vec::new());
        let events = |e| {
            if let dispatcher::orchestrator::Event::Log(l) = e {
                lines.lock().unwrap().push(l.text);
            }
        };
        let policy = RetryPolicy::new(Duration::from_secs(90));
        let outcome = orchestrator.submit(&route, sh(script), policy, &events, &Default::default()).await;
        (outcome, lines.into_inner().unwrap())
    })
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("line {i}")).collect()
}

fn counting_script(markers: &Markers, lines: usize, pause: f32) -> String {
    format!("{}; for i in $(seq 1 {lines}); do echo line $i; sleep {pause}; done", markers.record("run"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_loses_no_output_and_runs_nothing_twice() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = PrivateRedis::start(true).await;
    let mut config = tests::agent::test_config("redis-restart");
    config.redis_url = redis.url();
    config.lease_ttl = Duration::from_secs(10);
    let agent = TestAgent::start_with(config).await;
    let orchestrator = orchestrator_at(amqp_url());
    let markers = Markers::new();
    let submission = submit_in_background(&orchestrator, agent.route(), counting_script(&markers, 30, 0.1));
    eventually("the script to run", Duration::from_secs(10), || async { (agent.agent.running() == 1).then_some(()) })
        .await;
    redis.stop().await;
    // While Redis is down, nothing can be claimed: a new start is refused as transient.
    let caps = orchestrator.capabilities(&agent.route(), RetryPolicy::new(Duration::from_secs(10)), &|_| {}).await;
    assert!(caps.is_ok(), "the agent keeps serving what needs no store");
    redis.start_again().await;
    let (outcome, lines) = submission.await.unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(lines, numbered(30), "output buffered during the outage arrives, in order");
    assert_eq!(markers.count("run"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_while_redis_is_down_is_retried_and_runs_once_it_is_back() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = PrivateRedis::start(true).await;
    let mut config = tests::agent::test_config("redis-down");
    config.redis_url = redis.url();
    let agent = TestAgent::start_with(config).await;
    let orchestrator = orchestrator_at(amqp_url());
    let markers = Markers::new();
    redis.stop().await;
    let retries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let submission = {
        let (orchestrator, route, retries, script) =
            (orchestrator.clone(), agent.route(), retries.clone(), format!("{}; echo ran", markers.record("run")));
        tokio::spawn(async move {
            let events = |e| {
                if let dispatcher::orchestrator::Event::Retry { notice, .. } = e {
                    assert_eq!(notice.error.agent_error(), Some(ErrorKind::StoreUnavailable));
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            };
            orchestrator
                .submit(&route, sh(script), RetryPolicy::new(Duration::from_secs(60)), &events, &Default::default())
                .await
        })
    };
    eventually("a StoreUnavailable retry", Duration::from_secs(20), || async {
        (retries.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert_eq!(markers.count("run"), 0, "nothing runs without a claim");
    redis.start_again().await;
    let outcome = submission.await.unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(markers.count("run"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_run_loses_no_output_and_runs_nothing_twice() {
    tests::skip_unless!(tests::needs::private_rabbit());
    let rabbit = PrivateRabbit::start().await;
    let mut config = tests::agent::test_config("rabbit-restart");
    config.amqp_url = rabbit.amqp_url();
    let agent = TestAgent::start_with(config).await;
    let orchestrator = orchestrator_at(rabbit.amqp_url());
    let markers = Markers::new();
    let submission = submit_in_background(&orchestrator, agent.route(), counting_script(&markers, 40, 0.25));
    eventually("the script to run", Duration::from_secs(10), || async { (agent.agent.running() == 1).then_some(()) })
        .await;
    rabbit.restart().await;
    let (outcome, lines) = submission.await.unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(lines, numbered(40));
    assert_eq!(markers.count("run"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_and_restarted_mid_run_ends_unknown_and_its_queued_work_runs_once() {
    let mut agent = AgentProcess::start(tests::agent::test_config("agent-restart")).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let orchestrator = orchestrator_at(amqp_url());
    let markers = Markers::new();
    let running = submit_in_background(&orchestrator, route.clone(), counting_script(&markers, 100, 0.1));
    eventually("the first script's output", Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(markers.dir.join("run")).ok()?;
        (!log.is_empty()).then_some(())
    })
    .await;
    agent.kill().await;
    // Submitted while the agent is down: it waits in the queue and runs once the agent is back.
    let queued_markers = Markers::new();
    let queued =
        submit_in_background(&orchestrator, route.clone(), format!("{}; echo queued", queued_markers.record("run")));
    let queue = contracts::wire::topology::agent_queue(&agent.config.agent_id);
    eventually("the start to wait in the queue", Duration::from_secs(10), || {
        let queue = queue.clone();
        async move { (tests::raw::queue_depth(&queue).await >= 1).then_some(()) }
    })
    .await;
    agent.restart().await;
    let (outcome, _) = running.await.unwrap();
    assert_eq!(outcome.outcome, OutcomeKind::Unknown, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(exit_code::UNKNOWN_RESULT));
    assert!(outcome.error.unwrap().contains("lost"));
    let (outcome, lines) = queued.await.unwrap();
    assert_eq!((outcome.exit_code, lines), (Some(0), vec!["queued".to_string()]));
    assert_eq!(markers.count("run"), 1);
    assert_eq!(queued_markers.count("run"), 1);
    agent.stop().await;
}

/// When the ticket store under `prefix` says its data began (its epoch), by the clock of the
/// agent that made it.
async fn epoch_began(redis_url: &str, prefix: &str) -> u64 {
    let mut con = redis::Client::open(redis_url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let epoch: String = redis::cmd("GET").arg(format!("{prefix}epoch")).query_async(&mut con).await.unwrap();
    contracts::store::Epoch::parse(epoch).created_ms
}

/// A new ticket store is served only once the clock-skew allowance has passed since its data
/// began: a start first issued before then could be older than the data, and would be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_is_served_once_the_clock_skew_allowance_has_passed() {
    let mut config = tests::agent::test_config("young-store");
    config.key_prefix = format!("{}:", tests::unique("young-store"));
    let agent = TestAgent::start_with(config).await;
    let ready_at = unix_millis(std::time::SystemTime::now());
    let began = epoch_began(&agent.config.redis_url, &agent.config.key_prefix).await;
    assert!(
        ready_at >= began + topology::CLOCK_SKEW_ALLOWANCE_MS,
        "ready {} ms after the store's data began",
        ready_at.saturating_sub(began)
    );
    let orchestrator = orchestrator_at(amqp_url());
    let (outcome, lines) = submit(&orchestrator, &agent.route(), sh("echo first")).await;
    assert_eq!((outcome.exit_code, texts(&lines, LogStream::Stdout)), (Some(0), vec!["first".to_string()]));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_comes_back_empty_starts_issued_before_are_refused_not_rerun() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = PrivateRedis::start(false).await;
    let mut config = tests::agent::test_config("redis-empty");
    config.redis_url = redis.url();
    let agent = TestAgent::start_with(config).await;
    let orchestrator = orchestrator_at(amqp_url());
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let first_issued_at = unix_millis(std::time::SystemTime::now());
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(format!("{}; echo ran", markers.record("run"))),
        wait_for_output: Some(2000),
        first_issued_at: Some(first_issued_at),
    });
    let policy = RetryPolicy::new(Duration::from_secs(20));
    let Reply::ScriptStatus(status) =
        orchestrator.request(&agent.route(), &start, policy, Duration::from_secs(2), None, &|_| {}).await.unwrap()
    else {
        panic!("expected a status")
    };
    assert!(status.is_complete(), "{status:?}");
    redis.stop().await;
    redis.start_again().await; // without its data
                               // A late copy of the same start: the store forgot the ticket, so running it could be a
                               // second run. It is refused, permanently.
    let asked = std::time::Instant::now();
    let refused =
        orchestrator.request(&agent.route(), &start, policy, Duration::from_secs(2), None, &|_| {}).await.unwrap_err();
    assert_eq!(refused.error.agent_error(), Some(ErrorKind::StoreReset), "{refused}");
    assert!(asked.elapsed() < Duration::from_secs(10), "the refusal is permanent: retries stop at it");
    assert_eq!(markers.count("run"), 1);
    // A Ctrl-C for that start, as if its answer had never come: the store no longer knows the
    // ticket and its data began after the start was first issued, so the agent says whether it
    // ran is unknown, not "unknown ticket" (which the dispatcher would report as "nothing ran").
    let cancel = Request::CancelScriptV2(CancelScriptV2 {
        ticket: ticket.clone(),
        last_log_sequence: 0,
        first_issued_at: Some(first_issued_at),
    });
    let unknown =
        orchestrator.request(&agent.route(), &cancel, policy, Duration::from_secs(2), None, &|_| {}).await.unwrap_err();
    assert_eq!(unknown.error.agent_error(), Some(ErrorKind::StoreReset), "{unknown}");
    assert!(unknown.to_string().contains("whether the script ran is unknown"), "{unknown}");
    // New work is accepted once the clock-skew allowance has passed since the store's data began
    // again: a start first issued before then could be older than the data, and is refused.
    let began = epoch_began(&agent.config.redis_url, &agent.config.key_prefix).await;
    let left = (began + topology::CLOCK_SKEW_ALLOWANCE_MS).saturating_sub(unix_millis(std::time::SystemTime::now()));
    tokio::time::sleep(Duration::from_millis(left)).await;
    let (outcome, lines) = submit(&orchestrator, &agent.route(), sh("echo fresh")).await;
    assert_eq!((outcome.exit_code, texts(&lines, LogStream::Stdout)), (Some(0), vec!["fresh".to_string()]));
    agent.stop().await;
}
