//! Presence benchmark: with N agents (all in this process, default 200, heartbeat every 10 s as
//! by default, each announcement signed with the agent key), measures
//! - how long `dispatcher agents --select` takes to list them all (median of 5), every
//!   announcement checked against the pinned key;
//! - the time from starting `dispatcher submit --select` to the first script start, beside the
//!   same fan-out given as N `--target` flags (no presence read), in the same run;
//! - the presence traffic: announcements of these agents counted on the stream for 30 s, as
//!   messages per minute and bytes per message (body, signature headers and type), and scaled
//!   to 10,000 agents;
//! - the dispatcher's CPU cost of believing a 10,000-agent fleet: [`Inventory::settle`] over
//!   three signed heartbeats of each of 10,000 agents, all pinned, as one listing would read.
//!
//! It declares N agent queues and loads the broker: run it against a private RabbitMQ node and
//! Redis (see `deploy/local/bench-compare.sh` for how to start them), not the shared ones:
//!
//! `cargo build --release --bins && CUTTLE_AMQP_URL=amqp://guest:guest@127.0.0.1:PORT/%2f
//! CUTTLE_REDIS_URL=redis://127.0.0.1:PORT2 cargo run --release -p tests --example presence -- [agents]`

use contracts::trust::files::KnownAgents;
use contracts::trust::keys::SecretKey;
use contracts::wire::presence::{Announcement, DEFAULT_INTERVAL_MS};
use contracts::wire::topology::{ANNOUNCEMENT_TYPE, PRESENCE_STREAM};
use dispatcher::inventory::{Inventory, Sighting};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let count: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(200);
    let fleet = tests::unique("bench");
    let mut agents = Vec::with_capacity(count);
    for _ in 0..count {
        let mut config = tests::agent::test_config("presence-bench");
        config.labels.insert("fleet".into(), fleet.clone());
        agents.push(tests::TestAgent::start_with(config).await);
    }
    let select = format!("fleet={fleet}");

    let mut listings = Vec::new();
    let mut listed = 0;
    for _ in 0..5 {
        let listing = Instant::now();
        let out = tests::dispatcher_command().args(["agents", "--json", "--select", &select]).output().await.unwrap();
        listings.push(listing.elapsed().as_secs_f64() * 1000.0);
        listed = String::from_utf8_lossy(&out.stdout).lines().count();
    }
    listings.sort_by(f64::total_cmp);
    println!(
        "agents --select: {listed} of {count} listed in {:.0} ms (median of 5; {:.0}-{:.0} ms)",
        listings[2], listings[0], listings[4]
    );

    let markers = tests::Markers::new();
    let script = format!("date +%s%N >> '{}'/starts", markers.dir.display());
    let by_select = first_start(&markers, &["--select", &select], &script).await;
    let mut targets = Vec::new();
    for agent in &agents {
        targets.extend(["--target".to_string(), agent.id().to_string()]);
    }
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let by_target = first_start(&markers, &targets, &script).await;
    println!(
        "submit to first script start: --select {:.0} ms, {count} x --target {:.0} ms (presence read: {:+.0} ms)",
        by_select * 1000.0,
        by_target * 1000.0,
        (by_select - by_target) * 1000.0
    );

    let (messages, bytes, window) = count_announcements(&fleet, Duration::from_secs(30)).await;
    let per_minute = messages as f64 * 60.0 / window.as_secs_f64();
    let size = bytes as f64 / messages.max(1) as f64;
    println!(
        "presence: {messages} announcements in {:.0} s = {per_minute:.0} msg/min for {count} agents, {size:.0} bytes each; \
         at 10,000 agents {:.0} msg/min, {:.1} MB/min",
        window.as_secs_f64(),
        per_minute * 10_000.0 / count as f64,
        per_minute * 10_000.0 / count as f64 * size / 1e6
    );
    for agent in agents {
        agent.stop().await;
    }

    let (agents, heartbeats) = (10_000, 3);
    let (sightings, known) = signed_fleet(agents, heartbeats);
    let settling = Instant::now();
    let inventory = Inventory::settle(sightings, &known);
    let took = settling.elapsed();
    println!(
        "believing {} signed announcements of {agents} pinned agents: {:.0} ms ({} live)",
        agents * heartbeats,
        took.as_secs_f64() * 1000.0,
        inventory.live(contracts::time::unix_millis(std::time::SystemTime::now())).count()
    );
}

