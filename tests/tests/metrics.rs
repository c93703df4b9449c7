//! Prometheus metrics through the real binaries: `GET /metrics` on an agent's `--health-addr`
//! and on `dispatcher serve`, scraped before and after scripts run, a command is refused, an
//! agent waits for an isolation mutex, and the service's broker link is cut mid-script.

use contracts::time::unix_millis;
use contracts::wire::envelope::Request;
use contracts::wire::messages::StartScriptV2;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tests::agent::test_config;
use tests::proxy::{broker_addr, FaultProxy};
use tests::service::{http, journal_prefix, remove_journal};
use tests::*;

/// The value of one series (`name` or `name{labels}`) in a scrape; 0 when absent (a family
/// with labels has no series before its first event).
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, text) = http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "a complete exposition: {text}");
    text
}

/// Waits until `series` in the scrape at `addr` reaches `at_least`, and gives the scrape; fails
/// with the last scrape after 30 s.
async fn until_at_least(addr: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = http_get(addr, "/metrics").await.map(|(_, text)| text).unwrap_or_default();
        if sample(&text, series) >= at_least {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {series} >= {at_least} within 30s; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_counts_scripts_refusals_store_calls_and_mutex_waits() {
    let config = test_config("metrics-agent");
    let addr = SocketAddr::from(([127, 0, 0, 1], services::free_port()));
    let mut command = AgentProcess::command(&config);
    command.args(["--health-addr", &addr.to_string()]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let before = scrape(addr).await;
    assert_eq!(sample(&before, "cuttle_scripts_started_total"), 0.0, "{before}");
    assert!(!before.contains("cuttle_forged_answers"), "the dispatcher's family only: {before}");
    assert!(before.contains("# TYPE cuttle_mutex_wait_duration_seconds histogram"), "{before}");

    // One script, run to its end through the dispatcher binary.
    let submit = dispatcher_command().args(["submit", "--target", &config.agent_id, "--", "echo hi; exit 4"]).output();
    let out = tokio::time::timeout(Duration::from_secs(60), submit).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let after = until_at_least(addr, "cuttle_scripts_finished_total{outcome=\"completed\"}", 1.0).await;
    assert_eq!(sample(&after, "cuttle_scripts_started_total"), 1.0, "{after}");
    assert_eq!(sample(&after, "cuttle_scripts_running"), 0.0, "{after}");
    assert!(sample(&after, "cuttle_requests_total{kind=\"StartScriptV2\"}") >= 1.0, "{after}");
    assert!(sample(&after, "cuttle_request_duration_seconds_count{kind=\"GetCapabilities\"}") >= 1.0, "{after}");
    assert_eq!(sample(&after, "cuttle_store_operation_duration_seconds_count{operation=\"claim\"}"), 1.0, "{after}");
    assert_eq!(sample(&after, "cuttle_commands_refused_total{reason=\"expired\"}"), 0.0);

    // A command past its deadline is refused, by reason.
    let mut raw = RawBroker::connect().await;
    let start = Request::StartScriptV2(StartScriptV2 {
        ticket: edge::entropy::ticket(),
        spec: sh("echo never"),
        wait_for_output: None,
        first_issued_at: None,
    });
    let past = unix_millis(SystemTime::now() - Duration::from_secs(60));
    let (_, bytes) = start.encode(&config.agent_id, past - 1000, Some(past), &mut edge::entropy::OsEntropy).unwrap();
    let id = raw.publish(&config.agent_id, "StartScriptV2", &bytes).await;
    raw.reply(&id).await;
    raw.close().await;
    let refused = until_at_least(addr, "cuttle_commands_refused_total{reason=\"expired\"}", 1.0).await;
    assert_eq!(sample(&refused, "cuttle_scripts_started_total"), 1.0, "nothing ran: {refused}");

    // Two scripts on one isolation mutex: the second waits for the first.
    let markers = Markers::new();
    let gate = markers.dir.join("gate");
    let holder = format!("{}; while [ ! -e '{}' ]; do sleep 0.05; done", markers.record("first"), gate.display());
    let isolated = |script: String| {
        dispatcher_command()
            .args(["submit", "--target", &config.agent_id, "--isolation", "full", "--", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let first = isolated(holder);
    eventually("the first script to run", Duration::from_secs(20), || async {
        (markers.count("first") == 1).then_some(())
    })
    .await;
    let second = isolated(markers.record("second"));
    let waiting = until_at_least(addr, "cuttle_scripts_running", 2.0).await;
    assert_eq!(sample(&waiting, "cuttle_mutex_waits_total"), 0.0, "counted once the wait ends: {waiting}");
    std::fs::write(&gate, "").unwrap();
    for submit in [first, second] {
        let out = tokio::time::timeout(Duration::from_secs(60), submit.wait_with_output()).await.unwrap().unwrap();
        assert_eq!(out.status.code(), Some(0));
    }
    let waited = until_at_least(addr, "cuttle_mutex_waits_total", 1.0).await;
    assert_eq!(sample(&waited, "cuttle_mutex_wait_duration_seconds_count"), 1.0, "{waited}");
    assert!(sample(&waited, "cuttle_mutex_wait_duration_seconds_sum") > 0.0, "{waited}");
    assert_eq!(sample(&waited, "cuttle_scripts_finished_total{outcome=\"completed\"}"), 3.0, "{waited}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_counts_attempts_retries_reconnects_refusals_and_outcomes() {
    let agent = TestAgent::start("metrics-svc").await;
    let legacy = AgentProcess::start(tests::agent::legacy_config("metrics-legacy")).await;
    let link = FaultProxy::start(broker_addr()).await;
    let prefix = journal_prefix("metrics-svc");
    let service = ServiceProcess::start(&prefix, &["--amqp-url", &link.amqp_url()]).await;
    let addr: SocketAddr = service.url.trim_start_matches("http://").parse().unwrap();
    let before = scrape(addr).await;
    assert_eq!(sample(&before, "cuttle_broker_reconnects_total"), 0.0, "{before}");
    assert_eq!(sample(&before, "cuttle_forged_answers_ignored_total"), 0.0, "{before}");

    // A script whose status request is under way when the service's broker link is cut.
    let markers = Markers::new();
    let gate = markers.dir.join("gate");
    let script =
        format!("{}; while [ ! -e '{}' ]; do sleep 0.05; done; echo done", markers.record("run"), gate.display());
    let response =
        http().post(format!("{}/v1/scripts", service.url)).json(&json!({"target": agent.id(), "script": script}));
    let accepted: Value = response.send().await.unwrap().json().await.unwrap();
    let ticket = accepted["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    eventually("the script to run", Duration::from_secs(20), || async { (markers.count("run") == 1).then_some(()) })
        .await;
    let running = until_at_least(addr, "cuttle_scripts_running", 1.0).await;
    assert_eq!(sample(&running, "cuttle_scripts_started_total"), 1.0, "{running}");
    // Once one status request has been answered, the next is held by the agent: cut it.
    until_at_least(addr, "cuttle_rpc_attempts_total{kind=\"GetStatusV2\"}", 1.0).await;
    link.reset_all();
    let retried = until_at_least(addr, "cuttle_rpc_retries_total{kind=\"GetStatusV2\"}", 1.0).await;
    assert!(
        sample(&retried, "cuttle_rpc_duration_seconds_count{kind=\"GetStatusV2\",result=\"broker\"}") >= 1.0,
        "{retried}"
    );
    std::fs::write(&gate, "").unwrap();
    let done = until_at_least(addr, "cuttle_scripts_finished_total{outcome=\"completed\"}", 1.0).await;
    assert!(sample(&done, "cuttle_broker_reconnects_total") >= 1.0, "{done}");
    assert_eq!(sample(&done, "cuttle_scripts_running"), 0.0, "{done}");
    assert!(sample(&done, "cuttle_rpc_attempts_total{kind=\"StartScriptV2\"}") >= 1.0, "{done}");
    assert!(
        sample(&done, "cuttle_rpc_duration_seconds_count{kind=\"GetCapabilities\",result=\"ok\"}") >= 1.0,
        "{done}"
    );
    assert!(sample(&done, "cuttle_store_operation_duration_seconds_count{operation=\"finish\"}") >= 1.0, "{done}");
    let record: Value =
        http().get(format!("{}/v1/tickets/{ticket}", service.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(record["outcome"], "completed", "{record}");

    // A legacy agent answers the capabilities request Unsupported: refused, by reason.
    let response = http()
        .post(format!("{}/v1/scripts", service.url))
        .json(&json!({"target": legacy.config.agent_id, "script": "true"}));
    assert_eq!(response.send().await.unwrap().status().as_u16(), 202);
    let refused = until_at_least(addr, "cuttle_commands_refused_total{reason=\"unsupported\"}", 1.0).await;
    let failed = until_at_least(addr, "cuttle_scripts_finished_total{outcome=\"failed\"}", 1.0).await;
    assert_eq!(sample(&failed, "cuttle_scripts_finished_total{outcome=\"completed\"}"), 1.0, "{failed} {refused}");

    service.stop().await;
    remove_journal(&prefix).await;
    legacy.stop().await;
    agent.stop().await;
}
