//! Safe rollouts across a fleet, through the real binaries: error budgets (`--max-errors`),
//! percentages for `--max-parallel` and `--max-errors`, `--abort-on-error`, and targets that
//! were never started shown as such.

use std::time::Duration;
use tests::*;

/// Runs the dispatcher binary with `args`; gives (exit code, stdout, stderr).
async fn dispatcher(args: &[String]) -> (Option<i32>, String, String) {
    let out = dispatcher_command().args(args).output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("the dispatcher ends").unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `dispatcher submit` over `agents` with `flags` and `script`.
async fn submit(agents: &[TestAgent], flags: &[&str], script: &str) -> (Option<i32>, String, String) {
    let mut args: Vec<String> = std::iter::once("submit").chain(flags.iter().copied()).map(String::from).collect();
    for agent in agents {
        args.extend(["--target".to_string(), agent.id().to_string()]);
    }
    args.extend(["--".to_string(), script.to_string()]);
    dispatcher(&args).await
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

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
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

/// A config for an agent process labelled `labels`, announcing every `interval`.
fn labelled(what: &str, labels: &[(&str, &str)], interval: Duration) -> worker_agent::config::AgentConfig {
    let mut config = agent::test_config(what);
    config.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    config.announce_interval = interval;
    config
}

/// `dispatcher agents --json --select EXPR`: the agent ids listed, and how long it took.
async fn live_agents(select: &str) -> (Vec<serde_json::Value>, Duration) {
    let started = std::time::Instant::now();
    let out = dispatcher_command().args(["agents", "--json", "--select", select]).output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.expect("agents ends").unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    (events(&String::from_utf8_lossy(&out.stdout)), started.elapsed())
}

fn ids(agents: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = agents.iter().map(|a| a["agent"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_reaches_exactly_the_live_agents_whose_labels_match() {
    // A label no other test uses, so the shared presence stream's other agents never match.
    let fleet = unique("fleet");
    let interval = Duration::from_secs(1);
    let web =
        AgentProcess::start(labelled("web", &[("fleet", &fleet), ("env", "prod"), ("role", "web")], interval)).await;
    let db = AgentProcess::start(labelled("db", &[("fleet", &fleet), ("env", "prod"), ("role", "db")], interval)).await;
    // Labels from the environment variable instead of flags.
    let staging_config = labelled("staging", &[], interval);
    let mut command = AgentProcess::command(&staging_config);
    command.env("CUTTLE_LABELS", format!("fleet={fleet},env=staging,role=web"));
    let staging = AgentProcess::spawn_command(staging_config, command);

    let everyone = format!("fleet={fleet}");
    let expected = {
        let mut ids = vec![web.config.agent_id.clone(), db.config.agent_id.clone(), staging.config.agent_id.clone()];
        ids.sort();
        ids
    };
    let listed = eventually("three agents announced", Duration::from_secs(20), || {
        let (everyone, expected) = (everyone.clone(), expected.clone());
        async move { Some(live_agents(&everyone).await).filter(|(agents, _)| ids(agents) == expected) }
    })
    .await;
    assert!(listed.1 < Duration::from_secs(3), "listing took {:?}", listed.1);
    let web_entry = listed.0.iter().find(|a| a["agent"] == web.config.agent_id.as_str()).unwrap();
    assert_eq!(web_entry["labels"]["role"], "web");
    assert_eq!(web_entry["version"], env!("CARGO_PKG_VERSION"));
    assert!(web_entry["last_seen_ms_ago"].as_u64().unwrap() < 3_000);
    let (staging_only, _) = live_agents(&format!("{everyone},env!=prod")).await;
    assert_eq!(ids(&staging_only), std::slice::from_ref(&staging.config.agent_id), "labels from CUTTLE_LABELS");

    // Only the two production agents run the script.
    let markers = Markers::new();
    let script = format!("echo run >> '{}'/\"$CUTTLE_AGENT_ID\"", markers.dir.display());
    let prod = format!("{everyone},env=prod");
    let (code, stdout, stderr) = dispatcher(&strings(&["submit", "--json", "--select", &prod, "--", &script])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("matches 2 live agents"), "the resolved list is printed: {stderr}");
    assert_eq!(markers.count(&web.config.agent_id), 1);
    assert_eq!(markers.count(&db.config.agent_id), 1);
    assert_eq!(markers.count(&staging.config.agent_id), 0);
    let events = events(&stdout);
    let selected = of_kind(&events, "selected");
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0]["targets"].as_array().unwrap().len(), 2);

    // An empty match runs nothing and says why.
    let nowhere = format!("{everyone},env=nowhere");
    let (code, _, stderr) = dispatcher(&strings(&["submit", "--select", &nowhere, "--", &script])).await;
    assert_eq!(code, Some(102), "{stderr}");
    assert!(stderr.contains("no live agent matches --select"), "{stderr}");
    // A malformed selector is bad usage.
    assert_eq!(dispatcher(&strings(&["agents", "--select", "env"])).await.0, Some(2));
    for agent in [web, db, staging] {
        agent.stop().await;
    }
}

/// Waits until `dispatcher agents --select select` lists exactly `n` agents.
async fn until_listed(select: &str, n: usize, within: Duration) {
    eventually(&format!("{n} agents listed for {select}"), within, || async move {
        (live_agents(select).await.0.len() == n).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_drops_out_of_agents_within_its_heartbeat_window() {
    let fleet = unique("fleet");
    let select = format!("fleet={fleet}");
    let mut killed = AgentProcess::start(labelled("killed", &[("fleet", &fleet)], Duration::from_secs(1))).await;
    let stopped = AgentProcess::start(labelled("stopped", &[("fleet", &fleet)], Duration::from_secs(1))).await;
    until_listed(&select, 2, Duration::from_secs(20)).await;

    // SIGKILL: no goodbye, so it drops out once three heartbeats (3 s) are missed.
    killed.kill().await;
    let killed_at = std::time::Instant::now();
    until_listed(&select, 1, Duration::from_secs(10)).await;
    let gone_after = killed_at.elapsed();
    assert!(gone_after >= Duration::from_millis(1500), "not before a missed heartbeat: {gone_after:?}");
    assert!(gone_after <= Duration::from_secs(5), "within its 3 s window (plus a listing): {gone_after:?}");

    // SIGTERM: the agent says it is leaving, and drops out at once.
    stopped.signal(nix::sys::signal::Signal::SIGTERM);
    let stopped_at = std::time::Instant::now();
    until_listed(&select, 0, Duration::from_secs(10)).await;
    assert!(stopped_at.elapsed() < Duration::from_millis(2500), "a leaving agent drops out at once");
    killed.stop().await;
    stopped.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_labels_and_announce_intervals_are_refused_by_the_agent() {
    let refusals = [
        (["--label", "id=x"], "is reserved"),
        (["--label", "bad key=x"], "label key \"bad key\""),
        (["--label", "novalue"], "expected KEY=VALUE"),
        (["--announce-interval", "1m"], "--announce-interval must be between"),
    ];
    for (bad, reason) in refusals {
        let run = agent_command().args(["run", "--agent-id", &unique("bad")]).args(bad).output();
        let out = tokio::time::timeout(Duration::from_secs(10), run).await.expect("refused at once").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(reason), "{bad:?} is refused: {stderr}");
    }
    let run = agent_command()
        .args(["run", "--agent-id", &unique("bad")])
        .env("CUTTLE_LABELS", "env=prod,env=staging")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run).await.expect("refused at once").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("given twice"), "{stderr}");
}
