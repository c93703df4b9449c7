//! What run receipts cost: runs N scripts (default 500, `echo hi`) through one agent in this
//! process, waits until every receipt is on the receipts stream, and reports
//! - the bytes of one receipt: its signed body (msgpack), the whole message as the stream
//!   stores it (the growth of the stream's segment files over N), and its JSON line;
//! - what the ticket store keeps: the chain head per agent id, and pending receipts (0 once
//!   published), from Redis's `MEMORY USAGE`;
//! - the time to read them back with `dispatcher receipts` (signatures and chain checked);
//! - the stream's size per day at 1,000 scripts/s, from the measured bytes.
//!
//! Run it alone against a broker on this machine (it reads the stream's files under
//! `CUTTLE_RABBIT_DATA`, default `/var/lib/rabbitmq/mnesia`):
//!
//! `cargo build --release --bins && cargo run --release -p tests --example receipt_cost -- [runs]`

use dispatcher::receipts::{read, Whose};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of every segment of the receipts stream's directories under `data`.
fn stream_bytes(data: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![data.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path.to_string_lossy();
            if path.is_dir() {
                dirs.push(path.clone());
            } else if name.contains("cuttle_receipts") && name.ends_with(".segment") {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(500);
    let data = std::env::var("CUTTLE_RABBIT_DATA").unwrap_or_else(|_| "/var/lib/rabbitmq/mnesia".into());
    let agent = tests::TestAgent::start("receipt-cost").await;
    let orchestrator = tests::orchestrator().await;
    // The first run declares the stream if this broker never had it.
    tests::submit(&orchestrator, &agent.route(), tests::sh("echo hi")).await;
    let config = tests::rpc_config(tests::amqp_url(), Duration::from_secs(5));
    let whose = Whose::Agent(agent.id().to_owned());
    tests::eventually("the first receipt", Duration::from_secs(30), || async {
        (read(&config, &whose, Duration::from_secs(600), &|_, _| {}).await.ok()?.receipts.len() == 1).then_some(())
    })
    .await;
    let before = stream_bytes(Path::new(&data));
    for _ in 0..runs {
        tests::submit(&orchestrator, &agent.route(), tests::sh("echo hi")).await;
    }
    let all = tests::eventually("every receipt on the stream", Duration::from_secs(120), || async {
        let read = read(&config, &whose, Duration::from_secs(600), &|_, _| {}).await.ok()?;
        (read.receipts.len() > runs).then_some(read.receipts)
    })
    .await;
    let grown = stream_bytes(Path::new(&data)).saturating_sub(before);
    let mut bodies: Vec<usize> = all.iter().map(|r| r.body.len()).collect();
    bodies.sort_unstable();
    let json = dispatcher::receipts::to_json(&all[1], &all[1].receipt().unwrap()).to_string().len();
    let started = Instant::now();
    let out = tests::run_dispatcher(&["receipts", "--target", agent.id(), "--json", "--since", "10m"]).await;
    let listed = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", tests::text(&out.stderr));
    let client = redis::Client::open(tests::redis_url()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    let prefix = format!("{}agent:{}:receipts:", agent.agent.config().key_prefix, agent.id());
    let memory = |key: String| {
        let mut con = con.clone();
        async move { redis::cmd("MEMORY").arg("USAGE").arg(key).query_async::<Option<u64>>(&mut con).await.unwrap() }
    };
    let head = memory(format!("{prefix}head")).await;
    let pending = memory(format!("{prefix}pending")).await;
    let per_message = grown as f64 / runs as f64;
    println!("runs: {runs}");
    println!(
        "receipt body (signed msgpack): median {} bytes, max {}",
        bodies[bodies.len() / 2],
        bodies[bodies.len() - 1]
    );
    println!("on the stream (segment growth / runs): {per_message:.0} bytes per receipt");
    println!("as a JSON line (dispatcher receipts --json): {json} bytes");
    println!(
        "ticket store: chain head {} bytes per agent id; pending receipts {:?} once published",
        head.unwrap_or(0),
        pending
    );
    println!("dispatcher receipts over {} receipts: {} ms", all.len(), listed.as_millis());
    println!(
        "at 1,000 scripts/s: {:.1} GB of stream a day ({} receipts)",
        per_message * 86_400_000.0 / 1e9,
        86_400_000u64
    );
    drop(con);
    agent.stop().await;
}
