//! A replicated ticket store: a Redis master, a replica and three Sentinels of the test's own.
//! The agent follows the master through a failover, and `--claim-replicas` keeps a failover
//! from running a script twice: replication is asynchronous, so a claim the master had not yet
//! passed on is lost with it. Replication goes through a proxy the test can hold, so "not yet
//! passed on" is certain rather than a matter of timing. Tests print docs/performance.md's failure-table
//! rows (`--no-capture` shows them).

use contracts::submission::retry::{RetryPolicy, Timing};
use contracts::time::unix_millis;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::exit_code;
use contracts::wire::messages::{CancelScriptV2, StartScriptV2};
use contracts::wire::status::ScriptState;
use dispatcher::orchestrator::Orchestrator;
use dispatcher::retry::GaveUp;
use dispatcher::rpc::RpcClient;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tests::cluster::{redis_cli, ReplicatedRedis};
use tests::*;

/// Starts sent in each test.
const SCRIPTS: usize = 4;

fn orchestrator() -> Orchestrator {
    let rpc = RpcClient::new(tests::rpc_config(amqp_url(), Duration::from_secs(2)));
    Orchestrator::new(Arc::new(rpc), Timing { attempt_timeout: Duration::from_secs(4), ..Timing::default() })
}

/// The real agent binary on the replicated store, with `--claim-replicas replicas`.
async fn agent_on(redis: &ReplicatedRedis, replicas: u32, sentinels: bool) -> AgentProcess {
    let mut config = tests::agent::test_config("failover");
    if sentinels {
        config.redis_sentinels = redis.sentinels().split(',').map(str::to_owned).collect();
        config.redis_service = redis.service.clone();
    } else {
        config.redis_url = redis.master.url();
    }
    config.claim_replicas = replicas;
    AgentProcess::start(config).await
}

fn starts(markers: &Markers) -> Vec<Request> {
    let issued = unix_millis(SystemTime::now());
    (0..SCRIPTS)
        .map(|i| {
            Request::StartScriptV2(StartScriptV2 {
                ticket: edge::entropy::ticket(),
                spec: sh(format!("{}; echo ran", markers.record(&format!("s{i}")))),
                wait_for_output: Some(2_000),
                first_issued_at: Some(issued),
            })
        })
        .collect()
}

/// Sends every start (retrying transient errors for `retry`), all at once. Also says which
/// starts were refused as "store unavailable" at least once on the way.
async fn send(
    orchestrator: &Orchestrator,
    route: &dispatcher::route::Route,
    starts: &[Request],
    retry: Duration,
) -> Vec<(Result<Reply, GaveUp>, bool)> {
    let policy = RetryPolicy::new(retry);
    let sends = starts.iter().map(|start| async move {
        let unavailable = AtomicBool::new(false);
        let events = |event| {
            if let dispatcher::orchestrator::Event::Retry { notice, .. } = event {
                if notice.error.agent_error() == Some(ErrorKind::StoreUnavailable) {
                    unavailable.store(true, Ordering::Relaxed);
                }
            }
        };
        let reply = orchestrator.request(route, start, policy, Duration::from_secs(2), None, &events).await;
        (reply, unavailable.into_inner())
    });
    futures_util::future::join_all(sends).await
}

fn runs(markers: &Markers) -> Vec<usize> {
    (0..SCRIPTS).map(|i| markers.count(&format!("s{i}"))).collect()
}

/// Claims made while replication is held back, the master killed right after, a replica
/// promoted by the Sentinels, then the same starts again (a repeat, or a redelivered copy).
/// What a failover right after claims left: how often each script ran, and how many of the
/// claims the promoted replica holds.
struct AfterFailover {
    runs: Vec<usize>,
    /// Scripts that had started whose claim the promoted replica does not hold.
    started_on_lost_claims: usize,
}

