//! Capacity figures for the "Capacity" section of docs/performance.md. Every part runs on servers of its own
//! (a private RabbitMQ node, a private Redis), so the machine's shared broker is neither
//! disturbed nor measured:
//! - `queues [N]`: the broker's file handles and memory per idle agent queue, quorum and classic;
//! - `fleet [LIMIT]`: agents (a connection and a consumed quorum queue each, as the agent holds
//!   them) added until the broker stops answering, at the default open-file limit (1,024) and at
//!   LIMIT (default: this process's own hard limit);
//! - `fanout [AGENTS]`: AGENTS agent processes (the real binary), one script fanned out to all
//!   of them with `dispatcher submit`: time, the dispatcher's peak memory, the broker's memory and
//!   handles before and after;
//! - `tickets [COUNT]`: Redis memory per finished ticket and in total after COUNT scripts run by
//!   `dispatcher bench`, beside the same number of records in the previous version's format (JSON,
//!   kept an hour).
//!
//! `cargo build --release --bins && cargo run --release -p tests --example capacity -- PART [n]`

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use tests::services::{PrivateRabbit, PrivateRedis};
use tests::{dispatcher_command, unique, AgentProcess};

/// The broker's open files and memory, read from its process: a broker out of file handles
/// no longer answers `rabbitmqctl`.
#[derive(Clone, Copy, Debug)]
struct BrokerUse {
    handles: u64,
    handle_limit: u64,
    memory: u64,
}

fn broker_use(pid: i32) -> BrokerUse {
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    let handles = std::fs::read_dir(proc.join("fd")).expect("the broker's open files").count() as u64;
    let field = |file: &str, name: &str| -> u64 {
        let text = std::fs::read_to_string(proc.join(file)).expect("the broker's /proc entry");
        let line = text.lines().find(|l| l.starts_with(name)).expect("the field");
        line[name.len()..].split_whitespace().next().expect("a value").parse().expect("a number")
    };
    BrokerUse { handles, handle_limit: field("limits", "Max open files"), memory: field("status", "VmRSS:") * 1024 }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
}

fn queue_arguments(kind: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    arguments
}

async fn connect(url: &str) -> lapin::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default()).await
}

/// Idle queues of each kind on a fresh node: what one more costs.
async fn queues(count: usize) {
    for kind in ["quorum", "classic"] {
        let rabbit = PrivateRabbit::start().await;
        let pid = rabbit.os_pid();
        let connection = connect(&rabbit.amqp_url()).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let before = broker_use(pid);
        for i in 0..count {
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            channel
                .queue_declare(format!("cuttle.agent.cap-{i}").into(), options, queue_arguments(kind))
                .await
                .unwrap();
        }
        // Let the broker settle (queue processes start their files lazily).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = broker_use(pid);
        println!(
            "{kind} queues: {count} idle queues take {} file handles ({:.2} each) and {} ({:.1} KiB each)",
            after.handles - before.handles,
            (after.handles - before.handles) as f64 / count as f64,
            mib(after.memory.saturating_sub(before.memory) as f64),
            after.memory.saturating_sub(before.memory) as f64 / count as f64 / 1024.0
        );
        let _ = connection.close(200, "done".into()).await;
    }
}

/// One agent's hold on the broker: its connection, and its quorum queue consumed.
async fn join_as_agent(url: &str, id: usize) -> lapin::Result<(Connection, lapin::Consumer)> {
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    let queue = format!("cuttle.agent.cap-{id}");
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), options, queue_arguments("quorum")).await?;
    let consumer =
        channel.basic_consume(queue.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default());
    Ok((connection, consumer.await?))
}

