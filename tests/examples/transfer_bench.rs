//! File transfer benchmark on a private RabbitMQ node (never the shared one), in one run:
//! 1. throughput: `dispatcher upload` and `download` of SIZE MiB (default 64) with this build's
//!    binaries ("new") and, when `CUTTLE_OLD_BINARIES` names a directory holding another
//!    version's `dispatcher` and `worker-agent`, with those ("old"), each round in turn, against a
//!    plain copy through the same broker with pika (`tests/bench/transfer_baseline.py`, 1 MiB
//!    chunks, 1 and 8 in flight); medians of ROUNDS rounds (default 3), and the ratios;
//! 2. the time to resume after a reset: this build's upload and download through a fault proxy
//!    that resets the dispatcher's broker link (then the agent's too) RESETS times (default 10),
//!    each time from the cut to the next chunk the dispatcher sees answered (its
//!    `chunk answered` debug lines), a cut at most every second.
//!
//! ```sh
//! cargo build --release --bins && cargo build --release -p tests --example transfer_bench
//! CUTTLE_OLD_BINARIES=/tmp/old-release target/release/examples/transfer_bench [MiB] [rounds] [resets]
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::proxy::FaultProxy;
use tests::services::PrivateRabbit;
use tests::{same_content, write_random, AgentProcess};
use tokio::io::AsyncBufReadExt;

/// A version's binaries.
struct Version {
    name: &'static str,
    dir: PathBuf,
}

/// An agent of `version` on `amqp_url`, transferring below `root`.
async fn start_agent(version: &Version, amqp_url: &str, root: &Path) -> AgentProcess {
    let mut config = tests::agent::test_config("xfer-bench");
    config.amqp_url = amqp_url.to_owned();
    config.store = worker_agent::config::StoreKind::Local;
    config.transfer_roots = vec![root.to_path_buf()];
    std::fs::create_dir_all(&config.work_dir).unwrap();
    let command = AgentProcess::command_at(&version.dir.join("worker-agent"), &config);
    let agent = AgentProcess::spawn_command(config, command);
    agent.wait_ready().await;
    agent
}

/// `dispatcher ARGS` of `version` through `amqp_url`: its duration, which must end in success.
async fn timed(version: &Version, amqp_url: &str, args: &[&str]) -> f64 {
    let started = Instant::now();
    let out = tests::dispatcher_command_at(&version.dir.join("dispatcher"))
        .env("CUTTLE_AMQP_URL", amqp_url)
        .args(args)
        .output()
        .await
        .expect("dispatcher runs");
    assert!(out.status.success(), "{} {args:?}: {}", version.name, tests::text(&out.stderr));
    started.elapsed().as_secs_f64()
}

/// The pika copy's duration, with `window` chunks in flight.
fn baseline(amqp_url: &str, file: &Path, window: usize) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/transfer_baseline.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(amqp_url)
        .arg(file)
        .arg((1024 * 1024).to_string())
        .arg(window.to_string())
        .output()
        .expect("python3 runs");
    let text = tests::text(&out.stdout);
    assert!(out.status.success(), "baseline: {}{}", text, tests::text(&out.stderr));
    let seconds = text.split(" in ").nth(1).and_then(|t| t.split('s').next()).and_then(|t| t.parse().ok());
    seconds.unwrap_or_else(|| panic!("baseline printed {text:?}"))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// Seconds since midnight (UTC) of a log line's timestamp (`2026-11-27T16:40:26.138903Z ...`).
fn logged_at(line: &str) -> Option<f64> {
    let time = line.get(11..26)?;
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds since midnight (UTC) now.
fn now_of_day() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64() % 86_400.0
}

/// Resets the links through `proxy` while `args` of `version` run, each time once the
/// dispatcher has logged a chunk answered since the last cut and at least a second has passed:
/// the times from each cut to the next chunk answered, by the dispatcher's own log timestamps
/// (its lines reach us later than it writes them).
async fn resume_times(
    version: &Version,
    proxy: &FaultProxy,
    proxy_url: &str,
    args: &[&str],
    resets: usize,
) -> Vec<f64> {
    let mut child = tests::dispatcher_command_at(&version.dir.join("dispatcher"))
        .env("CUTTLE_AMQP_URL", proxy_url)
        .env("RUST_LOG", "dispatcher::transfer=debug")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("dispatcher runs");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut times = Vec::new();
    let mut cut: Option<f64> = None;
    let mut last_cut = Instant::now();
    let mut log = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let answered_at = logged_at(&line).filter(|_| line.contains("chunk answered"));
        let Some(answered_at) = answered_at else {
            log.push_str(&line);
            log.push('\n');
            continue;
        };
        match cut {
            Some(at) if answered_at > at => {
                times.push(answered_at - at);
                cut = None;
            }
            Some(_) => continue,
            None => {}
        }
        if times.len() < resets && last_cut.elapsed() >= Duration::from_secs(1) {
            proxy.reset_all();
            last_cut = Instant::now();
            cut = Some(now_of_day());
        }
    }
    let status = child.wait().await.expect("dispatcher ends");
    assert!(status.success(), "{args:?} through resets: {log}");
    times
}