/// Prints the failure-table row (the pause is from the kill to the repeated starts being
/// answered).
async fn failover_after_claims(replicas: u32) -> AfterFailover {
    let mut redis = ReplicatedRedis::start(true).await;
    let agent = agent_on(&redis, replicas, true).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let epoch_key = format!("{}epoch", agent.config.key_prefix);
    let epoch = redis_cli(redis.master.port, &["get", &epoch_key]);
    let orchestrator = orchestrator();
    let markers = Markers::new();
    let starts = starts(&markers);
    redis.replication.hold();
    let first = send(&orchestrator, &route, &starts, Duration::from_secs(5)).await;
    if replicas == 0 {
        assert!(first.iter().all(|(reply, _)| reply.is_ok()), "{first:?}");
        eventually("every script to run", Duration::from_secs(10), || async {
            runs(&markers).iter().all(|&n| n == 1).then_some(())
        })
        .await;
    } else {
        for (reply, unavailable) in &first {
            assert!(reply.is_err() && *unavailable, "refused while no replica can confirm the claim: {reply:?}");
        }
        assert_eq!(runs(&markers), vec![0; SCRIPTS], "nothing starts before a replica has its claim");
    }
    let killed = Instant::now();
    redis.kill_master().await;
    eventually("the sentinels to promote the replica", Duration::from_secs(30), || async {
        (redis.master_port_by_sentinels() == Some(redis.replica.port)).then_some(())
    })
    .await;
    let started_on_lost_claims = starts
        .iter()
        .zip(runs(&markers))
        .filter(|(start, ran)| {
            let Request::StartScriptV2(start) = start else { unreachable!("starts are StartScriptV2") };
            let key = format!("{}ticket:{}", agent.config.key_prefix, start.ticket.store_key());
            *ran > 0 && redis_cli(redis.replica.port, &["exists", &key]).trim() != "1"
        })
        .count();
    // The old master comes back as a replica of the new one, so claims can be confirmed again.
    redis.restart_old_master_as_replica().await;
    let again = send(&orchestrator, &route, &starts, Duration::from_secs(30)).await;
    let pause = killed.elapsed();
    for (reply, _) in &again {
        assert!(matches!(reply, Ok(Reply::ScriptStatus(_))), "the repeated start is answered: {reply:?}");
    }
    assert_eq!(redis_cli(redis.replica.port, &["get", &epoch_key]), epoch, "the store epoch survived the failover");
    // Every lost claim's start is taken again; on this agent it then finds the script's
    // workspace left by the first run and refuses it, so each script ran once or twice.
    let expected = 1;
    // Polls until every script ran as often as expected, or the deadline: the caller's assertion
    // then shows how often each one ran, which a bare timeout would hide.
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs(&markers).iter().any(|&n| n < expected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
    let runs = runs(&markers);
    eprintln!(
        "FAILURE-TABLE | Redis master killed right after claims, Sentinel failover (--claim-replicas {replicas}) | scripts run {SCRIPTS} | started on a lost claim {started_on_lost_claims} | run twice {} | longest pause {:.1} s",
        runs.iter().filter(|&&n| n > 1).count(),
        pause.as_secs_f64()
    );
    AfterFailover { runs, started_on_lost_claims }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_claim_replicas_1_a_failover_right_after_claims_runs_no_script_twice() {
    tests::skip_unless!(tests::needs::private_redis());
    let after = failover_after_claims(1).await;
    assert_eq!((after.runs, after.started_on_lost_claims), (vec![1; SCRIPTS], 0));
}

/// What `--claim-replicas 0` (the default) risks: the claims were on the master only and the
/// promoted replica never saw them, so the repeated starts are taken as new. This agent refuses
/// them only because each script's workspace is still there; another worker of a pool, or this
/// one after the workspace went, runs the script a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_claim_replicas_0_a_failover_right_after_claims_loses_every_claim() {
    tests::skip_unless!(tests::needs::private_redis());
    let after = failover_after_claims(0).await;
    assert_eq!(after.started_on_lost_claims, SCRIPTS, "the promoted replica holds none of the started scripts' claims");
    assert!(after.runs.iter().all(|&n| (1..=2).contains(&n)), "{:?}", after.runs);
}

/// A start whose claim no replica confirmed is answered transient and not started; its repeat
/// finds the claim, waits for the replica, and starts the script, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_start_confirms_the_earlier_claim_then_runs_it_once() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = ReplicatedRedis::start(false).await;
    let agent = agent_on(&redis, 1, false).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let orchestrator = orchestrator();
    let markers = Markers::new();
    let starts = starts(&markers);
    redis.replication.hold();
    let first = send(&orchestrator, &route, &starts[..1], Duration::from_secs(5)).await;
    assert!(first[0].0.is_err() && first[0].1, "refused while replication is held: {:?}", first[0]);
    assert_eq!(markers.count("s0"), 0);
    redis.replication.release();
    let again = send(&orchestrator, &route, &starts[..1], Duration::from_secs(10)).await;
    assert!(matches!(again[0].0, Ok(Reply::ScriptStatus(_))), "{again:?}");
    let once_more = send(&orchestrator, &route, &starts[..1], Duration::from_secs(10)).await;
    assert!(matches!(once_more[0].0, Ok(Reply::ScriptStatus(_))), "{once_more:?}");
    eventually("the script to run", Duration::from_secs(10), || async { (markers.count("s0") == 1).then_some(()) })
        .await;
    assert_eq!(markers.count("s0"), 1);
    agent.stop().await;
}

/// A cancel of a ticket whose start has not come leaves a tombstone and answers "unknown
/// ticket", which tells a dispatcher whose start was not answered that nothing ran: said only
/// once a replica holds the tombstone, which a failover could otherwise lose (and the start
/// still queued then run; simulator seeds 11261, 19225). Replication held, the cancel is
/// answered transient; released, its repeat answers unknown ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_answers_unknown_ticket_only_once_a_replica_holds_its_tombstone() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = ReplicatedRedis::start(false).await;
    let agent = agent_on(&redis, 1, false).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let orchestrator = orchestrator();
    let cancel = [Request::CancelScriptV2(CancelScriptV2 {
        ticket: edge::entropy::ticket(),
        last_log_sequence: 0,
        first_issued_at: Some(unix_millis(SystemTime::now())),
    })];
    redis.replication.hold();
    let held = send(&orchestrator, &route, &cancel, Duration::from_secs(5)).await;
    assert!(held[0].0.is_err() && held[0].1, "refused while replication is held: {:?}", held[0]);
    redis.replication.release();
    let again = send(&orchestrator, &route, &cancel, Duration::from_secs(10)).await;
    match &again[0].0 {
        Ok(Reply::ScriptStatus(status)) => {
            assert_eq!((status.state, status.exit_code), (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)))
        }
        other => panic!("expected unknown ticket once replicated: {other:?}"),
    }
    agent.stop().await;
}

/// Bad replicated-store settings stop the agent binary at start, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_bad_sentinel_lists_and_claim_replicas_without_redis() {
    for (args, reason) in [
        (&["--redis-sentinels", "127.0.0.1:26379,,127.0.0.1:26380"][..], "not host:port"),
        (&["--redis-sentinels", "sentinel-without-port"][..], "not host:port"),
        (&["--store", "local", "--claim-replicas", "1"][..], "--claim-replicas needs the Redis store"),
    ] {
        let out = agent_command().args(["run", "--agent-id", &unique("refused")]).args(args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(reason), "{args:?}: {stderr}");
    }
}