/// Adds agents until one cannot join within 10 s; how many did.
async fn largest_fleet(open_files: u64) {
    let rabbit = PrivateRabbit::start_with_open_files(open_files).await;
    let pid = rabbit.os_pid();
    let url = rabbit.amqp_url();
    let start = broker_use(pid);
    let began = Instant::now();
    let mut fleet = Vec::new();
    let stopped = loop {
        // Sixteen join at once: a fleet reconnecting joins in parallel too.
        let joins =
            (0..16).map(|i| tokio::time::timeout(Duration::from_secs(10), join_as_agent(&url, fleet.len() + i)));
        let results = futures_util::future::join_all(joins).await;
        let mut failure = None;
        for result in results {
            match result {
                Ok(Ok(agent)) => fleet.push(agent),
                Ok(Err(error)) => failure = Some(error.to_string()),
                Err(_) => failure = Some("no answer within 10 s (handshake or declare hung)".into()),
            }
        }
        if let Some(failure) = failure {
            break failure;
        }
        if fleet.len() % 512 == 0 {
            let now = broker_use(pid);
            eprintln!("  {} agents, {} of {} handles", fleet.len(), now.handles, now.handle_limit);
        }
    };
    let end = broker_use(pid);
    println!(
        "open-file limit {} (broker's own limit {}): {} agents joined in {:.0} s, then: {stopped}; {} handles and {} in use (was {} and {})",
        open_files,
        start.handle_limit,
        fleet.len(),
        began.elapsed().as_secs_f64(),
        end.handles,
        mib(end.memory as f64),
        start.handles,
        mib(start.memory as f64),
    );
    let closes = fleet
        .iter()
        .map(|(connection, _)| tokio::time::timeout(Duration::from_secs(5), connection.close(200, "done".into())));
    futures_util::future::join_all(closes).await;
}

fn hard_open_file_limit() -> u64 {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    hard
}

/// Raises this process's own open-file limit to the hard limit (one handle per connection).
fn raise_own_limit() {
    let hard = hard_open_file_limit();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

async fn fleet(limit: Option<u64>) {
    raise_own_limit();
    largest_fleet(1024).await;
    largest_fleet(limit.unwrap_or_else(hard_open_file_limit)).await;
}

/// The peak resident memory of the children waited for so far.
fn children_peak_memory() -> u64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    usage.max_rss() as u64 * 1024
}

/// CPU seconds (user and system) process `pid` has used, and its reaped children have.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis, from the state (0): utime, stime, cutime
    // and cstime are 11 to 14, in clock ticks, which Linux counts at 100 a second (USER_HZ).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (field(11) + field(12), field(13) + field(14))
}

/// CPU seconds of the dispatcher processes this process has reaped.
fn reaped_cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

async fn fanout(agents: usize) {
    raise_own_limit();
    let rabbit = PrivateRabbit::start_with_open_files(hard_open_file_limit()).await;
    let pid = rabbit.os_pid();
    let redis = PrivateRedis::start(false).await;
    let idle = broker_use(pid);
    let began = Instant::now();
    let mut fleet: Vec<AgentProcess> = Vec::new();
    // Fifty at a time: each waits for its queue within a deadline, and starting 500 processes at
    // once on two cores takes longer than that.
    while fleet.len() < agents {
        let batch: Vec<AgentProcess> = (fleet.len()..agents.min(fleet.len() + 50))
            .map(|_| {
                let mut config = tests::agent::test_config("cap");
                config.amqp_url = rabbit.amqp_url();
                config.redis_url = redis.url();
                let command = AgentProcess::command(&config);
                AgentProcess::spawn_command(config, command)
            })
            .collect();
        for agent in &batch {
            agent.wait_ready().await;
        }
        fleet.extend(batch);
    }
    let connected = broker_use(pid);
    println!(
        "{agents} agent processes ready in {:.1} s; broker: {} handles and {} idle, {} handles and {} with the agents",
        began.elapsed().as_secs_f64(),
        idle.handles,
        mib(idle.memory as f64),
        connected.handles,
        mib(connected.memory as f64)
    );
    let targets = fleet.iter().flat_map(|a| ["--target", a.config.agent_id.as_str()]);
    // Where the fan-out's CPU goes: the agents, the broker, the dispatcher. (Not the scripts: a
    // 1 ms `sh` reaped by each of 500 processes is below what their clock ticks can tell.)
    let agents_cpu = || fleet.iter().filter_map(AgentProcess::pid).map(|pid| cpu_seconds(pid).0).sum::<f64>();
    let (agents_before, broker_before, dispatchers_before) =
        (agents_cpu(), cpu_seconds(pid as u32).0, reaped_cpu_seconds());
    let began = Instant::now();
    let output = dispatcher_command()
        .args(["submit", "--json", "--max-parallel", &agents.to_string()])
        .args(targets)
        .args(["--", "echo ok"])
        .env("CUTTLE_AMQP_URL", rabbit.amqp_url())
        .output()
        .await
        .expect("run dispatcher submit");
    let took = began.elapsed();
    let completed =
        String::from_utf8_lossy(&output.stdout).lines().filter(|l| l.contains("\"outcome\":\"completed\"")).count();
    let after = broker_use(pid);
    println!(
        "fan-out of one script to {agents} agents: {:.1} s, {completed} completed (exit {:?}); dispatcher peak memory {}; broker afterwards {} handles and {}",
        took.as_secs_f64(),
        output.status.code(),
        mib(children_peak_memory() as f64),
        after.handles,
        mib(after.memory as f64)
    );
    let agents_after = agents_cpu();
    println!(
        "CPU during the fan-out: the agents {:.2} s, the broker {:.2} s, the dispatcher {:.2} s ({} cores)",
        agents_after - agents_before,
        cpu_seconds(pid as u32).0 - broker_before,
        reaped_cpu_seconds() - dispatchers_before,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if completed != agents {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    }
    for agent in fleet {
        agent.stop().await;
    }
}

async fn redis_memory(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await.expect("INFO memory");
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).expect("used_memory").trim().parse().expect("a number")
}

