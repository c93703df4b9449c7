//! One script on many agents from the CLI: never more than `--max-parallel` at once (measured
//! from the scripts' own start and end times), every result in the summary.

use std::time::Duration;
use tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_twenty_agents_never_runs_more_than_max_parallel_at_once() {
    let mut agents = Vec::new();
    for _ in 0..20 {
        agents.push(TestAgent::start("fan").await);
    }
    let markers = Markers::new();
    let spans = markers.dir.join("spans");
    let script = format!(
        "echo start $(date +%s%N) >> '{0}'; sleep 0.3; echo end $(date +%s%N) >> '{0}'; echo hello from $CUTTLE_AGENT_ID",
        spans.display()
    );
    let mut args = vec!["submit".to_string(), "--json".into(), "--max-parallel".into(), "5".into()];
    for agent in &agents {
        args.extend(["--target".to_string(), agent.id().to_string()]);
    }
    args.extend(["--".to_string(), script.clone()]);
    let out = dispatcher_command().args(&args).output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().all(|e| e["target"].is_string() || e["event"] == "summary"), "the target is on every event");
    let results: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "result").collect();
    assert_eq!(results.len(), 20);
    for agent in &agents {
        let result = results.iter().find(|r| r["target"] == agent.id()).expect("a result per target");
        assert_eq!((result["outcome"].as_str(), result["exit_code"].as_i64()), (Some("completed"), Some(0)));
        let hello = events.iter().any(|e| {
            e["event"] == "log" && e["target"] == agent.id() && e["text"] == format!("hello from {}", agent.id())
        });
        assert!(hello, "output of {} arrives with its target", agent.id());
    }
    assert_eq!(events.last().unwrap()["event"], "summary");
    let most = max_overlap(&std::fs::read_to_string(&spans).unwrap());
    println!("most scripts at once: {most}");
    assert!(most <= 5, "{most} ran at once");
    assert!(most >= 2, "targets ran in parallel");

    // As text: prefixed output, a summary table with every target, and a failure makes the exit
    // code non-zero.
    let failing = format!("[ \"$CUTTLE_AGENT_ID\" = '{}' ] && exit 9; echo ok", agents[3].id());
    let mut args = vec!["submit".to_string()];
    for agent in &agents[..6] {
        args.extend(["--target".to_string(), agent.id().to_string()]);
    }
    args.extend(["--".to_string(), failing]);
    let out = dispatcher_command().args(&args).output().await.unwrap();
    assert_eq!(out.status.code(), Some(9));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(&format!("[{}] ok", agents[0].id())), "{stdout}");
    assert!(stderr.contains("TARGET") && stderr.contains("6 targets, 1 failed"), "{stderr}");
    for agent in &agents[..6] {
        assert!(stderr.contains(agent.id()), "{} in the summary", agent.id());
    }
    assert!(!stderr.contains("\u{1b}[K"), "no progress bar when stderr is not a terminal");
    for agent in agents {
        agent.stop().await;
    }
}
