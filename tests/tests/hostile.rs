//! A hostile message, script or neighbour on the agent's machine: each test makes the attack by
//! hand, against the real broker and store, and shows it refused (issue "hostile").

use contracts::wire::envelope::Reply;
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::{Isolation, ScriptFile, SERVICE_SCRIPT_V2};
use contracts::wire::status::{LogLine, LogStream, OUTPUT_TRUNCATED};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tests::agent::test_config;
use tests::raw::envelope;
use tests::*;

/// Peak resident memory of a process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") / 1024
}

async fn still_serving(agent_id: &str) {
    let orchestrator = orchestrator().await;
    let route = dispatcher::route::Route::agent(agent_id).unwrap();
    let caps = orchestrator
        .capabilities(&route, contracts::submission::retry::RetryPolicy::new(Duration::from_secs(10)), &|_| {})
        .await;
    assert!(caps.unwrap().supports(SERVICE_SCRIPT_V2), "the agent keeps serving");
}

/// Publishes a hand-made message and expects it refused as invalid and dead-lettered.
async fn refused_as_invalid(raw: &mut RawBroker, agent_id: &str, kind: &str, body: serde_json::Value) -> String {
    let id = raw.publish(agent_id, kind, &envelope(kind, body)).await;
    let Reply::Error(error) = raw.reply(&id).await else { panic!("{kind} must be refused") };
    assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
    assert_eq!(raw.dead_letter(&id).await.reason.as_deref(), Some("rejected"));
    error.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_that_is_not_a_plain_name_is_refused_and_nothing_beside_the_work_dir_is_touched() {
    let mut config = test_config("dotdot");
    let base = config.work_dir.clone();
    config.work_dir = base.join("work");
    std::fs::create_dir_all(&base).unwrap();
    let neighbour = base.join("neighbour");
    std::fs::write(&neighbour, "still here").unwrap();
    let agent = TestAgent::start_with(config).await;
    let markers = Markers::new();
    let mut raw = RawBroker::connect().await;
    // Today `..` runs in the work dir's parent, and its CompleteScriptV2 deletes that parent.
    for ticket in ["..", ".", "a/b", "x\u{1b}[2J", "a.b"] {
        let start = json!({"ticket": ticket, "script": markers.record("ran")});
        let message = refused_as_invalid(&mut raw, agent.id(), "StartScriptV2", start).await;
        assert!(message.contains("ticket"), "{message}");
        refused_as_invalid(&mut raw, agent.id(), "CompleteScriptV2", json!({"ticket": ticket})).await;
        refused_as_invalid(&mut raw, agent.id(), "GetStatusV2", json!({"ticket": ticket})).await;
    }
    assert_eq!(markers.count("ran"), 0, "nothing ran");
    assert_eq!(std::fs::read_to_string(&neighbour).unwrap(), "still here");
    still_serving(agent.id()).await;
    raw.close().await;
    agent.stop().await;
    std::fs::remove_dir_all(&base).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_that_is_not_direct_reply_to_is_refused_and_nothing_is_published_there() {
    let agent = TestAgent::start("reply-to").await;
    let markers = Markers::new();
    // A queue the hostile sender would like the agent to publish into (another agent's, say).
    let victim = TestAgent::start("victim").await;
    let victim_queue = contracts::wire::topology::agent_queue(victim.id());
    let mut raw = RawBroker::connect().await;
    let start = json!({"ticket": edge::entropy::ticket(), "script": markers.record("ran")});
    let id =
        raw.publish_replying_to(agent.id(), "StartScriptV2", &envelope("StartScriptV2", start), &victim_queue).await;
    assert_eq!(raw.dead_letter(&id).await.reason.as_deref(), Some("rejected"));
    still_serving(agent.id()).await;
    assert_eq!(markers.count("ran"), 0, "nothing ran");
    assert_eq!(tests::raw::queue_depth(&victim_queue).await, 0, "nothing was published to the victim's queue");
    raw.close().await;
    agent.stop().await;
    victim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_comes_from_the_agents_path_never_from_the_commands_env() {
    let agent = TestAgent::start("shell-path").await;
    let markers = Markers::new();
    // A `sh` the command would like to be run by.
    let planted = markers.dir.join("bin");
    std::fs::create_dir_all(&planted).unwrap();
    let fake_sh = planted.join("sh");
    std::fs::write(&fake_sh, format!("#!/bin/sh\n{}\n", markers.record("planted"))).unwrap();
    std::fs::set_permissions(&fake_sh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = sh("echo \"path=$PATH\"");
    spec.env.insert("PATH".into(), planted.display().to_string());
    let (outcome, lines) = submit(&orchestrator().await, &agent.route(), spec).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(
        texts(&lines, LogStream::Stdout),
        vec![format!("path={}", planted.display())],
        "the script has its PATH"
    );
    assert_eq!(markers.count("planted"), 0, "the planted shell never ran");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_are_0700_and_the_files_written_into_them_0600() {
    let agent = TestAgent::start("private-files").await;
    let mut spec = sh(format!("stat -c '%a %n' . secret.txt script.sh; # {}", "x".repeat(70 * 1024)));
    spec.files.push(ScriptFile { name: "secret.txt".into(), content: b"token".to_vec() });
    let (outcome, lines) = submit(&orchestrator().await, &agent.route(), spec).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?} {lines:?}");
    assert_eq!(texts(&lines, LogStream::Stdout), vec!["700 .", "600 secret.txt", "600 script.sh"]);
    agent.stop().await;
}

/// Empty strings take one byte each on the wire and 24 once decoded: today one message of
/// 16 MiB of them decodes into more than 512 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_would_decode_into_a_huge_value_is_refused_and_the_agent_stays_small() {
    let agent = AgentProcess::start(test_config("decode-bomb")).await;
    let pid = agent.pid().expect("running");
    let before = peak_rss_mib(pid);
    let small = envelope("StartScriptV2", json!({"ticket": edge::entropy::ticket(), "script": "true", "args": []}));
    let at = small.windows(6).position(|w| w == b"\xa4args\x90").expect("the args field") + 5;
    let count = contracts::wire::topology::MAX_MESSAGE_BYTES - small.len() - 16;
    let mut bomb = small[..at].to_vec();
    bomb.push(0xdd);
    bomb.extend_from_slice(&(count as u32).to_be_bytes());
    bomb.resize(bomb.len() + count, 0xa0);
    bomb.extend_from_slice(&small[at + 1..]);
    assert!(bomb.len() <= contracts::wire::topology::MAX_MESSAGE_BYTES);
    let mut raw = RawBroker::connect().await;
    let id = raw.publish(&agent.config.agent_id, "StartScriptV2", &bomb).await;
    let Reply::Error(error) = raw.reply(&id).await else { panic!("the bomb must be refused") };
    assert_eq!(error.kind, ErrorKind::Invalid, "{error}");
    assert!(error.message.contains("too complex"), "{error}");
    assert_eq!(raw.dead_letter(&id).await.reason.as_deref(), Some("rejected"));
    still_serving(&agent.config.agent_id).await;
    let after = peak_rss_mib(pid);
    eprintln!("agent peak RSS: {before} MiB before, {after} MiB after a {} MiB message", bomb.len() >> 20);
    assert!(after < 150, "peak RSS {after} MiB after one {} byte message", bomb.len());
    raw.close().await;
    agent.stop().await;
}

/// A seal by the trusted dispatcher's key that does not verify.
fn bad_seal() -> contracts::trust::seal::Seal {
    contracts::trust::seal::Seal::Signature { key: tests::trust::keys().dispatcher.id(), signature: [7; 64] }
}

/// Today the agent verifies a message's seal (over a copy of it) before its size is checked: a
/// message over the limit with a bad signature is refused as a bad signature, after the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_agents_limit_is_refused_as_too_large_before_its_seal_is_checked() {
    tests::skip_unless!(tests::needs::private_rabbit());
    // A broker that lets larger messages through than Cuttle's config does (RabbitMQ 3 takes
    // 128 MiB by default): the agent's own limit is then all there is.
    let limit = contracts::wire::topology::MAX_MESSAGE_BYTES;
    let rabbit =
        tests::services::PrivateRabbit::start_with_settings(&format!("max_message_size = {}\n", 2 * limit)).await;
    let mut config = test_config("oversized");
    config.amqp_url = rabbit.amqp_url();
    let agent = AgentProcess::start(config.clone()).await;
    let mut raw = RawBroker::connect_to(&rabbit.amqp_url()).await;
    let queue = contracts::wire::topology::agent_queue(&config.agent_id);
    let id = raw.publish_to(&queue, "StartScriptV2", &vec![0x90u8; limit + 1], Some(&bad_seal())).await;
    let Reply::Error(error) = raw.reply(&id).await else { panic!("the message must be refused") };
    assert_eq!(error.kind, ErrorKind::Invalid, "refused as too large, not as a bad signature: {error}");
    assert!(error.message.contains("over the limit"), "{error}");
    assert_eq!(raw.dead_letter(&id).await.reason.as_deref(), Some("rejected"));
    assert!(!agent.log_text().contains("does not verify"), "its seal was never checked");
    // Within the limit, the same seal is checked, and refused.
    let id = raw.publish_to(&queue, "StartScriptV2", &vec![0x90u8; 1024], Some(&bad_seal())).await;
    let Reply::Error(error) = raw.reply(&id).await else { panic!("the message must be refused") };
    assert_eq!(error.kind, ErrorKind::NotAuthorized, "{error}");
    raw.close().await;
    agent.stop().await;
}

/// Whether the broker at `url` takes a message of `size` bytes: published in confirm mode on a
/// connection of its own (the broker closes the channel of one it refuses), it is confirmed.
async fn broker_takes(url: &str, size: usize) -> bool {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
    let body = vec![0u8; size];
    let publish = channel.basic_publish(
        "".into(),
        unique("nowhere").as_str().into(),
        BasicPublishOptions::default(),
        &body,
        lapin::BasicProperties::default(),
    );
    let taken = tokio::time::timeout(Duration::from_secs(30), async {
        match publish.await {
            Ok(confirm) => matches!(confirm.await, Ok(lapin::Confirmation::Ack(_))),
            Err(_) => false,
        }
    })
    .await
    .expect("the broker confirms or refuses within 30 s");
    let _ = connection.close(200, "done".into()).await;
    taken
}

/// Today no broker Cuttle starts has a message limit but `deploy/rabbitmq/rabbitmq.conf`: RabbitMQ
/// 3 takes 128 MiB, and the agent held a 100 MiB message whole (and a copy of it), 234 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_at_the_brokers_limit_arriving_together_keep_the_agent_within_its_bound() {
    tests::skip_unless!(tests::needs::private_rabbit());
    let rabbit = tests::services::PrivateRabbit::start().await;
    let limit = tests::services::shipped_max_message_size();
    assert_eq!(limit, contracts::wire::topology::MAX_MESSAGE_BYTES, "the broker's limit is the agents'");
    assert!(broker_takes(&rabbit.amqp_url(), limit).await, "a message at the limit passes");
    assert!(!broker_takes(&rabbit.amqp_url(), limit + 1).await, "the shipped config refuses one byte more");
    let mut config = test_config("at-the-limit");
    config.amqp_url = rabbit.amqp_url();
    let mut agent = AgentProcess::start(config.clone()).await;
    let idle = peak_rss_mib(agent.pid().expect("running"));
    // Queued while the agent is away, so they arrive together: the worst case.
    agent.kill().await;
    let mut raw = RawBroker::replies_only(&rabbit.amqp_url()).await;
    let queue = contracts::wire::topology::agent_queue(&config.agent_id);
    let body = vec![0x90u8; limit];
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(raw.publish_to(&queue, "StartScriptV2", &body, Some(&bad_seal())).await);
    }
    drop(body);
    agent.restart().await;
    let pid = agent.pid().expect("running");
    // Refused concurrently, so answered in any order: waited for together.
    for (_, body) in raw.sealed_replies(&ids).await {
        let Ok(Reply::Error(error)) = Reply::decode(&body) else { panic!("every message must be refused") };
        assert_eq!(error.kind, ErrorKind::NotAuthorized, "{error}");
    }
    let peak = peak_rss_mib(pid);
    let prefetch = worker_agent::config::DEFAULT_PREFETCH as u64;
    eprintln!("20 messages of {limit} bytes with bad signatures at once: agent peak RSS {peak} MiB ({idle} MiB idle; --prefetch {prefetch})");
    // Each message held whole once (the body lapin assembles, up to half again while it grows),
    // never copied: at most 20 of them, and never more than the prefetch.
    let held = 20.min(prefetch) * (limit as u64 >> 20);
    assert!(peak <= idle + held * 3 / 2 + 32, "peak RSS {peak} MiB, {idle} MiB idle: over {held} MiB of messages");
    assert!(!process_gone(pid), "the agent keeps running");
    raw.close().await;
    agent.stop().await;
}

