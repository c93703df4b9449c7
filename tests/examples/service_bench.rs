//! Service benchmark, in one run against one agent (in this process) and the real binaries:
//! 1. `echo hello` scripts through the CLI path (`dispatcher bench`) versus through the service
//!    (`POST /v1/scripts`, then its server-sent events until the result): the journal's overhead;
//! 2. the latency from a line of script output (the script prints its own clock) to its
//!    server-sent event;
//! 3. the service's resident memory with `history` tickets in its journal.
//!
//! `cargo build --release --bins && cargo run --release -p tests --example service_bench -- [count] [concurrency] [history]`

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tests::service::{http, journal_prefix, remove_journal};
use tests::{ServiceProcess, TestAgent};

fn percentiles(mut samples: Vec<f64>) -> String {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    format!("p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms", at(0.5), at(0.9), at(0.99))
}

/// Reads server-sent events until `until` says stop; calls `each` with every JSON event.
async fn read_events(response: reqwest::Response, mut each: impl FnMut(&Value) -> bool) {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(Ok(chunk)) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                let event: Value = serde_json::from_str(data).expect("json event");
                if !each(&event) {
                    return;
                }
            }
        }
    }
}

/// Runs `script` on `target` through the service and waits for its result event.
async fn through_service(client: &reqwest::Client, url: &str, target: &str, script: &str) -> Value {
    let accepted: Value = client
        .post(format!("{url}/v1/scripts"))
        .json(&json!({"target": target, "script": script}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("accepted");
    let ticket = accepted["tickets"][0]["ticket"].as_str().expect("ticket").to_owned();
    let events = client.get(format!("{url}/v1/tickets/{ticket}/events")).send().await.expect("events");
    let mut result = Value::Null;
    read_events(events, |event| {
        if event["event"] == "result" {
            result = event.clone();
        }
        event["event"] != "result"
    })
    .await;
    result
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("service status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("kib")
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let concurrency: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(16);
    let history: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let agent = TestAgent::start("service-bench").await;

    // 1a. The CLI path.
    let cli = tests::dispatcher_command()
        .args(["bench", "--json", "--target", agent.id(), "--count", &count.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .output()
        .await
        .expect("dispatcher bench");
    let cli: Value = serde_json::from_slice(&cli.stdout).expect("bench json");

    // 1b. The same through the service and its journal.
    let prefix = journal_prefix("service-bench");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let pid = service.pid().expect("service pid");
    let client = http();
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let clock = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, target) = (client.clone(), service.url.clone(), agent.id().to_owned());
        let (next, latencies) = (next.clone(), latencies.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let started = Instant::now();
                let result = through_service(&client, &url, &target, "echo hello").await;
                assert_eq!(result["exit_code"], 0, "{result}");
                latencies.lock().unwrap().push(started.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = clock.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *latencies.lock().unwrap());
    println!("{count} scripts of `echo hello`, {concurrency} at a time, one agent:");
    println!(
        "  CLI path (dispatcher bench): p50 {} ms, p90 {} ms, p99 {} ms, {} scripts/s",
        cli["p50_ms"], cli["p90_ms"], cli["p99_ms"], cli["throughput_per_s"]
    );
    println!("  through the service:         {}, {:.1} scripts/s", percentiles(samples), count as f64 / elapsed);

    // 2. From a line printed by the script to its server-sent event.
    let script = "for i in $(seq 200); do date +%s%N; sleep 0.02; done";
    let accepted: Value = client
        .post(format!("{}/v1/scripts", service.url))
        .json(&json!({"target": agent.id(), "script": script}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = accepted["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    let events = client.get(format!("{}/v1/tickets/{ticket}/events", service.url)).send().await.unwrap();
    let mut line_latencies = Vec::new();
    read_events(events, |event| {
        if let Some(printed) = event["text"].as_str().and_then(|t| t.parse::<u128>().ok()) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
            line_latencies.push(now.saturating_sub(printed) as f64 / 1e6);
        }
        event["event"] != "result"
    })
    .await;
    println!("  script output line to its server-sent event: {}", percentiles(line_latencies));

    // 3. Memory with `history` tickets in the journal.
    let before = resident_kib(pid);
    let recorded = count + 1;
    let next = Arc::new(AtomicUsize::new(recorded));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, url, target, next) = (client.clone(), service.url.clone(), agent.id().to_owned(), next.clone());
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < history {
                through_service(&client, &url, &target, "true").await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let (status, listed) = {
        let response = client.get(format!("{}/v1/tickets?limit=1000", service.url)).send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert!(status.is_success() && listed["tickets"].as_array().unwrap().len() == history.max(recorded).min(1000));
    let after = resident_kib(pid);
    println!(
        "  service resident memory: {before} KiB after the benchmark, {after} KiB with {} tickets in its history",
        history.max(recorded)
    );

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}
