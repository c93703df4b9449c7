//! Ctrl-C and cancel as a user sees them through the binaries: nothing sent after an early
//! Ctrl-C, a cancel queued for an agent that is down, a cancel that races the claim, an unknown
//! ticket, detaching from `status --follow`, a cancel repeated with `--no-retries`, a fan-out
//! interrupted, a legacy agent that said nothing was started, and Ctrl-C while connecting to a
//! broker that never answers.

use contracts::time::unix_millis;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::exit_code;
use contracts::wire::messages::{
    CancelScriptV2, Capabilities, GetStatusV2, StartScriptV2, SERVICE_CAPABILITIES, SERVICE_SCRIPT_V1,
    SERVICE_SCRIPT_V2,
};
use contracts::wire::topology::agent_queue;
use dispatcher::rpc::CallTiming;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use tests::proxy::FaultProxy;
use tests::raw::queue_depth;
use tests::*;
use tokio::io::AsyncBufReadExt;

fn spawn_dispatcher(args: &[&str]) -> tokio::process::Child {
    dispatcher_command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_before_the_start_was_sent_stops_at_once_and_sends_nothing() {
    // Asking for capabilities of an agent that is not consuming: the request waits in its queue.
    let agent = queue_without_agent("int-caps").await;
    let queue = agent_queue(agent.id());
    let markers = Markers::new();
    let child = spawn_dispatcher(&["submit", "--target", agent.id(), "--", &markers.record("run")]);
    eventually("the capabilities request to be queued", Duration::from_secs(20), || async {
        (queue_depth(&queue).await == 1).then_some(())
    })
    .await;
    let interrupted = Instant::now();
    sigint(&child);
    let (code, stderr) = ended(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(112), "{stderr}");
    assert!(stderr.contains("interrupted before the script was sent; nothing ran"), "{stderr}");
    assert!(interrupted.elapsed() < Duration::from_secs(3), "at once, not after the request's deadline");
    assert_eq!(queue_depth(&queue).await, 1, "nothing was sent after Ctrl-C: no start, no repeat");

    // While the broker cannot be reached and the connection is retried.
    let child = spawn_dispatcher(&[
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "submit",
        "--target",
        "x",
        "--",
        "true",
    ]);
    let mut child = child;
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), stderr.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.contains("attempt 1 failed"), "{first}");
    sigint(&child);
    let (code, _) = ended(child, Duration::from_secs(3)).await;
    let mut rest = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        rest.push_str(&line);
    }
    assert_eq!(code, Some(112), "{rest}");
    assert!(rest.contains("nothing ran"), "{rest}");
    agent.stop().await;
}