/// `heartbeats` announcements of each of `agents` agents, signed as agents sign them (one key
/// per agent), and the known agents pinning each.
fn signed_fleet(agents: usize, heartbeats: usize) -> (Vec<Sighting>, KnownAgents) {
    let now = contracts::time::unix_millis(std::time::SystemTime::now());
    let mut pins = String::new();
    let mut sightings = Vec::with_capacity(agents * heartbeats);
    for n in 0..agents {
        let key = SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap();
        let mut announcement = tests::presence::announcement(&format!("fleet-{n:05}"), &[("env", "prod")]);
        announcement.interval_ms = DEFAULT_INTERVAL_MS;
        pins.push_str(&format!("{} {}\n", announcement.agent_id, key.public()));
        for beat in 0..heartbeats {
            announcement.at = now - (beat as u64) * DEFAULT_INTERVAL_MS;
            let body = announcement.encode().unwrap();
            sightings.push(Sighting { seal: Ok(Some(key.seal_announcement(&body))), body });
        }
    }
    (sightings, KnownAgents::parse(&pins).unwrap())
}

/// Seconds from starting `dispatcher submit FLAGS -- script` to the first script's start.
async fn first_start(markers: &tests::Markers, flags: &[&str], script: &str) -> f64 {
    let starts = markers.dir.join("starts");
    let _ = std::fs::remove_file(&starts);
    let begun = std::time::SystemTime::now();
    let out = tests::dispatcher_command()
        .args(["submit", "--max-parallel", "100%"])
        .args(flags)
        .args(["--", script])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first_ns: u128 = std::fs::read_to_string(&starts)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .min()
        .expect("scripts ran");
    let begun_ns = begun.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    (first_ns.saturating_sub(begun_ns)) as f64 / 1e9
}

/// Announcements from this fleet's agents appended to the stream during `window`, and their bytes.
async fn count_announcements(fleet: &str, window: Duration) -> (usize, usize, Duration) {
    let connection =
        lapin::Connection::connect(&tests::amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(1000, BasicQosOptions::default()).await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), AMQPValue::LongString("next".into()));
    let mut consumer = channel
        .basic_consume(PRESENCE_STREAM.into(), "".into(), BasicConsumeOptions::default(), arguments)
        .await
        .unwrap();
    let (mut messages, mut bytes) = (0, 0);
    let started = Instant::now();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at((started + window).into(), consumer.next()).await {
        let ours = delivery.properties.kind().as_ref().is_some_and(|k| k.as_str() == ANNOUNCEMENT_TYPE)
            && Announcement::decode(&delivery.data).is_ok_and(|a| a.labels.get("fleet").is_some_and(|f| f == fleet));
        if ours {
            messages += 1;
            // The body and what travels with it: the headers (signature) and the type.
            bytes += delivery.data.len() + header_bytes(&delivery.properties);
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let _ = connection.close(200, "presence bench".into()).await;
    (messages, bytes, started.elapsed())
}

fn header_bytes(properties: &lapin::BasicProperties) -> usize {
    properties.headers().as_ref().map_or(0, |headers| {
        let value_bytes = |v: &AMQPValue| match v {
            AMQPValue::LongString(s) => s.as_bytes().len(),
            _ => 8,
        };
        headers.inner().iter().map(|(k, v)| k.as_str().len() + value_bytes(v)).sum()
    }) + ANNOUNCEMENT_TYPE.len()
}
