//! Soak: hundreds of scripts, several in flight, while both links to RabbitMQ are reset at
//! random every 0.5–2 s. Counts what ran: every script exactly once, none lost.

use contracts::submission::outcome::OutcomeKind;
use contracts::submission::retry::{RetryPolicy, Timing};
use dispatcher::orchestrator::{Event, Orchestrator};
use dispatcher::rpc::RpcClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::proxy::FaultProxy;
use tests::*;

const SCRIPTS: usize = 500;
const IN_FLIGHT: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_scripts_under_random_link_resets_run_exactly_once() {
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let (dispatcher_link, agent_link) =
        (Arc::new(FaultProxy::start(broker).await), Arc::new(FaultProxy::start(broker).await));
    let mut config = tests::agent::test_config("soak");
    config.amqp_url = agent_link.amqp_url();
    let agent = TestAgent::start_with(config).await;
    let rpc = RpcClient::new(tests::rpc_config(dispatcher_link.amqp_url(), Duration::from_secs(2)));
    let timing = Timing {
        attempt_timeout: Duration::from_secs(3),
        status_wait: Duration::from_secs(1),
        start_wait: Duration::from_millis(300),
    };
    let orchestrator = Orchestrator::new(Arc::new(rpc), timing);
    let markers = Arc::new(Markers::new());

    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (done, links) = (done.clone(), [dispatcher_link.clone(), agent_link.clone()]);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500 + fastrand_ms(1500))).await;
                links[fastrand_ms(2) as usize].reset_all();
            }
        })
    };

    let retries = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (orchestrator, route, markers, retries, next) =
            (orchestrator.clone(), agent.route(), markers.clone(), retries.clone(), next.clone());
        workers.spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= SCRIPTS {
                    return failures;
                }
                // Long enough that resets land while scripts start, run and complete.
                let script = format!("{}; echo script {i}; sleep 0.3; echo end {i}", markers.record(&format!("s{i}")));
                let events = |e| {
                    if matches!(e, Event::Retry { .. }) {
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                };
                let policy = RetryPolicy::new(Duration::from_secs(60));
                let outcome = orchestrator.submit(&route, sh(script), policy, &events, &Default::default()).await;
                if outcome.outcome != OutcomeKind::Completed || outcome.exit_code != Some(0) {
                    failures.push(format!("script {i}: {outcome:?}"));
                }
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(worker) = workers.join_next().await {
        failures.extend(worker.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    chaos.await.unwrap();

    let counts: Vec<usize> = (0..SCRIPTS).map(|i| markers.count(&format!("s{i}"))).collect();
    let duplicates = counts.iter().filter(|&&c| c > 1).count();
    let lost = counts.iter().filter(|&&c| c == 0).count();
    let resets = dispatcher_link.resets() + agent_link.resets();
    println!(
        "soak: scripts {SCRIPTS}, in flight {IN_FLIGHT}, resets {resets}, retries {}, duplicates {duplicates}, lost {lost}, failed {}, took {:.1}s",
        retries.load(Ordering::Relaxed),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(resets >= 5, "the links were reset during the run");
    assert_eq!(duplicates, 0, "no script ran twice");
    assert_eq!(lost, 0, "no script was lost");
    assert!(failures.is_empty(), "every script completed: {failures:?}");
    agent.stop().await;
}

/// A random number of milliseconds below `below`.
fn fastrand_ms(below: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % below as u128) as u64
}