/// A broker whose AMQP handshake hangs (one out of file handles does that): it accepts TCP
/// connections, keeps them open and never says a word.
struct SilentBroker {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBroker {
    async fn start() -> SilentBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        SilentBroker { addr, accepted, task }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.addr.port())
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SilentBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Ctrl-C while connecting to a broker that accepts TCP and never answers the AMQP handshake,
/// under a 20 s connect timeout: the dispatcher ends at once (it used to wait out the connect
/// timeout), says nothing ran, exits 112, and ends without a panic of the AMQP client's thread
/// (which came after the last line in some runs, from connections still being made when the
/// process ended: hence several runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_connecting_to_a_broker_that_never_answers_ends_at_once() {
    let broker = SilentBroker::start().await;
    let target = unique("int-silent");
    for run in 1..=3 {
        let connected = broker.accepted();
        let child = dispatcher_command()
            .env("CUTTLE_AMQP_URL", broker.url())
            .args(["submit", "--connect-timeout", "20s", "--no-retries", "--target", &target, "--", "true"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        eventually("the dispatcher to connect", Duration::from_secs(20), || async {
            (broker.accepted() > connected).then_some(())
        })
        .await;
        let interrupted = Instant::now();
        sigint(&child);
        let (code, stderr) = ended(child, Duration::from_secs(15)).await;
        let took = interrupted.elapsed();
        println!("run {run}: ended {took:?} after Ctrl-C");
        // At once: well under a second on an idle machine; slack for a loaded one.
        assert!(took < Duration::from_secs(2), "run {run}: ended {took:?} after Ctrl-C: {stderr}");
        assert_eq!(code, Some(112), "run {run}: {stderr}");
        assert!(stderr.contains("interrupted before the script was sent; nothing ran"), "run {run}: {stderr}");
        assert!(!stderr.contains("panicked"), "run {run}: {stderr}");
    }
}

/// Answers the next capabilities request on `queue` as a current agent would, after taking
/// itself off the queue, so that what comes next (the start) waits there.
async fn answer_capabilities_once(queue: String) {
    let connection = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(queue.as_str().into(), "fake".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let delivery = consumer.next().await.expect("a request").expect("delivery");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    channel.basic_cancel("fake".into(), BasicCancelOptions::default()).await.unwrap();
    let reply = Reply::Capabilities(Capabilities {
        services: vec![SERVICE_CAPABILITIES.into(), SERVICE_SCRIPT_V1.into(), SERVICE_SCRIPT_V2.into()],
        agent_version: "fake".into(),
        limits: None,
        approvals: None,
    });
    let correlation_id = delivery.properties.correlation_id().clone().expect("correlation id");
    let reply_to = delivery.properties.reply_to().clone().expect("reply-to");
    let body = reply.encode("fake", unix_millis(SystemTime::now()), &mut edge::entropy::OsEntropy).unwrap();
    // Answering in the test agent's name, with its key: the dispatcher believes it.
    let seal = tests::trust::keys().agent.seal_answer(correlation_id.as_str(), &body);
    let properties =
        contracts::trust::amqp::with_seal(lapin::BasicProperties::default(), &seal).with_correlation_id(correlation_id);
    channel
        .basic_publish("".into(), reply_to.as_str().into(), BasicPublishOptions::default(), &body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_agent_is_down_queues_the_cancel_and_the_start_never_runs_to_its_end() {
    let agent = queue_without_agent("int-down").await;
    let queue = agent_queue(agent.id());
    let markers = Markers::new();
    let done = markers.dir.join("done");
    let script = format!("{}; sleep 5; touch '{}'", markers.record("run"), done.display());
    let fake = tokio::spawn(answer_capabilities_once(queue.clone()));
    let child = spawn_dispatcher(&["submit", "--target", agent.id(), "--", &script]);
    fake.await.unwrap();
    eventually("the start to be queued", Duration::from_secs(20), || async {
        (queue_depth(&queue).await == 1).then_some(())
    })
    .await;
    let interrupted = Instant::now();
    sigint(&child);
    let (code, stderr) = ended(child, Duration::from_secs(10)).await;
    assert!(interrupted.elapsed() < Duration::from_secs(3), "said at once: {:?}", interrupted.elapsed());
    assert_eq!(code, Some(106), "{stderr}");
    assert!(stderr.contains("cancel queued; the agent will stop the script when it returns (ticket "), "{stderr}");
    let ticket = stderr.split("ticket ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert_eq!(queue_depth(&queue).await, 2, "the cancel waits behind the start");

    // The agent returns: the start is never run to its end.
    let back = TestAgent::start_with(agent.config.clone()).await;
    let code = eventually("the ticket to end", Duration::from_secs(30), || async {
        let out = run_dispatcher(&["status", &ticket, "--target", back.id()]).await;
        out.status.code().filter(|&c| c != 0)
    })
    .await;
    assert!(code == 106 || code == 104, "cancelled, or never started: {code}");
    assert!(!done.exists(), "the script was stopped");
    back.stop().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_and_a_start_racing_never_let_the_script_run_to_its_end() {
    let config = tests::agent::test_config("int-race");
    let agent = AgentProcess::start(config.clone()).await;
    let orchestrator = orchestrator().await;
    let route = dispatcher::route::Route::agent(&config.agent_id).unwrap();
    let markers = Markers::new();
    let timing = || CallTiming {
        reply_timeout: Duration::from_secs(10),
        not_after: SystemTime::now() + Duration::from_secs(60),
    };
    let rounds = 20;
    let mut tickets = Vec::new();
    for round in 0..rounds {
        let ticket = edge::entropy::ticket();
        let script = format!(
            "{}; sleep 3; touch '{}'",
            markers.record(&format!("run-{round}")),
            markers.dir.join(format!("done-{round}")).display()
        );
        let start = Request::StartScriptV2(StartScriptV2 {
            ticket: ticket.clone(),
            spec: sh(script),
            wait_for_output: None,
            first_issued_at: None,
        });
        let cancel = Request::CancelScriptV2(CancelScriptV2 {
            ticket: ticket.clone(),
            last_log_sequence: 0,
            first_issued_at: None,
        });
        let rpc = orchestrator.rpc();
        let (started, cancelled) =
            tokio::join!(rpc.call(&route, &start, timing()), rpc.call(&route, &cancel, timing()));
        let (Ok(Reply::ScriptStatus(started)), Ok(Reply::ScriptStatus(cancelled))) = (started, cancelled) else {
            panic!("both answered")
        };
        if cancelled.exit_code == Some(exit_code::UNKNOWN_TICKET) {
            // The store took the cancel before the claim: the start never runs.
            assert_eq!(started.exit_code, Some(exit_code::CANCELLED), "round {round}");
            assert_eq!(markers.count(&format!("run-{round}")), 0, "round {round}");
        }
        tickets.push(ticket);
    }
    for (round, ticket) in tickets.iter().enumerate() {
        let request =
            Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: u64::MAX / 4, wait: None });
        let status = eventually("the run to end", Duration::from_secs(20), || async {
            match orchestrator.rpc().call(&route, &request, timing()).await {
                Ok(Reply::ScriptStatus(status)) if status.is_complete() => Some(status),
                _ => None,
            }
        })
        .await;
        assert!(
            matches!(status.exit_code, Some(exit_code::CANCELLED) | Some(exit_code::UNKNOWN_TICKET)),
            "round {round}: {status:?}"
        );
        assert!(!markers.dir.join(format!("done-{round}")).exists(), "round {round} ran to its end");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_ticket_never_seen_answers_unknown_ticket_and_still_refuses_its_start() {
    let agent = TestAgent::start("int-unknown").await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let out = run_dispatcher(&["cancel", &ticket.to_string(), "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(104), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the agent does not know this ticket"), "{}", text(&out.stderr));
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(markers.record("run")),
        wait_for_output: None,
        first_issued_at: None,
    });
    let timing =
        CallTiming { reply_timeout: Duration::from_secs(10), not_after: SystemTime::now() + Duration::from_secs(60) };
    let Ok(Reply::ScriptStatus(status)) = orchestrator().await.rpc().call(&agent.route(), &start, timing).await else {
        panic!("a status")
    };
    assert_eq!(status.exit_code, Some(exit_code::CANCELLED));
    assert_eq!(markers.count("run"), 0);
    let out = run_dispatcher(&["status", &ticket.to_string(), "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(104), "{}", text(&out.stderr));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_on_status_follow_detaches_and_leaves_the_script_running() {
    let agent = TestAgent::start("int-detach").await;
    let (ticket, mut submit) = submit_running(&agent).await;
    let mut follow = spawn_dispatcher(&["status", &ticket, "--target", agent.id(), "--follow"]);
    let mut followed = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(followed.next_line().await.unwrap().as_deref(), Some("started"));
    sigint(&follow);
    let (code, stderr) = ended(follow, Duration::from_secs(5)).await;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains(&format!("detached from ticket {ticket}; the script goes on")), "{stderr}");
    assert!(stderr.contains("dispatcher cancel"), "{stderr}");
    assert_eq!(agent.agent.running(), 1, "the script goes on");
    let out = run_dispatcher(&["cancel", &ticket, "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(106));
    let _ = tokio::time::timeout(Duration::from_secs(20), submit.wait()).await;
    agent.stop().await;
}

fn redis_via(proxy: &FaultProxy) -> String {
    format!("redis://127.0.0.1:{}", proxy.addr().port())
}

async fn redis_proxy() -> FaultProxy {
    let url = redis_url();
    let host_port = url.trim_start_matches("redis://").trim_end_matches('/');
    FaultProxy::start(std::net::ToSocketAddrs::to_socket_addrs(host_port).unwrap().next().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_repeated_until_the_agent_answers_even_with_no_retries() {
    let redis = redis_proxy().await;
    let mut config = tests::agent::test_config("int-no-retries");
    config.redis_url = redis_via(&redis);
    config.lease_ttl = Duration::from_secs(30);
    let agent = TestAgent::start_with(config).await;
    let (ticket, mut submit) = submit_running(&agent).await;
    // The agent cannot answer from its store for a while: the cancel is repeated until it can.
    redis.outage();
    let mut cancel = spawn_dispatcher(&["cancel", &ticket, "--target", agent.id(), "--no-retries"]);
    let mut said = tokio::io::BufReader::new(cancel.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    while !seen.contains("attempt 1 failed") {
        let line = tokio::time::timeout(Duration::from_secs(20), said.next_line()).await.unwrap().unwrap();
        seen.push_str(&line.expect("the cancel goes on"));
    }
    redis.restore();
    let code = tokio::time::timeout(Duration::from_secs(40), cancel.wait()).await.unwrap().unwrap().code();
    assert_eq!(code, Some(106), "{seen}");
    let _ = tokio::time::timeout(Duration::from_secs(20), submit.wait()).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_agent_that_started_nothing_is_reported_rejected_not_unknown() {
    let redis = redis_proxy().await;
    let mut config = tests::agent::legacy_config("int-v1-store");
    config.redis_url = redis_via(&redis);
    let agent = TestAgent::start_with(config).await;
    redis.outage();
    let out = run_dispatcher(&["submit", "--target", agent.id(), "--", "true"]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nothing was started"), "{}", text(&out.stderr));
    redis.restore();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_a_fan_out_starts_none_of_the_targets_still_waiting() {
    let agents =
        [TestAgent::start("int-fan-a").await, TestAgent::start("int-fan-b").await, TestAgent::start("int-fan-c").await];
    let markers = Markers::new();
    let script = format!("echo run >> '{}'/\"$CUTTLE_AGENT_ID\"; sleep 30", markers.dir.display());
    let mut args = vec!["submit", "--max-parallel", "1"];
    for agent in &agents {
        args.extend(["--target", agent.id()]);
    }
    args.extend(["--", &script]);
    let child = spawn_dispatcher(&args);
    eventually("the first target to run", Duration::from_secs(20), || async {
        (markers.count(agents[0].id()) == 1).then_some(())
    })
    .await;
    sigint(&child);
    let (code, stderr) = ended(child, Duration::from_secs(20)).await;
    assert_eq!(code, Some(106), "the first target was cancelled: {stderr}");
    assert!(stderr.contains("2 not started (interrupted)"), "{stderr}");
    let row = stderr.lines().find(|l| l.starts_with(agents[0].id())).expect("a summary row");
    assert_eq!(row.split_whitespace().take(3).collect::<Vec<_>>(), [agents[0].id(), "cancelled", "106"], "{row}");
    assert_eq!((markers.count(agents[1].id()), markers.count(agents[2].id())), (0, 0));
    for agent in agents {
        agent.stop().await;
    }
}
