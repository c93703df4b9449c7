//! The documented flags and environment variables of the `dispatcher` binary not shown
//! elsewhere, given to the real binary with their effect observed from outside. (Covered in
//! other files: `--amqp-url`/`CUTTLE_AMQP_URL`, `--script`, `--timeout`, `--config`,
//! `--policy`, `--retry-duration`, `--no-retries`, `--json`, `status`, `cancel`, `capabilities`,
//! `bench` in cli.rs; `--protocol` in compat.rs; `--pool` in flags.rs; `--max-parallel`,
//! `--max-errors`, `--abort-on-error`, `--select` in rollouts.rs and presence.rs; `serve`,
//! `history`, `--detach`, `--journal`, `--journal-prefix` and their variables in service.rs.)

use std::time::{Duration, Instant};
use tests::*;

const UNREACHABLE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_and_env_reach_the_script() {
    let agent = TestAgent::start("flag-shell-env").await;
    // `sh` is dash here: only bash sets BASH_VERSION.
    let script = r#"echo "${BASH_VERSION:+bash}|$GREETING|${EMPTY-unset}""#;
    let out = run_dispatcher(&[
        "submit",
        "--target",
        agent.id(),
        "--env",
        "GREETING=hi there",
        "--env",
        "EMPTY=",
        "--",
        script,
    ])
    .await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "|hi there|\n".to_string()), "{}", text(&out.stderr));
    let out = run_dispatcher(&["submit", "--target", agent.id(), "--shell", "bash", "--", script]).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "bash||unset\n".to_string()), "{}", text(&out.stderr));
    let out = run_dispatcher(&["submit", "--target", agent.id(), "--env", "NOEQUALS", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(2), "a malformed --env is refused: {}", text(&out.stderr));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_mutex_and_mutex_timeout_decide_who_waits() {
    let agent = TestAgent::start("flag-isolation").await;
    let markers = Markers::new();
    let release = markers.dir.join("release");
    let holder = format!(
        "{}; i=0; while [ ! -e '{}' ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        markers.record("holder"),
        release.display()
    );
    let id = agent.id().to_owned();
    let holding = tokio::spawn(async move {
        run_dispatcher(&["submit", "--target", &id, "--isolation", "full", "--mutex", "deploy", "--", &holder]).await
    });
    eventually("the holder to run", Duration::from_secs(20), || async { (markers.count("holder") == 1).then_some(()) })
        .await;

    // The same mutex, exclusive: waits, says so, and gives up at --mutex-timeout (108).
    let started = Instant::now();
    let args = ["--isolation", "full", "--mutex", "deploy", "--mutex-timeout", "500ms"];
    let out = run_dispatcher(&[&["submit", "--target", agent.id()][..], &args, &["--", "echo never"]].concat()).await;
    assert_eq!(out.status.code(), Some(108), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("waiting for isolation mutex \"deploy\""), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(text(&out.stdout), "");
    // Without isolation, a script naming the mutex is a reader: it waits for the writer too.
    let args = ["--mutex", "deploy", "--mutex-timeout", "300ms"];
    let out = run_dispatcher(&[&["submit", "--target", agent.id()][..], &args, &["--", "echo never"]].concat()).await;
    assert_eq!(out.status.code(), Some(108), "{}", text(&out.stderr));
    // Another mutex (the default one of --isolation full) is free.
    let args = ["--isolation", "full", "--mutex-timeout", "500ms"];
    let out = run_dispatcher(&[&["submit", "--target", agent.id()][..], &args, &["--", "echo free"]].concat()).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "free\n".to_string()), "{}", text(&out.stderr));

    std::fs::write(&release, "").unwrap();
    assert_eq!(holding.await.unwrap().status.code(), Some(0));
    agent.stop().await;
}

/// The largest `time_left_ms` among the JSON retry events of a run, and their count.
fn retries_in(stdout: &str) -> (u64, usize) {
    let events: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let retries: Vec<u64> =
        events.iter().filter(|e| e["event"] == "retry").map(|e| e["time_left_ms"].as_u64().unwrap()).collect();
    (retries.iter().copied().max().unwrap_or(0), retries.len())
}

#[tokio::test]
async fn cuttle_config_and_purpose_choose_the_retry_duration() {
    let markers = Markers::new();
    let config = markers.dir.join("policies.toml");
    std::fs::write(&config, "[policies.default]\ndeployment = \"1s\"\nhealth_check = \"1s\"\nrunbook = \"3s\"\n")
        .unwrap();
    let capabilities = |purpose: Option<&'static str>| {
        let mut command = dispatcher_command();
        command.env("CUTTLE_AMQP_URL", UNREACHABLE).env("CUTTLE_CONFIG", &config).args(["capabilities", "t-nobody"]);
        command.arg("--json");
        if let Some(purpose) = purpose {
            command.args(["--purpose", purpose]);
        }
        async move { tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap() }
    };
    // CUTTLE_CONFIG's health-check duration (1s), not the built-in 2m30s.
    let started = Instant::now();
    let out = capabilities(None).await;
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    let (longest, count) = retries_in(&text(&out.stdout));
    assert!(count >= 1 && longest <= 1000, "{}", text(&out.stdout));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // --purpose runbook: the policy's runbook duration (3s).
    let out = capabilities(Some("runbook")).await;
    assert_eq!(out.status.code(), Some(101));
    let (longest, _) = retries_in(&text(&out.stdout));
    assert!((1500..=3000).contains(&longest), "{}", text(&out.stdout));
}

#[tokio::test]
async fn connect_timeout_bounds_the_wait_for_a_silent_broker() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap());
    let holding = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let out = dispatcher_command()
        .env("CUTTLE_AMQP_URL", &url)
        .args(["capabilities", "t-nobody", "--no-retries", "--connect-timeout", "300ms"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("within 300ms"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(3), "not the default 5s: {:?}", started.elapsed());
    holding.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_of_status_cancel_health_and_capabilities() {
    let agent = TestAgent::start("flag-json").await;
    let (ticket, mut submit) = submit_running(&agent).await;

    let out = run_dispatcher(&["status", &ticket, "--target", agent.id(), "--json"]).await;
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["event"], "log");
    assert_eq!(lines.last().unwrap()["event"], "status");
    assert_eq!(lines.last().unwrap()["state"], "running");

    let out = run_dispatcher(&["cancel", &ticket, "--target", agent.id(), "--json"]).await;
    assert_eq!(out.status.code(), Some(106));
    let result: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!((result["event"].as_str(), result["outcome"].as_str()), (Some("result"), Some("cancelled")));
    assert!(text(&out.stdout).lines().all(|l| !l.contains("\"log\"")), "cancel prints no log lines");

    for command in ["capabilities", "health"] {
        let out = run_dispatcher(&[command, agent.id(), "--json"]).await;
        assert_eq!(out.status.code(), Some(0));
        let answer: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        assert_eq!((answer["agent"].as_str(), answer["protocol"].as_str()), (Some(agent.id()), Some("v2")));
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), submit.wait()).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_lets_the_dispatchers_logs_through_and_nothing_leaks_without_it() {
    let agent = TestAgent::start("flag-rust-log").await;
    let out = run_dispatcher(&["submit", "--target", agent.id(), "--", "echo hi"]).await;
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.lines().all(|l| l.starts_with("cuttle: ")), "only the dispatcher's own lines: {stderr}");
    let out = dispatcher_command()
        .env("RUST_LOG", "debug")
        .args(["submit", "--target", agent.id(), "--", "echo hi"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("DEBUG"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains('\x1b'), "no colours when stderr is not a terminal");
    agent.stop().await;
}
