//! Safe rollouts across a fleet, through the real binaries: error budgets (`--max-errors`),
//! percentages for `--max-parallel` and `--max-errors`, `--abort-on-error`, and targets that
//! were never started shown as such.

use std::time::Duration;
use tests::*;

/// Runs `dispatcher submit` over `agents` with `flags` and `script`; gives (exit code, stdout, stderr).
async fn submit(agents: &[TestAgent], flags: &[&str], script: &str) -> (Option<i32>, String, String) {
    let mut command = dispatcher_command();
    command.arg("submit").args(flags);
    for agent in agents {
        command.args(["--target", agent.id()]);
    }
    command.args(["--", script]);
    let out = tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("submit ends").unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn start_agents(n: usize) -> Vec<TestAgent> {
    let mut agents = Vec::new();
    for _ in 0..n {
        agents.push(TestAgent::start("roll").await);
    }
    agents
}

async fn stop(agents: Vec<TestAgent>) {
    for agent in agents {
        agent.stop().await;
    }
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON event per line")).collect()
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_failing_targets_one_at_a_time_with_one_error_allowed_start_exactly_two() {
    let agents = start_agents(6).await;
    let markers = Markers::new();
    let script = format!("{}; exit 7", markers.record("runs"));
    let (code, stdout, stderr) =
        submit(&agents, &["--json", "--max-parallel", "1", "--max-errors", "1"], &script).await;
    assert_eq!(code, Some(7), "the first failure's code: {stderr}");
    assert_eq!(markers.count("runs"), 2, "exactly two targets started");
    let events = events(&stdout);
    let results = of_kind(&events, "result");
    assert_eq!(
        results.iter().map(|r| r["target"].as_str().unwrap()).collect::<Vec<_>>(),
        [agents[0].id(), agents[1].id()]
    );
    let skipped = of_kind(&events, "skipped");
    let skipped_targets: Vec<&str> = skipped.iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert_eq!(skipped_targets, agents[2..].iter().map(TestAgent::id).collect::<Vec<_>>());
    assert!(skipped.iter().all(|e| e["reason"] == "error_budget"), "{skipped:?}");
    assert_eq!(of_kind(&events, "ticket").len(), 2, "targets not started never got a ticket");
    let summary = events.last().unwrap();
    assert_eq!(
        (summary["event"].as_str(), summary["failed"].as_u64(), summary["skipped"].as_u64()),
        (Some("summary"), Some(2), Some(4))
    );
    stop(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentages_round_up_for_parallelism_and_down_for_the_error_budget() {
    let agents = start_agents(7).await;
    let markers = Markers::new();

    // 30% of 7 is 2.1: two failures are tolerated, the third stops the rollout.
    let failing = format!("{}; exit 3", markers.record("failing"));
    let (code, _, stderr) = submit(&agents, &["--max-parallel", "1", "--max-errors", "30%"], &failing).await;
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(markers.count("failing"), 3, "{stderr}");
    assert!(stderr.contains("7 targets, 1 at a time, no new target once more than 2 failed"), "{stderr}");
    assert!(stderr.contains("7 targets, 3 failed, 4 not started (error budget spent)"), "{stderr}");
    for agent in &agents[3..] {
        let row = stderr.lines().find(|l| l.starts_with(agent.id())).expect("a row per target");
        assert!(row.contains("not started"), "{row}");
    }

    // 30% of 7 rounds up to 3 at once: measured from the scripts' own start and end times.
    let spans = markers.dir.join("spans");
    let spanned =
        format!("echo start $(date +%s%N) >> '{0}'; sleep 0.5; echo end $(date +%s%N) >> '{0}'", spans.display());
    let (code, _, stderr) = submit(&agents, &["--max-parallel", "30%"], &spanned).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("7 targets, 3 at a time"), "{stderr}");
    let most = max_overlap(&std::fs::read_to_string(&spans).unwrap());
    assert!((2..=3).contains(&most), "{most} ran at once");

    // Out of range, and a parallelism that could never start anything.
    for bad in [["--max-errors", "101%"], ["--max-parallel", "0%"], ["--max-parallel", "ten"]] {
        let (code, _, stderr) = submit(&agents[..2], &bad, "true").await;
        assert_eq!(code, Some(2), "{bad:?}: {stderr}");
    }
    stop(agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_error_cancels_running_targets_once_the_budget_is_spent() {
    let agents = start_agents(3).await;
    let markers = Markers::new();
    // The first target fails at once; the second would run for a minute; the third must never start.
    let script =
        format!("{}; [ \"$CUTTLE_AGENT_ID\" = '{}' ] && exit 4; sleep 60", markers.record("runs"), agents[0].id());
    let started = std::time::Instant::now();
    let flags = ["--json", "--max-parallel", "2", "--max-errors", "0", "--abort-on-error"];
    let (code, stdout, stderr) = submit(&agents, &flags, &script).await;
    assert!(started.elapsed() < Duration::from_secs(40), "the running target was cancelled, not waited for");
    assert_eq!(code, Some(4), "{stderr}");
    let events = events(&stdout);
    let result_of = |agent: &TestAgent| {
        of_kind(&events, "result").into_iter().find(|r| r["target"] == agent.id()).map(|r| r["outcome"].clone())
    };
    assert_eq!(result_of(&agents[0]), Some("completed".into()));
    assert_eq!(result_of(&agents[1]), Some("cancelled".into()));
    let skipped = of_kind(&events, "skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["target"], agents[2].id());
    assert_eq!(markers.count("runs"), 2);
    stop(agents).await;
}
