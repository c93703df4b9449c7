//! Capacity: what a ticket costs in Redis and for how long, queues of ephemeral identities that
//! expire, queues declared with other arguments, and a broker that accepts connections but never
//! answers.

use contracts::time::unix_millis;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::exit_code;
use contracts::wire::messages::{CompleteScriptV2, ScriptSpec, StartScriptV2};
use contracts::wire::status::ScriptState;
use contracts::wire::ticket::Ticket;
use contracts::wire::topology::amqp::command_queue_arguments;
use contracts::wire::topology::{agent_queue, pool_queue, pool_service_queue};
use dispatcher::rpc::CallTiming;
use edge::connect::broker::SILENT_BROKER;
use lapin::options::QueueDeclareOptions;
use lapin::{Connection, ConnectionProperties};
use std::time::{Duration, SystemTime};
use tests::agent::test_config;
use tests::*;

/// The most a finished ticket may cost in Redis, as `MEMORY USAGE` counts it (key, value and
/// the object around them).
const MAX_FINISHED_TICKET_BYTES: u64 = 200;

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("redis url");
    client.get_multiplexed_async_connection().await.expect("the test redis must be running")
}

async fn memory_usage(con: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(con).await.expect("memory usage")
}

fn record_key(agent: &TestAgent, ticket: &Ticket) -> String {
    format!("{}ticket:{}", agent.config.key_prefix, ticket.store_key())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_ticket_costs_at_most_200_bytes_in_redis_and_lives_only_until_its_deadline() {
    let agent = TestAgent::start("cap-cost").await;
    let orchestrator = orchestrator().await;
    let mut con = redis().await;
    // tests::submit gives the script a 30 s retry duration: its start's deadline.
    let (outcome, _) = submit(&orchestrator, &agent.route(), sh("echo hi")).await;
    assert_eq!(outcome.exit_code, Some(0));
    let ticket = outcome.ticket.clone().expect("a ticket");
    let key = record_key(&agent, &ticket);
    // CompleteScript is sent without waiting for the agent: wait for its tombstone.
    let raw: String = eventually("the ticket's tombstone", Duration::from_secs(15), || {
        let (mut con, key) = (con.clone(), key.clone());
        async move {
            let raw: Option<String> = redis::AsyncCommands::get(&mut con, &key).await.ok()?;
            raw.filter(|r| r.starts_with("2|t|"))
        }
    })
    .await;
    assert_eq!(raw, format!("2|t|0|{}", &sh("echo hi").digest()[..32]));
    let bytes = memory_usage(&mut con, &key).await;
    assert!(bytes <= MAX_FINISHED_TICKET_BYTES, "a finished ticket costs {bytes} bytes in Redis");
    let ttl_ms: i64 = redis::AsyncCommands::pttl(&mut con, &key).await.unwrap();
    let skew = contracts::wire::topology::CLOCK_SKEW_ALLOWANCE_MS as i64;
    assert!(
        ttl_ms > 15_000 && ttl_ms <= 30_000 + 2 * skew + 1,
        "kept until the deadline plus skew, not an hour: {ttl_ms} ms"
    );
    // Nothing else is left of the ticket: no log, lease, cancel flag, running-set entry or
    // receipt once the broker has it; the agent id's receipt chain head stays (one per agent).
    let pending = format!("{}agent:{}:receipts:pending", agent.config.key_prefix, agent.id());
    eventually("the receipt published and dropped from the store", Duration::from_secs(15), || {
        let (mut con, pending) = (con.clone(), pending.clone());
        async move { (!redis::AsyncCommands::exists::<_, bool>(&mut con, &pending).await.ok()?).then_some(()) }
    })
    .await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", agent.config.key_prefix)).query_async(&mut con).await.unwrap();
    let per_agent = |k: &&String| k.ends_with(":epoch") || k.ends_with(":receipts:head");
    let mut others: Vec<&String> = keys.iter().filter(|k| **k != key && !per_agent(k)).collect();
    others.sort();
    assert!(others.is_empty(), "left behind: {others:?}");
    agent.stop().await;
}

fn timing() -> CallTiming {
    CallTiming { reply_timeout: Duration::from_secs(30), not_after: SystemTime::now() + Duration::from_secs(60) }
}

fn start(ticket: &Ticket, spec: ScriptSpec) -> Request {
    Request::StartScriptV2(StartScriptV2 { ticket: ticket.clone(), spec, wait_for_output: None, first_issued_at: None })
}

async fn status_of(reply: Result<Reply, dispatcher::error::RpcError>) -> (ScriptState, Option<i32>) {
    match reply.expect("answered") {
        Reply::ScriptStatus(status) => (status.state, status.exit_code),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_by_the_previous_version_are_understood_after_an_upgrade() {
    let agent = TestAgent::start("cap-upgrade").await;
    let orchestrator = orchestrator().await;
    let mut con = redis().await;
    let markers = Markers::new();
    let spec = sh(markers.record("run"));
    let digest = spec.digest();
    let id = agent.id().to_owned();
    let not_after = unix_millis(SystemTime::now()) + 60_000;
    // Exactly as the previous version wrote them (JSON), for a run that ended but was not yet
    // completed, a tombstone, and a run whose agent died.
    let ended = edge::entropy::ticket();
    let tombstone = edge::entropy::ticket();
    let lost = edge::entropy::ticket();
    let old = [
        (
            &ended,
            format!(
                r#"{{"owner":"{id}/old","agent_id":"{id}","digest":"{digest}","state":"Complete","exit_code":7,"tombstone":false,"not_after":{not_after},"claimed_at":1}}"#
            ),
        ),
        (
            &tombstone,
            format!(
                r#"{{"owner":"{id}/old","agent_id":"{id}","digest":"{digest}","state":"Complete","exit_code":0,"tombstone":true,"not_after":{not_after},"claimed_at":1}}"#
            ),
        ),
        (
            &lost,
            format!(
                r#"{{"owner":"{id}/old","agent_id":"{id}","digest":"{digest}","state":"Running","exit_code":null,"tombstone":false,"not_after":{not_after},"claimed_at":1}}"#
            ),
        ),
    ];
    for (ticket, json) in &old {
        let _: () = redis::AsyncCommands::pset_ex(&mut con, record_key(&agent, ticket), json, 60_000).await.unwrap();
    }
    let route = agent.route();
    let repeat = |ticket: &Ticket| {
        let request = start(ticket, spec.clone());
        let (orchestrator, route) = (&orchestrator, &route);
        async move { orchestrator.rpc().call(route, &request, timing()).await }
    };
    assert_eq!(status_of(repeat(&ended).await).await, (ScriptState::Complete, Some(7)));
    assert_eq!(status_of(repeat(&tombstone).await).await, (ScriptState::Complete, Some(0)));
    assert_eq!(status_of(repeat(&lost).await).await, (ScriptState::Complete, Some(exit_code::UNKNOWN_RESULT)));
    let other = orchestrator.rpc().call(&route, &start(&tombstone, sh("echo other")), timing()).await;
    assert_eq!(other.unwrap_err().agent_error(), Some(ErrorKind::TicketConflict));
    assert_eq!(markers.count("run"), 0, "no script ran again");
    // Completing an old record leaves a new, compact tombstone.
    let complete = Request::CompleteScriptV2(CompleteScriptV2::new(ended.clone()));
    assert_eq!(status_of(orchestrator.rpc().call(&route, &complete, timing()).await).await.1, Some(7));
    let raw: String = redis::AsyncCommands::get(&mut con, record_key(&agent, &ended)).await.unwrap();
    assert_eq!(raw, format!("2|t|7|{}", &digest[..32]));
    assert_eq!(status_of(repeat(&ended).await).await, (ScriptState::Complete, Some(7)));
    assert_eq!(markers.count("run"), 0, "no script ran again");
    agent.stop().await;
}

/// Whether a queue exists with exactly these arguments: the broker refuses (and closes the
/// channel) a declare whose arguments differ, and a missing queue would be created, so this is
/// only asked of queues known to exist.
async fn declared_with(queue: &str, expiry: Option<Duration>) -> bool {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    let same = channel.queue_declare(queue.into(), options, command_queue_arguments(expiry)).await.is_ok();
    let _ = connection.close(200, "done".into()).await;
    same
}

async fn queue_exists(queue: &str) -> bool {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let exists = channel.queue_declare(queue.into(), passive, Default::default()).await.is_ok();
    let _ = connection.close(200, "done".into()).await;
    exists
}

async fn delete_pool_queues(pool: &str) {
    raw::delete_queue(&pool_queue(pool)).await;
    raw::delete_queue(&pool_service_queue(pool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_workers_queues_expire_after_ten_minutes_unused_by_default_and_standalone_agents_keep_theirs() {
    let pool = unique("cap-pool");
    let mut worker = test_config("cap-worker");
    worker.pool = Some(pool.clone());
    let mut kept = test_config("cap-kept");
    kept.pool = Some(pool.clone());
    kept.queue_expiry = Some(Duration::ZERO);
    let standalone = test_config("cap-edge");
    let mut processes = Vec::new();
    for config in [worker, kept, standalone] {
        processes.push(AgentProcess::start(config).await);
    }
    let queues: Vec<String> = processes.iter().map(|p| agent_queue(&p.config.agent_id)).collect();
    assert!(declared_with(&queues[0], Some(Duration::from_secs(600))).await, "a pool worker's queue expires in 10 min");
    assert!(declared_with(&queues[1], None).await, "--queue-expiry 0 keeps a pool worker's queue");
    assert!(declared_with(&queues[2], None).await, "a standalone agent's queue is kept");
    for process in processes {
        process.stop().await;
    }
    delete_pool_queues(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_workers_queue_goes_once_the_worker_has_been_gone_for_its_queue_expiry() {
    let pool = unique("cap-expire");
    let mut config = test_config("cap-gone");
    config.pool = Some(pool.clone());
    config.queue_expiry = Some(Duration::from_secs(2));
    let queue = agent_queue(&config.agent_id);
    let mut worker = AgentProcess::start(config).await;
    assert!(declared_with(&queue, Some(Duration::from_secs(2))).await);
    worker.kill().await;
    eventually("the worker's queue to expire", Duration::from_secs(30), || {
        let queue = queue.clone();
        async move { (!queue_exists(&queue).await).then_some(()) }
    })
    .await;
    assert!(queue_exists(&pool_queue(&pool)).await, "the pool's own queues are shared and kept");
    worker.stop().await;
    delete_pool_queues(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_uses_its_queue_as_it_is_when_it_exists_with_other_arguments() {
    let mut config = test_config("cap-other");
    config.queue_expiry = Some(Duration::from_secs(60));
    let queue = agent_queue(&config.agent_id);
    // Declared earlier without an expiry (by an older agent, or without the flag).
    assert!(declared_with(&queue, None).await);
    let agent = AgentProcess::start(config).await;
    let out = dispatcher_command().args(["capabilities", &agent.config.agent_id]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = agent.log_text();
    assert_eq!(log.matches("the queue exists with other arguments").count(), 1, "one notice, no loop: {log}");
    assert!(declared_with(&queue, None).await, "the queue was left as it was");
    agent.stop().await;
}

/// A TCP listener that accepts every connection and never says a word, as a broker out of file
/// descriptors does.
async fn silent_broker() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap());
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, accepting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_accepts_connections_but_never_answers_is_named_by_dispatcher_and_agent() {
    let (url, listener) = silent_broker().await;
    let out = dispatcher_command()
        .env("CUTTLE_AMQP_URL", &url)
        .args(["capabilities", "t-anyone", "--retry-duration", "1s", "--connect-timeout", "1s"])
        .output()
        .await
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(101), "{said}");
    assert!(said.contains(SILENT_BROKER), "{said}");
    let mut config = test_config("cap-silent");
    config.amqp_url = url;
    let command = AgentProcess::command(&config);
    let mut agent = AgentProcess::spawn_command(config, command);
    eventually("the agent to name the silent broker", Duration::from_secs(30), || {
        let log = agent.log_text();
        async move { log.contains(SILENT_BROKER).then_some(()) }
    })
    .await;
    agent.config.amqp_url = amqp_url();
    agent.stop().await;
    listener.abort();
}