/// Today every distinct mutex name stays in the agent's table for good (15 to 745 MiB of RSS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_mutex_names_are_freed_once_unused() {
    let agent = TestAgent::start("mutex-names").await;
    let orchestrator = orchestrator().await;
    for i in 0..20 {
        let mut spec = sh("true");
        spec.mutex_name = Some(format!("never-again-{i}"));
        spec.isolation = if i % 2 == 0 { Isolation::Full } else { Isolation::None };
        let (outcome, _) = submit(&orchestrator, &agent.route(), spec).await;
        assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    }
    eventually("every mutex name to be freed", Duration::from_secs(10), || async {
        (agent.agent.isolation_mutexes() == 0).then_some(())
    })
    .await;
    agent.stop().await;
}

/// Today the agent reads a script's pipes as fast as the script writes, whatever the store
/// takes: its memory grows with the output while the store is slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_of_output_to_a_slow_store_keeps_the_agent_small_and_ends_with_the_cap_notice() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = tests::services::PrivateRedis::start(false).await;
    let store_link = tests::proxy::FaultProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    store_link.set_latency(Duration::from_millis(2));
    let mut config = test_config("gib-output");
    config.redis_url = format!("redis://{}", store_link.addr());
    // The stall below must not outlast the lease (a store gone longer loses the run).
    config.lease_ttl = Duration::from_secs(15);
    let agent = AgentProcess::start(config).await;
    let pid = agent.pid().expect("running");
    // 1 GiB in lines of 8,001 bytes; the default --max-output keeps the first 256 MiB.
    let spec = sh("yes \"$(printf '%08000d' 0)\" | head -c 1073741824");
    let (stdout_bytes, stdout_lines, notices) =
        (AtomicU64::new(0), AtomicU64::new(0), std::sync::Mutex::new(Vec::new()));
    let events = |event| {
        if let dispatcher::orchestrator::Event::Log(line) = event {
            match line.stream {
                LogStream::Stdout => {
                    stdout_bytes.fetch_add(line.text.len() as u64, Ordering::Relaxed);
                    stdout_lines.fetch_add(1, Ordering::Relaxed);
                }
                _ => notices.lock().unwrap().push(line.text),
            }
        }
    };
    let orchestrator = orchestrator().await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let policy = contracts::submission::retry::RetryPolicy::new(Duration::from_secs(60));
    let never = tokio_util::sync::CancellationToken::new();
    let submitted = orchestrator.submit(&route, spec, policy, &events, &never);
    // The store stops answering for a while in the middle: the agent waits, and loses nothing.
    let stall = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        store_link.hold();
        tokio::time::sleep(Duration::from_secs(3)).await;
        store_link.release();
    };
    let (outcome, ()) = tokio::time::timeout(Duration::from_secs(300), futures_util::future::join(submitted, stall))
        .await
        .expect("the script and its output within 5 minutes");
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    let peak = peak_rss_mib(pid);
    let (bytes, lines) = (stdout_bytes.load(Ordering::Relaxed), stdout_lines.load(Ordering::Relaxed));
    let notices = notices.into_inner().unwrap();
    eprintln!("1 GiB of output, slow store: {lines} lines ({} MiB) kept and delivered, agent peak RSS {peak} MiB, notices {notices:?}", bytes >> 20);
    let cap = worker_agent::config::DEFAULT_MAX_OUTPUT;
    assert_eq!(
        lines,
        cap / worker_agent::output::stored_cost(8_000),
        "every line within the cap arrives (8,000 bytes each without the newline, and what the store keeps beside it)"
    );
    assert!(
        notices.iter().any(|n| n.starts_with(OUTPUT_TRUNCATED) && n.contains("lines of output past")),
        "{notices:?}"
    );
    assert!(peak < 100, "agent peak RSS {peak} MiB");
    agent.stop().await;
    redis.stop().await;
}

