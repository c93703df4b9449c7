//! Recovery benchmark: how long after a broker outage ends does the next output line reach the
//! dispatcher? A script prints a line every 50 ms; both links to RabbitMQ go down together for
//! 2 s, N times; default dispatcher settings.
//!
//! `cargo run --release -p tests --example recovery -- [outages]` (default 20), with RabbitMQ
//! and Redis running locally.

use contracts::submission::retry::{RetryPolicy, Timing};
use dispatcher::orchestrator::{Event, Orchestrator};
use dispatcher::rpc::RpcClient;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::proxy::FaultProxy;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() {
    let outages: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(20);
    let broker: std::net::SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let (dispatcher_link, agent_link) = (FaultProxy::start(broker).await, FaultProxy::start(broker).await);
    let mut config = tests::agent::test_config("recovery");
    config.amqp_url = agent_link.amqp_url();
    let agent = tests::TestAgent::start_with(config).await;
    let rpc = RpcClient::new(tests::rpc_config(dispatcher_link.amqp_url(), Duration::from_secs(5)));
    let orchestrator = Orchestrator::new(Arc::new(rpc), Timing::default());

    let (lines_tx, mut lines) = mpsc::unbounded_channel::<Instant>();
    let submission = {
        let (orchestrator, route) = (orchestrator.clone(), agent.route());
        tokio::spawn(async move {
            let events = move |e| {
                if let Event::Log(_) = e {
                    let _ = lines_tx.send(Instant::now());
                }
            };
            let script = tests::sh("while true; do echo tick; sleep 0.05; done");
            let interrupt = tokio_util::sync::CancellationToken::new();
            let stop = interrupt.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                stop.cancel();
            });
            orchestrator.submit(&route, script, RetryPolicy::new(Duration::from_secs(150)), &events, &interrupt).await
        })
    };
    lines.recv().await.expect("the script prints");
    let mut recoveries = Vec::with_capacity(outages);
    for i in 0..outages {
        tokio::time::sleep(Duration::from_millis(500)).await;
        dispatcher_link.outage();
        agent_link.outage();
        tokio::time::sleep(Duration::from_secs(2)).await;
        while lines.try_recv().is_ok() {}
        dispatcher_link.restore();
        agent_link.restore();
        let restored = Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(60), lines.recv()).await.expect("output resumes").unwrap();
        let recovery = next.saturating_duration_since(restored);
        eprintln!("outage {:>2}: next line {:>5} ms after the end", i + 1, recovery.as_millis());
        recoveries.push(recovery);
    }
    recoveries.sort();
    let pick = |q: f64| recoveries[((q * recoveries.len() as f64).ceil() as usize).clamp(1, recoveries.len()) - 1];
    println!(
        "recovery after {outages} outages of 2 s: p50 {} ms, p99 {} ms, max {} ms",
        pick(0.5).as_millis(),
        pick(0.99).as_millis(),
        recoveries.last().unwrap().as_millis()
    );
    submission.abort();
    agent.stop().await;
}