/// A ticket record's key and its `MEMORY USAGE`.
async fn ticket_record(redis: &mut redis::aio::MultiplexedConnection) -> Option<(String, u64)> {
    let key = {
        let mut keys = redis::AsyncCommands::scan_match::<_, String>(redis, "*ticket:*").await.expect("SCAN");
        keys.next_item().await?.ok()?
    };
    let usage = redis::cmd("MEMORY").arg("USAGE").arg(&key).query_async(redis).await.expect("MEMORY USAGE");
    Some((key, usage))
}

async fn tickets(count: usize) {
    let rabbit = PrivateRabbit::start().await;
    let redis_server = PrivateRedis::start(false).await;
    let client = redis::Client::open(redis_server.url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    let mut config = tests::agent::test_config("cap-tickets");
    config.amqp_url = rabbit.amqp_url();
    config.redis_url = redis_server.url();
    let agent = AgentProcess::start(config).await;
    let empty = redis_memory(&mut redis).await;
    let began = Instant::now();
    let output = dispatcher_command()
        .args(["bench", "--json", "--target", &agent.config.agent_id])
        .args(["--count", &count.to_string(), "--concurrency", "32"])
        .env("CUTTLE_AMQP_URL", rabbit.amqp_url())
        .output()
        .await
        .expect("run dispatcher bench");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let kept: u64 = redis::cmd("DBSIZE").query_async(&mut redis).await.expect("DBSIZE");
    let now = redis_memory(&mut redis).await;
    println!(
        "{count} scripts in {:.0} s ({}): Redis holds {kept} keys and {} more than empty",
        began.elapsed().as_secs_f64(),
        report.trim(),
        mib(now.saturating_sub(empty) as f64)
    );
    match ticket_record(&mut redis).await {
        Some((key, usage)) => println!("one finished ticket's record: {usage} bytes (MEMORY USAGE {key})"),
        None => println!("no ticket record is left: every one expired"),
    }
    agent.stop().await;

    // The previous version kept every finished ticket an hour, as JSON: the same count of them.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.expect("FLUSHALL");
    let empty = redis_memory(&mut redis).await;
    let id = unique("old");
    let digest = "0".repeat(64);
    let mut pipe = redis::pipe();
    for i in 0..count {
        let json = format!(
            r#"{{"owner":"{id}/{i}","agent_id":"{id}","digest":"{digest}","state":"Complete","exit_code":0,"tombstone":true,"not_after":1790000000000,"claimed_at":1790000000000}}"#
        );
        pipe.pset_ex(format!("{id}:ticket:{}", uuid::Uuid::new_v4()), json, 3_600_000).ignore();
        if i % 10_000 == 9_999 || i + 1 == count {
            let _: () = pipe.query_async(&mut redis).await.expect("write old records");
            pipe = redis::pipe();
        }
    }
    let (_, usage) = ticket_record(&mut redis).await.expect("an old record");
    let now = redis_memory(&mut redis).await;
    println!(
        "previous version: {count} finished tickets kept an hour take {} ({usage} bytes each by MEMORY USAGE)",
        mib(now.saturating_sub(empty) as f64)
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |default: usize| args.get(1).map(|n| n.parse().expect("a number")).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("queues") => queues(number(200)).await,
        Some("fleet") => fleet(args.get(1).map(|n| n.parse().expect("a number"))).await,
        Some("fanout") => fanout(number(500)).await,
        Some("tickets") => tickets(number(100_000)).await,
        _ => eprintln!("usage: capacity queues [N] | fleet [LIMIT] | fanout [AGENTS] | tickets [COUNT]"),
    }
}
