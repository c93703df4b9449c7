//! The agent's exactly-once rules, against the real RabbitMQ and Redis.

use contracts::submission::retry::RetryPolicy;
use contracts::time::unix_millis;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::StartScriptV2;
use contracts::wire::status::ScriptState;
use contracts::wire::ticket::Ticket;
use contracts::wire::{exit_code, topology};
use dispatcher::rpc::CallTiming;
use std::time::{Duration, SystemTime};
use tests::*;

fn timing() -> CallTiming {
    CallTiming { reply_timeout: Duration::from_secs(30), not_after: SystemTime::now() + Duration::from_secs(60) }
}

async fn follow_to_end(
    orchestrator: &dispatcher::orchestrator::Orchestrator,
    agent: &TestAgent,
    ticket: &Ticket,
) -> contracts::submission::outcome::Outcome {
    let status =
        orchestrator.status(&agent.route(), ticket, RetryPolicy::new(Duration::from_secs(30)), &|_| {}).await.unwrap();
    let follower = contracts::submission::follow::LogFollower::after(0);
    orchestrator
        .follow_to_end(
            &agent.route(),
            ticket,
            follower,
            status,
            RetryPolicy::new(Duration::from_secs(30)),
            contracts::submission::negotiate::ScriptProtocol::V2,
            &|_| {},
            &Default::default(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_start_delivered_1000_times_at_once_runs_once() {
    let agent = TestAgent::start("dup1000").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(format!("{}; sleep 0.5", markers.record("run"))),
        wait_for_output: None,
        first_issued_at: None,
    });
    let route = agent.route();
    let calls = (0..1000).map(|_| orchestrator.rpc().call(&route, &start, timing()));
    let replies = futures_util::future::join_all(calls).await;
    for reply in replies {
        match reply.expect("every copy is answered") {
            Reply::ScriptStatus(status) => assert_eq!(status.ticket, ticket),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    let outcome = follow_to_end(&orchestrator, &agent, &ticket).await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(markers.count("run"), 1, "the script ran once");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_after_complete_does_not_run_again() {
    let agent = TestAgent::start("tombstone").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(markers.record("run")),
        wait_for_output: Some(2000),
        first_issued_at: None,
    });
    orchestrator.rpc().call(&agent.route(), &start, timing()).await.unwrap();
    let outcome = follow_to_end(&orchestrator, &agent, &ticket).await;
    assert_eq!(outcome.exit_code, Some(0));
    orchestrator.complete(&agent.route(), &ticket, &|_| {}).await;
    let Reply::ScriptStatus(late) = orchestrator.rpc().call(&agent.route(), &start, timing()).await.unwrap() else {
        panic!()
    };
    assert!(late.is_complete());
    assert_eq!(late.exit_code, Some(0));
    assert!(late.logs.is_empty(), "output was cleaned by complete");
    assert_eq!(markers.count("run"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_deadline_is_refused_and_nothing_runs() {
    let agent = TestAgent::start("expired").await;
    let mut raw = RawBroker::connect().await;
    let markers = Markers::new();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: edge::entropy::ticket(),
        spec: sh(markers.record("run")),
        wait_for_output: None,
        first_issued_at: None,
    });
    let past = unix_millis(SystemTime::now() - Duration::from_secs(60));
    let (_, bytes) = start.encode(agent.id(), past - 1000, Some(past), &mut edge::entropy::OsEntropy).unwrap();
    let id = raw.publish(agent.id(), "StartScriptV2", &bytes).await;
    // Signed, so refused by the trust checks' deadline (ARCHITECTURE.md, Trust): NotAuthorized, the reason saying why.
    match raw.reply(&id).await {
        Reply::Error(e) => assert!(e.kind == ErrorKind::NotAuthorized && e.message.starts_with("expired"), "{e:?}"),
        other => panic!("expected NotAuthorized (expired), got {other:?}"),
    }
    // Unsigned, to an agent that takes unsigned commands: the freshness check (ARCHITECTURE.md, Deadlines and
    // tombstones), Expired.
    let mut config = tests::agent::test_config("expired-unsigned");
    config.insecure_allow_unsigned = true;
    let insecure = TestAgent::start_with(config).await;
    let (_, bytes) = start.encode(insecure.id(), past - 1000, Some(past), &mut edge::entropy::OsEntropy).unwrap();
    let id = raw.publish_to(&topology::agent_queue(insecure.id()), "StartScriptV2", &bytes, None).await;
    match raw.reply(&id).await {
        Reply::Error(e) => assert_eq!(e.kind, ErrorKind::Expired, "{e:?}"),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(markers.count("run"), 0);
    raw.close().await;
    agent.stop().await;
    insecure.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ticket_with_a_different_script_is_a_conflict() {
    let agent = TestAgent::start("conflict").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let first = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(markers.record("a")),
        wait_for_output: None,
        first_issued_at: None,
    });
    orchestrator.rpc().call(&agent.route(), &first, timing()).await.unwrap();
    let second = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(markers.record("b")),
        wait_for_output: None,
        first_issued_at: None,
    });
    let error = orchestrator.rpc().call(&agent.route(), &second, timing()).await.unwrap_err();
    assert_eq!(error.agent_error(), Some(ErrorKind::TicketConflict), "{error}");
    assert!(!error.is_transient());
    // Differently-cased, the ticket is the same ticket.
    let upper = Ticket::parse(&ticket.as_str().to_uppercase()).unwrap();
    let third = Request::StartScriptV2(StartScriptV2 {
        ticket: upper,
        spec: sh(markers.record("b")),
        wait_for_output: None,
        first_issued_at: None,
    });
    assert!(orchestrator.rpc().call(&agent.route(), &third, timing()).await.is_err());
    follow_to_end(&orchestrator, &agent, &ticket).await;
    assert_eq!((markers.count("a"), markers.count("b")), (1, 0));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_script_reports_unknown_result_and_never_reruns() {
    let mut agent = AgentProcess::start(tests::agent::test_config("sigkill")).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(format!("{}; echo started; sleep 2; {}", markers.record("run"), markers.record("done"))),
        wait_for_output: Some(5000),
        first_issued_at: None,
    });
    let Reply::ScriptStatus(started) = orchestrator.rpc().call(&route, &start, timing()).await.unwrap() else {
        panic!()
    };
    assert!(!started.logs.is_empty(), "the script started");
    agent.kill().await;
    agent.restart().await;
    // The same start again after the restart: reported, not re-run.
    let Reply::ScriptStatus(again) = orchestrator.rpc().call(&route, &start, timing()).await.unwrap() else { panic!() };
    assert_eq!(again.state, ScriptState::Complete);
    assert_eq!(again.exit_code, Some(exit_code::UNKNOWN_RESULT));
    let status =
        orchestrator.status(&route, &ticket, RetryPolicy::new(Duration::from_secs(10)), &|_| {}).await.unwrap();
    assert_eq!(status.exit_code, Some(exit_code::UNKNOWN_RESULT));
    let unknown = orchestrator
        .status(&route, &edge::entropy::ticket(), RetryPolicy::new(Duration::from_secs(10)), &|_| {})
        .await
        .unwrap();
    assert_eq!(unknown.exit_code, Some(exit_code::UNKNOWN_TICKET));
    // The orphaned script finishes on its own; it was never started a second time.
    eventually("the orphaned script to end", Duration::from_secs(10), || async {
        (markers.count("done") == 1).then_some(())
    })
    .await;
    assert_eq!(markers.count("run"), 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ticket_whose_lease_expired_reports_unknown_result() {
    // An agent process dies and never comes back: its lease runs out (3 s in tests).
    let mut agent = AgentProcess::start(tests::agent::test_config("lease")).await;
    let route = dispatcher::route::Route::agent(&agent.config.agent_id).unwrap();
    let orchestrator = orchestrator().await;
    let ticket = edge::entropy::ticket();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh("echo up; sleep 30"),
        wait_for_output: Some(5000),
        first_issued_at: None,
    });
    orchestrator.rpc().call(&route, &start, timing()).await.unwrap();
    agent.kill().await;
    // Another agent sharing the ticket store answers for the ticket.
    let mut peer_config = tests::agent::test_config("lease-peer");
    peer_config.key_prefix = agent.config.key_prefix.clone();
    let peer = TestAgent::start_with(peer_config).await;
    let status = eventually("the lease to expire", Duration::from_secs(10), || {
        let (orchestrator, ticket, route) = (&orchestrator, &ticket, peer.route());
        async move {
            let s =
                orchestrator.status(&route, ticket, RetryPolicy::new(Duration::from_secs(5)), &|_| {}).await.ok()?;
            s.is_complete().then_some(s)
        }
    })
    .await;
    assert_eq!(status.exit_code, Some(exit_code::UNKNOWN_RESULT));
    peer.stop().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_start_leaves_a_tombstone_so_a_late_start_never_runs() {
    let agent = TestAgent::start("cancel-first").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let ticket = edge::entropy::ticket();
    let outcome =
        orchestrator.cancel(&agent.route(), &ticket, RetryPolicy::new(Duration::from_secs(10)), &|_| {}).await;
    // A ticket the agent never saw is unknown (its tombstone only refuses a later start).
    assert_eq!(outcome.exit_code, Some(exit_code::UNKNOWN_TICKET));
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh(markers.record("run")),
        wait_for_output: None,
        first_issued_at: None,
    });
    let Reply::ScriptStatus(status) = orchestrator.rpc().call(&agent.route(), &start, timing()).await.unwrap() else {
        panic!()
    };
    assert_eq!(status.exit_code, Some(exit_code::CANCELLED));
    assert_eq!(markers.count("run"), 0);
    agent.stop().await;
}
