//! What the dispatcher tells a user who waits, or who cannot get in, through the binary: an
//! agent nobody serves, health checks at once, a broker that refuses us, short retry lines, and
//! a closed stdout.

use contracts::wire::topology::agent_queue;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};
use tests::*;
use tokio::io::AsyncBufReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_nobody_serves_is_named_at_once_with_how_long_we_wait() {
    let agent = queue_without_agent("wait-notice").await;
    let mut child = dispatcher_command()
        .args(["submit", "--target", agent.id(), "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(10), stderr.next_line()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, format!("cuttle: no agent is consuming {}; waiting up to 2m30s", agent_queue(agent.id())));
    assert!(started.elapsed() < Duration::from_secs(3), "at once: {:?}", started.elapsed());
    drop(child);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_every_agent_at_once_and_reports_one_nobody_serves_as_down() {
    let live = TestAgent::start("health-live").await;
    let gone = [queue_without_agent("health-gone").await, queue_without_agent("health-gone").await];
    let started = Instant::now();
    let out = run_dispatcher(&["health", live.id(), gone[0].id()]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "at once: {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(110), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with(&format!("{}: protocol v2", live.id())), "{lines:?}");
    let down = format!("{}: down: no agent is consuming {}", gone[0].id(), agent_queue(gone[0].id()));
    assert!(lines[1].starts_with(&down), "{lines:?}");

    // --wait waits, for every agent at the same time.
    let started = Instant::now();
    let out = run_dispatcher(&["health", gone[0].id(), gone[1].id(), "--wait", "--retry-duration", "2s"]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(110), "{}", text(&out.stderr));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "2s, not 2 × 2s: {took:?}");
    assert_eq!(text(&out.stdout).matches("unreachable: no reply").count(), 2, "{}", text(&out.stdout));
    let out = run_dispatcher(&["capabilities", gone[1].id()]).await;
    assert_eq!(out.status.code(), Some(110));
    assert!(text(&out.stdout).contains("down: no agent is consuming"), "{}", text(&out.stdout));
    live.stop().await;
    for agent in gone {
        agent.stop().await;
    }
}

#[tokio::test]
async fn a_broker_that_refuses_us_is_one_clear_line_and_exit_101_at_once() {
    let cases = [
        ("amqp://nobody:wrong@127.0.0.1:5672/%2f", "ACCESS_REFUSED", "check the user and password"),
        ("amqp://guest:guest@127.0.0.1:5672/t-no-such-vhost", "vhost t-no-such-vhost not found", "check the vhost"),
    ];
    for (url, what, hint) in cases {
        let started = Instant::now();
        let out = run_dispatcher(&["--amqp-url", url, "submit", "--target", "t-anyone", "--", "true"]).await;
        assert!(started.elapsed() < Duration::from_secs(5), "not retried for 2m30s: {:?}", started.elapsed());
        assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].starts_with("cuttle: failed: the broker refused the connection: "), "{stderr}");
        assert!(lines[0].contains(what) && lines[0].contains(hint), "{stderr}");
    }
}

#[tokio::test]
async fn retry_notices_are_one_short_plain_line_per_attempt() {
    let out = run_dispatcher(&[
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "capabilities",
        "t-anyone",
        "--retry-duration",
        "1500ms",
    ])
    .await;
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\x1b'), "no colours off a terminal: {stderr:?}");
    let notices: Vec<&str> = stderr.lines().filter(|l| l.contains(" attempt ")).collect();
    assert!(notices.len() >= 2, "{stderr}");
    for (n, line) in notices.iter().enumerate() {
        let expected = format!(
            "cuttle: GetCapabilities attempt {} failed: cannot reach the broker: connection refused; retrying, ",
            n + 1
        );
        assert!(line.starts_with(&expected) && line.ends_with(" left"), "{line}");
    }
    assert!(stderr.lines().all(|l| l.starts_with("cuttle: ")), "one prefix, nothing else: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_dispatcher_quietly() {
    let agent = TestAgent::start("closed-stdout").await;
    let mut child = dispatcher_command()
        .args(["submit", "--json", "--target", agent.id(), "--", "echo one; sleep 0.5; echo two"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: one line read, then the pipe is closed.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    assert!(first.contains("\"ticket\""), "{first}");
    drop(stdout);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_finished_ticket_says_how_it_ended() {
    let agent = TestAgent::start("status-ended").await;
    let out = run_dispatcher(&["submit", "--target", agent.id(), "--", "echo done; exit 3"]).await;
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    let ticket = stderr.split("ticket ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let out = run_dispatcher(&["status", &ticket, "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let expected = format!("cuttle: ticket {ticket} on agent {} completed with exit code 3", agent.id());
    assert!(text(&out.stderr).contains(&expected), "{}", text(&out.stderr));
    agent.stop().await;
}

/// The link to the broker is reset while the dispatcher waits for a script's next line
/// (`--json`, so each event's arrival can be timed): the retry event says how long the dispatcher
/// waits before its next attempt, and that is the truth (the next line comes after that delay
/// plus a reconnect, not seconds later), and output resumes within 1.5 s of the cut, every line
/// once, in order. The script pauses after line 5 so that a status request is surely waiting on
/// the agent when the link is cut (a cut between requests is mended without a failed attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_connection_the_dispatcher_reconnects_at_once() {
    const SCRIPT: &str =
        "for i in $(seq 5); do echo $i; sleep 0.1; done; sleep 0.4; for i in $(seq 6 40); do echo $i; sleep 0.05; done";
    let agent = TestAgent::start("reconnect").await;
    let proxy = tests::proxy::FaultProxy::start(tests::proxy::broker_addr()).await;
    let mut child = dispatcher_command()
        .env("CUTTLE_AMQP_URL", proxy.amqp_url())
        .args(["submit", "--json", "--target", agent.id(), "--", SCRIPT])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut cut = None;
    // After the cut: the first retry event (when it came, the delay it announced), the first line.
    let mut retry: Option<(Instant, Duration)> = None;
    let mut resumed = None;
    let mut held_back = Duration::ZERO;
    let mut seqs = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), events.next_line()).await.unwrap().unwrap() {
        let at = Instant::now();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        match event["event"].as_str() {
            Some("log") if cut.is_none() && event["text"] == "5" => {
                // The next status request is on its way to the agent, which holds it until line 6.
                tokio::time::sleep(Duration::from_millis(150)).await;
                proxy.reset_all();
                cut = Some(Instant::now());
            }
            Some("log") if cut.is_some() && resumed.is_none() => {
                // How long after the agent read it the first line after the cut reached us.
                let produced = event["at"].as_u64().expect("at");
                held_back =
                    Duration::from_millis(contracts::time::unix_millis(SystemTime::now()).saturating_sub(produced));
                resumed = Some(at);
            }
            Some("retry") if cut.is_some() && retry.is_none() => {
                retry = Some((at, Duration::from_millis(event["delay_ms"].as_u64().expect("delay_ms"))))
            }
            _ => {}
        }
        if event["event"] == "log" {
            seqs.push(event["seq"].as_u64().unwrap());
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>(), "every line once, in order");
    let (cut, resumed) = (cut.expect("the link was cut"), resumed.expect("output after the cut"));
    let (noticed, delay) = retry.expect("a retry event after the cut: the link was lost");
    let after_notice = resumed.saturating_duration_since(noticed);
    println!(
        "reconnect: retry event {:?} after the cut announcing {delay:?}; output resumed {after_notice:?} after it, {:?} after the cut, its line {held_back:?} after the script wrote it",
        noticed - cut,
        resumed - cut
    );
    // The delay announced is the one waited: not resumed before it, nor seconds after it.
    assert!(after_notice + Duration::from_millis(50) >= delay, "resumed {after_notice:?} after announcing {delay:?}");
    assert!(
        after_notice <= delay + Duration::from_secs(1),
        "announced a delay of {delay:?} but output resumed only {after_notice:?} later"
    );
    assert!(resumed - cut < Duration::from_millis(1500), "output resumed {:?} after the cut", resumed - cut);
    assert!(
        held_back < Duration::from_secs(1),
        "the first line after the cut came {held_back:?} after the script wrote it"
    );
    agent.stop().await;
}
