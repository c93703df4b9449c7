//! The `dispatcher` binary as a user runs it: output, exit codes, JSON events, Ctrl-C, and the
//! status, cancel, capabilities and bench commands.

use std::process::{Output, Stdio};
use std::time::Duration;
use tests::*;

async fn run(args: &[&str]) -> Output {
    let output = dispatcher_command().args(args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("dispatcher finishes").expect("dispatcher runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_streams_output_and_exits_with_the_scripts_code() {
    let agent = TestAgent::start("cli-submit").await;
    let out = run(&["submit", "--target", agent.id(), "--", "echo hi; echo oops >&2; exit 3"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "hi\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("oops"), "{stderr}");
    assert!(stderr.contains("cuttle: ticket "), "the ticket is printed: {stderr}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_runs_a_script_file_and_refuses_a_missing_one() {
    let agent = TestAgent::start("cli-file").await;
    let markers = Markers::new();
    let file = markers.dir.join("deploy.sh");
    std::fs::write(&file, "echo from file\nexit 0\n").unwrap();
    let out = run(&["submit", "--target", agent.id(), "--script", file.to_str().unwrap()]).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "from file\n".to_string()));
    let missing = markers.dir.join("missing.sh");
    let out = run(&["submit", "--target", agent.id(), "--script", missing.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot read script file") && stderr.contains("missing.sh"), "{stderr}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_prints_events_with_the_result_last() {
    let agent = TestAgent::start("cli-json").await;
    // Two pipes: order across stdout and stderr is the order lines reach the agent.
    let out =
        run(&["submit", "--json", "--target", agent.id(), "--", "echo one; sleep 0.2; echo two >&2; exit 4"]).await;
    assert_eq!(out.status.code(), Some(4));
    let events: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let logs: Vec<_> = events.iter().filter(|e| e["event"] == "log").collect();
    assert_eq!(logs.len(), 2);
    assert_eq!((logs[0]["text"].as_str(), logs[0]["stream"].as_str()), (Some("one"), Some("stdout")));
    assert_eq!((logs[1]["text"].as_str(), logs[1]["stream"].as_str()), (Some("two"), Some("stderr")));
    let result = events.last().unwrap();
    assert_eq!(result["event"], "result");
    assert_eq!(result["outcome"], "completed");
    assert_eq!(result["exit_code"], 4);
    assert_eq!(result["target"], agent.id());
    assert!(result["ticket"].is_string());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_that_are_not_the_scripts_own_have_their_own_codes() {
    let agent = TestAgent::start("cli-codes").await;
    let out = run(&["submit", "--target", agent.id(), "--timeout", "500ms", "--", "sleep 30"]).await;
    assert_eq!(out.status.code(), Some(107), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("execution timeout"));

    let nobody = unique("nobody");
    let out = run(&["submit", "--target", &nobody, "--", "echo hi"]).await;
    assert_eq!(out.status.code(), Some(102));
    assert!(text(&out.stderr).contains(&format!("no agent queue for agent {nobody}")), "{}", text(&out.stderr));

    let out = run(&[
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "submit",
        "--no-retries",
        "--target",
        agent.id(),
        "--",
        "true",
    ])
    .await;
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach the broker"));

    let out = run(&["status", &edge::entropy::ticket().to_string(), "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(104), "{}", text(&out.stderr));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_script_on_the_agent_and_waits_for_it() {
    let agent = TestAgent::start("cli-ctrlc").await;
    let markers = Markers::new();
    let done = markers.dir.join("done");
    let script = format!("echo started; sleep 30; touch '{}'", done.display());
    let mut child = dispatcher_command()
        .args(["submit", "--target", agent.id(), "--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the script to start", Duration::from_secs(10), || async { (agent.agent.running() == 1).then_some(()) })
        .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), async {
        let status = child.wait().await.unwrap();
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
        (status, stderr)
    })
    .await
    .expect("the dispatcher ends after cancelling");
    assert_eq!(out.0.code(), Some(106), "{}", out.1);
    assert!(out.1.contains("cancelled"), "{}", out.1);
    assert_eq!(agent.agent.running(), 0, "the script stopped before the dispatcher exited");
    assert!(!done.exists());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follow_reattaches_and_cancel_stops_a_script() {
    let agent = TestAgent::start("cli-reattach").await;
    let mut submit = dispatcher_command()
        .args(["submit", "--json", "--target", agent.id(), "--", "echo first; sleep 1; echo second; sleep 30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(submit.stdout.take().unwrap());
    let mut first = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first).await.unwrap();
    let ticket: serde_json::Value = serde_json::from_str(&first).unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();

    // The ticket is printed before the start is sent: attach once the agent has it.
    eventually("output to reach the agent's log", Duration::from_secs(10), || async {
        let out = run(&["status", &ticket, "--target", agent.id()]).await;
        text(&out.stdout).contains("second").then_some(())
    })
    .await;
    let mut follow = dispatcher_command()
        .args(["status", &ticket, "--target", agent.id(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut followed = tokio::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.ends_with("second\n") {
        let read = tokio::io::AsyncBufReadExt::read_line(&mut followed, &mut seen);
        assert!(tokio::time::timeout(Duration::from_secs(10), read).await.unwrap().unwrap() > 0, "follow ended early");
    }
    assert_eq!(seen, "first\nsecond\n");
    let out = run(&["cancel", &ticket, "--target", agent.id()]).await;
    assert_eq!(out.status.code(), Some(106), "{}", text(&out.stderr));
    let followed_exit = tokio::time::timeout(Duration::from_secs(20), follow.wait()).await.unwrap().unwrap();
    assert_eq!(followed_exit.code(), Some(106));
    let submitted = tokio::time::timeout(Duration::from_secs(20), submit.wait()).await.unwrap().unwrap();
    assert_eq!(submitted.code(), Some(106));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_bench_report_on_an_agent() {
    let agent = TestAgent::start("cli-caps").await;
    let out = run(&["capabilities", agent.id()]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("protocol v2") && stdout.contains("script/v2") && stdout.contains("retries on"),
        "{stdout}"
    );
    let out = run(&["bench", "--target", agent.id(), "--count", "40", "--concurrency", "4", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        (report["count"].as_u64(), report["concurrency"].as_u64(), report["errors"].as_u64()),
        (Some(40), Some(4), Some(0))
    );
    for field in ["p50_ms", "p90_ms", "p99_ms", "throughput_per_s"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field} in {report}");
    }
    // Every script's latency, fastest first, for a histogram: the percentiles are among them.
    let latencies: Vec<f64> = report["latencies_ms"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(latencies.len(), 40, "{report}");
    assert!(latencies.windows(2).all(|w| w[0] <= w[1]), "{latencies:?}");
    assert!(latencies.contains(&report["p50_ms"].as_f64().unwrap()), "{report}");
    agent.stop().await;
}

#[tokio::test]
async fn help_documents_the_exit_codes() {
    let out = run(&["submit", "--help"]).await;
    let help = text(&out.stdout);
    for code in ["101", "102", "103", "104", "105", "106", "107", "108", "109", "110"] {
        assert!(help.contains(code), "exit code {code} missing from --help");
    }
}

#[tokio::test]
async fn machine_policies_set_the_retry_duration_and_bad_files_are_named() {
    let markers = Markers::new();
    let config = markers.dir.join("policies.toml");
    let quick = "[policies.quick]\ndeployment = \"2s\"\nhealth_check = \"2s\"\n\n[targets]\nweb-09 = \"quick\"\n";
    std::fs::write(&config, quick).unwrap();
    let unreachable = ["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"];
    tests::trust::keys().pin("web-09");
    let started = std::time::Instant::now();
    let out = run(&[
        &unreachable[..],
        &["submit", "--json", "--config", config.to_str().unwrap(), "--target", "web-09", "--", "true"],
    ]
    .concat())
    .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "the policy's 2s: took {took:?}");
    let events: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let retries = events.iter().filter(|e| e["event"] == "retry").count();
    assert!(retries >= 2, "retries are reported as they happen");
    assert!(events.iter().all(|e| e["event"] != "retry" || e["time_left_ms"].as_u64().unwrap() <= 2000));
    let result = events.last().unwrap();
    assert_eq!(result["outcome"], "failed");
    assert!(
        result["error"].as_str().unwrap().contains("connection refused")
            || result["error"].as_str().unwrap().contains("Connection refused"),
        "{result}"
    );

    // --retry-duration overrides the policy; --no-retries fails on the first error.
    let started = std::time::Instant::now();
    let out = run(&[
        &unreachable[..],
        &["submit", "--config", config.to_str().unwrap(), "--target", "web-09", "--retry-duration", "1s", "--", "true"],
    ]
    .concat())
    .await;
    assert_eq!(out.status.code(), Some(101));
    assert!(started.elapsed() < Duration::from_millis(1900));
    let out = run(&[&unreachable[..], &["submit", "--no-retries", "--target", "web-09", "--", "true"]].concat()).await;
    assert!(text(&out.stderr).contains("1 attempt"), "{}", text(&out.stderr));

    std::fs::write(&config, "[policies.quick]\ndeployment = \"2s\"\nrunbook = \"soon\"\n").unwrap();
    let out = run(&["submit", "--config", config.to_str().unwrap(), "--target", "web-09", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("policies.toml:3") && stderr.contains("policies.quick.runbook") && stderr.contains("\"soon\""),
        "{stderr}"
    );
    let out = run(&["submit", "--policy", "nope", "--target", "web-09", "--", "true"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no policy named \"nope\""), "{}", text(&out.stderr));
}

/// `completions SHELL` of both binaries prints the shell's completion script (bash's, sourced,
/// completes the commands), and a shell it does not know is a usage error.
#[tokio::test]
async fn both_binaries_print_completion_scripts_for_bash_zsh_and_fish() {
    for (binary, function) in [("dispatcher", "_dispatcher"), ("worker-agent", "_worker__agent")] {
        let run = |shell: &'static str| {
            let mut command = tokio::process::Command::new(tests::binary(binary));
            command.args(["completions", shell]).stdin(Stdio::null());
            async move { command.output().await.expect("runs") }
        };
        let bash = run("bash").await;
        assert_eq!(bash.status.code(), Some(0), "{}", text(&bash.stderr));
        let script = std::env::temp_dir().join(unique("completion"));
        std::fs::write(&script, &bash.stdout).unwrap();
        // Sourced by bash, it registers the completion and offers the commands after the name.
        let probe = format!(
            "source {}; complete -p {binary}; COMP_WORDS=({binary} ''); COMP_CWORD=1; {function} {binary} '' {binary}; echo \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let completed = std::process::Command::new("bash").args(["-c", &probe]).output().expect("bash");
        let said = text(&completed.stdout);
        assert!(said.contains(&format!("-F {function}")) && said.contains(binary), "{said}{}", text(&completed.stderr));
        assert!(said.contains("completions") && said.contains("keygen"), "the commands are offered: {said}");
        std::fs::remove_file(&script).unwrap();
        let zsh = run("zsh").await;
        assert!(text(&zsh.stdout).starts_with(&format!("#compdef {binary}")), "{}", text(&zsh.stdout));
        let fish = run("fish").await;
        assert!(text(&fish.stdout).contains(&format!("complete -c {binary}")), "{}", text(&fish.stdout));
        let unknown = run("tcsh").await;
        assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown.stderr));
        assert!(text(&unknown.stderr).contains("invalid value 'tcsh'"), "{}", text(&unknown.stderr));
    }
}
