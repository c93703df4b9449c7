//! Running scripts: process groups, timeouts, isolation, output, and acking, against the real
//! RabbitMQ and Redis.

use contracts::submission::outcome::OutcomeKind;
use contracts::submission::retry::RetryPolicy;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::exit_code;
use contracts::wire::messages::{GetStatusV2, Isolation, ScriptSpec, Shell, StartScriptV2};
use contracts::wire::status::{LogStream, ScriptState};
use dispatcher::rpc::CallTiming;
use std::time::{Duration, Instant, SystemTime};
use tests::*;

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A script that leaves a background child (its pid in `pidfile`) and waits.
fn script_with_child(pidfile: &std::path::Path) -> String {
    format!("sleep 300 & echo $! > '{}'; echo started; sleep 300", pidfile.display())
}

async fn read_pid(path: &std::path::Path) -> i32 {
    eventually("the script's child pid", Duration::from_secs(10), || async {
        std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_process_group() {
    let agent = TestAgent::start("cancel").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let pidfile = markers.dir.join("pid");
    let interrupt = tokio_util::sync::CancellationToken::new();
    let route = agent.route();
    let submission = {
        let (orchestrator, interrupt, route) = (orchestrator.clone(), interrupt.clone(), route.clone());
        let spec = sh(script_with_child(&pidfile));
        tokio::spawn(async move {
            orchestrator.submit(&route, spec, RetryPolicy::new(Duration::from_secs(30)), &|_| {}, &interrupt).await
        })
    };
    let child = read_pid(&pidfile).await;
    assert!(pid_alive(child));
    interrupt.cancel();
    let outcome = submission.await.unwrap();
    assert_eq!(outcome.outcome, OutcomeKind::Cancelled);
    assert_eq!(outcome.exit_code, Some(exit_code::CANCELLED));
    assert_eq!(outcome.process_exit, contracts::submission::outcome::exit::CANCELLED);
    eventually("the background child to die", Duration::from_secs(5), || async { (!pid_alive(child)).then_some(()) })
        .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_timeout_kills_the_whole_process_group() {
    let agent = TestAgent::start("timeout").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let pidfile = markers.dir.join("pid");
    let spec = ScriptSpec { execution_timeout: Some(1000), ..sh(script_with_child(&pidfile)) };
    let started = Instant::now();
    let (outcome, lines) = submit(&orchestrator, &agent.route(), spec).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(outcome.exit_code, Some(exit_code::EXECUTION_TIMEOUT));
    assert_eq!(outcome.process_exit, contracts::submission::outcome::exit::EXECUTION_TIMEOUT);
    assert!(texts(&lines, LogStream::Agent).iter().any(|l| l.contains("execution timeout")));
    let child = read_pid(&pidfile).await;
    eventually("the background child to die", Duration::from_secs(5), || async { (!pid_alive(child)).then_some(()) })
        .await;
    agent.stop().await;
}

/// A script that records its start and end times (ms) in `file`.
fn timed(file: &std::path::Path, seconds: f32) -> String {
    format!("echo start $(date +%s%3N) >> '{0}'; sleep {seconds}; echo end $(date +%s%3N) >> '{0}'", file.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_isolation_scripts_on_one_mutex_run_one_at_a_time() {
    let agent = TestAgent::start("isolation").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let file = markers.dir.join(format!("run{i}"));
            let spec = ScriptSpec { isolation: Isolation::Full, ..sh(timed(&file, 0.4)) };
            let (orchestrator, route) = (orchestrator.clone(), agent.route());
            tokio::spawn(async move { submit(&orchestrator, &route, spec).await })
        })
        .collect();
    let mut waited = 0;
    for run in runs {
        let (outcome, lines) = run.await.unwrap();
        assert_eq!(outcome.exit_code, Some(0));
        waited += texts(&lines, LogStream::Agent)
            .iter()
            .filter(|l| l.contains("waiting for isolation mutex \"RunningScript\""))
            .count();
    }
    assert!(waited >= 1, "a waiting script shows its wait in its log");
    let mut spans: Vec<(u64, u64)> = (0..3)
        .map(|i| {
            let text = std::fs::read_to_string(markers.dir.join(format!("run{i}"))).unwrap();
            let v: Vec<u64> = text.lines().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
            (v[0], v[1])
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "isolated scripts overlapped: {spans:?}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_without_isolation_share_a_named_mutex_as_readers() {
    let agent = TestAgent::start("readers").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let (a, b) = (markers.dir.join("a"), markers.dir.join("b"));
    // Each waits for the other to have started: both succeed only if they run at once.
    let meet = |me: &std::path::Path, other: &std::path::Path| {
        format!(
            "touch '{}'; for i in $(seq 100); do [ -f '{}' ] && exit 0; sleep 0.05; done; exit 1",
            me.display(),
            other.display()
        )
    };
    let spec_a = ScriptSpec { mutex_name: Some("deploy".into()), ..sh(meet(&a, &b)) };
    let spec_b = ScriptSpec { mutex_name: Some("deploy".into()), ..sh(meet(&b, &a)) };
    let route = agent.route();
    let (ra, rb) = tokio::join!(submit(&orchestrator, &route, spec_a), submit(&orchestrator, &route, spec_b));
    assert_eq!((ra.0.exit_code, rb.0.exit_code), (Some(0), Some(0)));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_waiting_past_its_mutex_timeout_ends_with_the_mutex_timeout_code() {
    let agent = TestAgent::start("mutex-timeout").await;
    let orchestrator = orchestrator().await;
    let markers = Markers::new();
    let holder = {
        let spec =
            ScriptSpec { isolation: Isolation::Full, mutex_name: Some("db".into()), ..sh("echo holding; sleep 3") };
        let (orchestrator, route) = (orchestrator.clone(), agent.route());
        tokio::spawn(async move { submit(&orchestrator, &route, spec).await })
    };
    eventually("the holder to run", Duration::from_secs(10), || async { (agent.agent.running() == 1).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spec = ScriptSpec {
        isolation: Isolation::Full,
        mutex_name: Some("db".into()),
        mutex_timeout: Some(300),
        ..sh(markers.record("late"))
    };
    let (outcome, lines) = submit(&orchestrator, &agent.route(), spec).await;
    assert_eq!(outcome.exit_code, Some(exit_code::MUTEX_TIMEOUT));
    assert_eq!(outcome.process_exit, contracts::submission::outcome::exit::MUTEX_TIMEOUT);
    let notes = texts(&lines, LogStream::Agent);
    assert!(notes.iter().any(|l| l.contains("waiting for isolation mutex \"db\"")), "{notes:?}");
    assert!(notes.iter().any(|l| l.contains("gave up waiting")), "{notes:?}");
    assert_eq!(markers.count("late"), 0);
    assert_eq!(holder.await.unwrap().0.exit_code, Some(0));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_is_acked_once_claimed_not_when_the_script_ends() {
    tests::skip_unless!(tests::needs::shared_rabbitmqctl());
    let agent = TestAgent::start("ack").await;
    let orchestrator = orchestrator().await;
    let ticket = edge::entropy::ticket();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh("echo up; sleep 30"),
        wait_for_output: Some(3000),
        first_issued_at: None,
    });
    let timing =
        CallTiming { reply_timeout: Duration::from_secs(20), not_after: SystemTime::now() + Duration::from_secs(60) };
    let Reply::ScriptStatus(status) = orchestrator.rpc().call(&agent.route(), &start, timing).await.unwrap() else {
        panic!()
    };
    assert_eq!(status.state, ScriptState::Running);
    let queue = contracts::wire::topology::agent_queue(agent.id());
    let unacked = eventually("the start delivery to be acked", Duration::from_secs(20), || {
        let queue = queue.clone();
        async move { tests::raw::ready_and_unacked(&queue).await.map(|(_, unacked)| unacked).filter(|&n| n == 0) }
    })
    .await;
    assert_eq!(unacked, 0);
    assert_eq!(agent.agent.running(), 1, "and the script is still running");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_status_returns_as_soon_as_there_is_new_output() {
    let agent = TestAgent::start("wait").await;
    let orchestrator = orchestrator().await;
    let ticket = edge::entropy::ticket();
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: ticket.clone(),
        spec: sh("echo a; sleep 1; echo b; sleep 1"),
        wait_for_output: Some(5000),
        first_issued_at: None,
    });
    let timing =
        CallTiming { reply_timeout: Duration::from_secs(20), not_after: SystemTime::now() + Duration::from_secs(60) };
    let Reply::ScriptStatus(first) = orchestrator.rpc().call(&agent.route(), &start, timing).await.unwrap() else {
        panic!()
    };
    assert_eq!(first.logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["a"]);
    let status = Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: 1, wait: Some(8000) });
    let asked = Instant::now();
    let Reply::ScriptStatus(second) = orchestrator.rpc().call(&agent.route(), &status, timing).await.unwrap() else {
        panic!()
    };
    let took = asked.elapsed();
    assert_eq!(second.logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["b"]);
    assert!(took < Duration::from_millis(2500), "returned after {took:?}, not at the end of the wait");
    let end = Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: 2, wait: Some(8000) });
    let asked = Instant::now();
    let Reply::ScriptStatus(third) = orchestrator.rpc().call(&agent.route(), &end, timing).await.unwrap() else {
        panic!()
    };
    assert!(third.is_complete());
    assert!(asked.elapsed() < Duration::from_millis(2500), "returned at the end of the script");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_lines_arrive_complete_and_in_order() {
    let agent = TestAgent::start("lines").await;
    let orchestrator = orchestrator().await;
    let (outcome, lines) = submit(&orchestrator, &agent.route(), sh("seq 1 100000")).await;
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(lines.len(), 100_000);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line.seq, i as u64 + 1);
        assert_eq!(line.text, (i + 1).to_string());
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_a_mebibyte_arrive_whole_split_but_never_lost() {
    let agent = TestAgent::start("long-lines").await;
    let orchestrator = orchestrator().await;
    let script = "for i in 1 2 3; do head -c 1048576 /dev/zero | tr '\\0' \"$i\"; echo; done; echo end";
    let (outcome, lines) = submit(&orchestrator, &agent.route(), sh(script)).await;
    assert_eq!(outcome.exit_code, Some(0));
    let all: String = lines.iter().map(|l| l.text.as_str()).collect();
    let expected = format!("{}{}{}end", "1".repeat(1 << 20), "2".repeat(1 << 20), "3".repeat(1 << 20));
    assert_eq!(all.len(), expected.len());
    assert!(all == expected, "the long lines came back altered");
    assert!(lines.iter().all(|l| l.text.len() <= contracts::wire::topology::MAX_LOG_LINE_BYTES));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_stderr_and_exit_codes_come_back() {
    let agent = TestAgent::start("basic").await;
    let orchestrator = orchestrator().await;
    let spec = ScriptSpec {
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        ..sh("echo $GREETING; echo oops >&2; exit 3")
    };
    let (outcome, lines) = submit(&orchestrator, &agent.route(), spec).await;
    assert_eq!(outcome.outcome, OutcomeKind::Completed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.process_exit, 3);
    assert_eq!(texts(&lines, LogStream::Stdout), ["hi"]);
    assert_eq!(texts(&lines, LogStream::Stderr), ["oops"]);
    let bash = ScriptSpec { shell: Shell::Bash, ..sh("echo ${BASH_VERSION:+bash}") };
    let (outcome, lines) = submit(&orchestrator, &agent.route(), bash).await;
    assert_eq!((outcome.exit_code, texts(&lines, LogStream::Stdout)), (Some(0), vec!["bash".to_string()]));
    agent.stop().await;
}
