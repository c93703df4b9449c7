//! Fan-out benchmark: one `echo` on 100 agents (all in this process), through the real
//! dispatcher binary; reports its wall time and peak resident memory (from GNU time).
//!
//! `cargo build --release --bins && cargo run --release -p tests --example fanout -- [agents] [max-parallel]`

use std::time::Instant;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let agents: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let max_parallel: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let mut started = Vec::with_capacity(agents);
    for _ in 0..agents {
        started.push(tests::TestAgent::start("fanout-bench").await);
    }
    let mut command = tokio::process::Command::new("/usr/bin/time");
    command.args(["-f", "%e %M"]).arg(tests::binary("dispatcher"));
    command.args(["submit", "--max-parallel", &max_parallel.to_string()]);
    for agent in &started {
        command.args(["--target", agent.id()]);
    }
    command.args(["--", "echo hello"]).env("CUTTLE_AMQP_URL", tests::amqp_url());
    let clock = Instant::now();
    let out = command.output().await.expect("/usr/bin/time and the dispatcher binary");
    let wall = clock.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let measured = stderr.lines().last().unwrap_or_default().to_owned();
    let mut fields = measured.split_whitespace();
    let (_, peak_kib) = (fields.next(), fields.next().unwrap_or("?"));
    assert!(out.status.success(), "fan-out failed: {stderr}");
    println!(
        "fan-out of one echo to {agents} agents, {max_parallel} at a time: wall {:.2} s, dispatcher peak memory {} KiB",
        wall.as_secs_f64(),
        peak_kib
    );
    for agent in started {
        agent.stop().await;
    }
}