fn describe(times: &[f64]) -> String {
    if times.is_empty() {
        return "no reset happened".into();
    }
    let mut sorted = times.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    format!(
        "{} resets: median {:.0} ms, slowest {:.0} ms",
        sorted.len(),
        sorted[sorted.len() / 2] * 1000.0,
        sorted[sorted.len() - 1] * 1000.0
    )
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(64);
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
    let resets: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let new_dir = tests::binary("dispatcher").parent().expect("binary dir").to_path_buf();
    let mut versions = vec![Version { name: "new", dir: new_dir }];
    if let Ok(old) = std::env::var("CUTTLE_OLD_BINARIES") {
        versions.insert(0, Version { name: "old", dir: PathBuf::from(old) });
    }
    let rabbit = PrivateRabbit::start().await;
    let url = rabbit.amqp_url();
    let work = std::env::temp_dir().join(tests::unique("xfer-bench"));
    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let source = work.join("source.bin");
    let back = work.join("back.bin");
    write_random(&source, mib << 20, 5);
    let (source_arg, back_arg) = (source.to_str().unwrap(), back.to_str().unwrap());
    eprintln!("{mib} MiB, {rounds} rounds, private RabbitMQ on port {}", rabbit.port);

    let mut results: Vec<(String, f64)> = Vec::new();
    for round in 1..=rounds {
        for version in &versions {
            let agent = start_agent(version, &url, &root).await;
            let id = agent.config.agent_id.clone();
            let up = timed(version, &url, &["upload", "--target", &id, source_arg, "copy.bin"]).await;
            assert!(same_content(&source, &root.join("copy.bin")));
            let down = timed(version, &url, &["download", "--target", &id, "copy.bin", back_arg]).await;
            assert!(same_content(&source, &back));
            agent.stop().await;
            let _ = std::fs::remove_file(root.join("copy.bin"));
            let _ = std::fs::remove_file(&back);
            eprintln!("round {round}: {} upload {up:.2}s, download {down:.2}s", version.name);
            results.push((format!("{} upload", version.name), up));
            results.push((format!("{} download", version.name), down));
        }
        for window in [1, 8] {
            let seconds = baseline(&url, &source, window);
            eprintln!("round {round}: pika, {window} in flight, {seconds:.2}s");
            results.push((format!("pika {window} in flight"), seconds));
        }
    }
    let of = |what: &str| median(results.iter().filter(|(k, _)| k == what).map(|(_, s)| *s).collect());
    let (pika1, pika8) = (of("pika 1 in flight"), of("pika 8 in flight"));
    println!("| what ({mib} MiB, median of {rounds}) | seconds | MiB/s | time / pika 1 in flight | time / pika 8 in flight |");
    println!("|---|---|---|---|---|");
    let mut kinds: Vec<String> = results.iter().map(|(k, _)| k.clone()).collect();
    kinds.dedup();
    kinds.sort();
    kinds.dedup();
    for kind in &kinds {
        let seconds = of(kind);
        let rate = mib as f64 / seconds;
        println!("| {kind} | {seconds:.2} | {rate:.1} | {:.2} | {:.2} |", seconds / pika1, seconds / pika8);
    }
    if versions.len() == 2 {
        for direction in ["upload", "download"] {
            let ratio = of(&format!("new {direction}")) / of(&format!("old {direction}"));
            println!("{direction}: new takes {ratio:.2} of old's time");
        }
    }

    let new = versions.last().expect("new");
    let proxy = FaultProxy::start(([127, 0, 0, 1], rabbit.port).into()).await;
    let proxy_url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.addr().port());
    for (links, agent_url) in [("the dispatcher's link", &url), ("both links", &proxy_url)] {
        let agent = start_agent(new, agent_url, &root).await;
        let id = agent.config.agent_id.clone();
        let up = ["upload", "--target", &id, source_arg, "copy.bin"];
        let up_times = resume_times(new, &proxy, &proxy_url, &up, resets).await;
        assert!(same_content(&source, &root.join("copy.bin")));
        let down = ["download", "--target", &id, "copy.bin", back_arg];
        let down_times = resume_times(new, &proxy, &proxy_url, &down, resets).await;
        assert!(same_content(&source, &back));
        agent.stop().await;
        let _ = std::fs::remove_file(root.join("copy.bin"));
        let _ = std::fs::remove_file(&back);
        println!("resume after a reset of {links}: upload {}; download {}", describe(&up_times), describe(&down_times));
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&work);
}