/// What Redis holds for one ticket's keys under an agent's key prefix, in bytes (`MEMORY USAGE`
/// with `SAMPLES 0`: every node of the log list counted, not an estimate from five).
async fn store_bytes_of_ticket(key_prefix: &str, ticket: &str) -> u64 {
    let keys = contracts::store::TicketKeys::new(key_prefix, ticket);
    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis");
    let mut bytes = 0;
    for key in [&keys.record, &keys.lease, &keys.logs, &keys.cancel, &keys.lines_written] {
        let usage: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query_async(&mut con).await.unwrap();
        bytes += usage.unwrap_or(0);
    }
    bytes
}

/// Today `--max-output` counts only each line's text: 200,000 empty lines count 0 bytes, are all
/// stored (about 8.5 MB of Redis, 42 bytes each) and the output is not reported truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_count_against_max_output_and_the_store_holds_no_more_than_the_cap_allows() {
    use tokio::io::AsyncBufReadExt;
    let mut config = test_config("empty-lines");
    let cap: u64 = 16 * 1024;
    config.max_output = cap;
    let agent = AgentProcess::start(config.clone()).await;
    let markers = Markers::new();
    let release = markers.dir.join("release");
    // The script then waits, so the store is measured before the dispatcher completes the ticket
    // (which deletes its log).
    let script = format!(
        "yes '' | head -n 200000; i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
        release.display()
    );
    let mut submit = dispatcher_command()
        .args(["submit", "--json", "--target", &config.agent_id, "--", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut events = tokio::io::BufReader::new(submit.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&events.next_line().await.unwrap().unwrap()).unwrap();
    let ticket = first["ticket"].as_str().expect("the ticket event").to_lowercase();
    let keys = contracts::store::TicketKeys::new(&config.key_prefix, &ticket);
    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("redis");
    // Lines go to the store in order: once the cap's notice is the last stored, all the script's
    // kept lines are stored, and nothing more of its output will be.
    eventually("the notice that the cap was reached to be stored", Duration::from_secs(60), || {
        let (mut con, log) = (con.clone(), keys.logs.clone());
        async move {
            let last: Option<Vec<u8>> = redis::cmd("LINDEX").arg(&log).arg(-1).query_async(&mut con).await.ok()?;
            let line: LogLine = rmp_serde::from_slice(&last?).ok()?;
            (line.stream == LogStream::Agent && line.text.starts_with(OUTPUT_TRUNCATED)).then_some(())
        }
    })
    .await;
    let stored_lines: u64 = redis::cmd("LLEN").arg(&keys.logs).query_async(&mut con).await.unwrap();
    let stored = store_bytes_of_ticket(&config.key_prefix, &ticket).await;
    // Redis holds at most 1.25 bytes per byte counted against the cap (its allocator's size
    // classes; docs/security.md, "Hostile scripts and messages", Memory), plus the agent's notice,
    // the record and the lease.
    let bound = cap * 5 / 4 + 4 * 1024;
    eprintln!(
        "200,000 empty lines under --max-output {cap}: {stored_lines} lines, {stored} bytes of Redis for the ticket"
    );
    assert_eq!(
        stored_lines,
        cap / worker_agent::output::STORED_LINE_OVERHEAD + 1,
        "the lines within the cap, and the notice"
    );
    assert!(stored <= bound, "the store holds {stored} bytes for the ticket, more than {bound}");
    std::fs::write(&release, "").unwrap();
    let mut result = None;
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(60), events.next_line()).await.expect("submit ends").unwrap()
    {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "result" {
            result = Some(event);
        }
    }
    let result = result.expect("a result event");
    assert_eq!(result["exit_code"], 0, "{result}");
    assert_eq!(result["output_truncated"], true, "{result}");
    drop(submit);
    agent.stop().await;
}
