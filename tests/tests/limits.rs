//! Limits on a script's resources, through the binaries, on this machine's cgroup v1 controllers
//! (`memory`, `cpu`, `pids`; the v2 layout is tested against a tree laid out like cgroupfs in
//! `worker_agent::limits`): a memory hog is killed with the memory outcome (exit 113), a fork
//! bomb is stopped by the task limit and the agent keeps serving, CPU and file size are bounded,
//! the agent's caps win and are reported by `capabilities` (a dispatcher never sends limits to an
//! agent that would ignore them: `run_as::a_dispatcher_never_sends_a_user_or_limits_…`).

use std::net::SocketAddr;
use std::time::Duration;
use tests::agent::test_config;
use tests::*;

async fn agent(what: &str, flags: &[&str], env: &[(&str, &str)]) -> AgentProcess {
    AgentProcess::start_with(test_config(what), flags, env).await
}

/// Stops the agent and removes the cgroup subtree it made for its scripts (a killed agent leaves
/// it; each script's own cgroup went when the script ended).
async fn stop(agent: AgentProcess) {
    let subtree = format!("cuttle.{}", agent.config.agent_id);
    agent.stop().await;
    fn remove(dir: &std::path::Path, name: &str, depth: u32) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            if entry.file_name().to_string_lossy() == name {
                let _ = std::fs::remove_dir(entry.path());
            } else if depth > 0 {
                remove(&entry.path(), name, depth - 1);
            }
        }
    }
    for controller in ["memory", "cpu", "pids"] {
        remove(&std::path::Path::new("/sys/fs/cgroup").join(controller), &subtree, 3);
    }
}

/// A script that takes `mib` MiB of memory at once (dd's one buffer).
fn hog(mib: u32) -> String {
    format!("dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>/dev/null && echo survived")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_for_its_limit_with_an_outcome_of_its_own() {
    let addr = SocketAddr::from(([127, 0, 0, 1], services::free_port()));
    let agent = agent("limit-memory", &["--health-addr", &addr.to_string()], &[]).await;
    let id = agent.config.agent_id.clone();
    let out = run_dispatcher(&["submit", "--json", "--target", &id, "--memory-max", "32MiB", "--", &hog(256)]).await;
    assert_eq!(out.status.code(), Some(113), "{}{}", text(&out.stdout), text(&out.stderr));
    let events = text(&out.stdout);
    assert!(events.contains("the script passed its memory limit of 32MiB and was killed"), "{events}");
    let result: serde_json::Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert_eq!((result["outcome"].as_str(), result["exit_code"].as_i64()), (Some("failed"), Some(-48)), "{result}");
    let (_, metrics) = http_get(addr, "/metrics").await.expect("/metrics");
    assert!(metrics.contains("cuttle_script_limits_reached_total{limit=\"memory\"} 1"), "{metrics}");
    // Within its limit the same script runs to its end.
    let out = run_dispatcher(&["submit", "--target", &id, "--memory-max", "512MiB", "--", &hog(64)]).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "survived\n".to_owned()), "{}", text(&out.stderr));
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_by_the_task_limit_and_the_agent_keeps_serving() {
    let agent = agent("limit-tasks", &[], &[]).await;
    let id = agent.config.agent_id.clone();
    let bomb = "bomb() { bomb | bomb & }; bomb";
    // The timeout is only a net: the bomb's shells give up once their forks fail.
    let out = run_dispatcher(&["submit", "--target", &id, "--tasks-max", "32", "--timeout", "10s", "--", bomb]).await;
    let said = text(&out.stderr);
    assert!(said.contains("Cannot fork"), "{said}");
    assert!(said.contains("the script reached its task limit of 32:") && said.contains("forks were refused"), "{said}");
    // Nothing of it is left: its cgroup went with whatever it held.
    let cgroups = std::fs::read_dir("/sys/fs/cgroup/pids").unwrap().filter_map(Result::ok);
    let mine: Vec<_> = cgroups.filter(|e| e.file_name().to_string_lossy().ends_with(&id)).collect();
    for subtree in mine {
        let left: Vec<_> =
            std::fs::read_dir(subtree.path()).unwrap().filter_map(Result::ok).filter(|e| e.path().is_dir()).collect();
        assert!(left.is_empty(), "no script cgroup left: {left:?}");
    }
    let out = run_dispatcher(&["submit", "--target", &id, "--", "echo still serving"]).await;
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "still serving\n".to_owned()));
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_file_size_are_bounded() {
    let agent = agent("limit-cpu", &[], &[]).await;
    let id = agent.config.agent_id.clone();
    // Two seconds of busy loop on a fifth of a core: about 0.4 s of CPU, where it would take 2 s.
    let busy = "end=$((SECONDS+2)); while [ $SECONDS -lt $end ]; do :; done; times | head -1";
    let out = run_dispatcher(&["submit", "--target", &id, "--shell", "bash", "--cpu-max", "0.2", "--", busy]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let used: f64 = text(&out.stdout)
        .split_whitespace()
        .map(|time| {
            let (minutes, seconds) = time.trim_end_matches('s').split_once('m').unwrap();
            minutes.parse::<f64>().unwrap() * 60.0 + seconds.parse::<f64>().unwrap()
        })
        .sum();
    assert!(used < 1.2, "CPU used in about 2 s on 0.2 cores: {used} s");

    let write = "dd if=/dev/zero of=big bs=64K count=100 2>/dev/null; stat -c %s big";
    let out = run_dispatcher(&["submit", "--target", &id, "--file-size-max", "1MiB", "--", write]).await;
    assert_eq!(text(&out.stdout), "1048576\n", "{}", text(&out.stderr));
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_caps_win_apply_to_scripts_that_name_none_and_are_reported_by_capabilities() {
    let caps = [
        ("CUTTLE_MAX_MEMORY_PER_SCRIPT", "48MiB"),
        ("CUTTLE_MAX_CPU_PER_SCRIPT", "1.5"),
        ("CUTTLE_MAX_TASKS_PER_SCRIPT", "200"),
        ("CUTTLE_MAX_FILE_SIZE_PER_SCRIPT", "2GiB"),
    ];
    let agent = agent("limit-caps", &[], &caps).await;
    let id = agent.config.agent_id.clone();
    let out = run_dispatcher(&["capabilities", &id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("limits: memory by cgroup-v1 (cap 48MiB), cpu by cgroup-v1 (cap 1.5 cores), tasks by cgroup-v1 (cap 200), file size by rlimit (cap 2GiB)"),
        "{said}"
    );
    assert!(said.contains("limits/v1"), "{said}");
    let markers = Markers::new();
    let above = format!("{}; {}", markers.record("above"), hog(1));
    let out = run_dispatcher(&["submit", "--target", &id, "--memory-max", "64MiB", "--", &above]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the memory limit asked for (64MiB) is above this agent's cap (48MiB"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(markers.count("above"), 0, "nothing ran");
    let out = run_dispatcher(&["submit", "--target", &id, "--", &hog(256)]).await;
    assert_eq!(out.status.code(), Some(113), "the cap is the limit of a script that names none: {}", text(&out.stderr));
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_api_takes_limits_and_records_the_memory_outcome() {
    use tests::service::{http, journal_prefix, remove_journal};
    let agent = agent("limit-api", &[], &[]).await;
    let prefix = journal_prefix("limit-api");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let body = serde_json::json!({"target": agent.config.agent_id, "script": hog(256), "memory_max": "32MiB", "tasks_max": 64});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.expect("POST");
    let answer: serde_json::Value = response.json().await.expect("json");
    let ticket = answer["tickets"][0]["ticket"].as_str().unwrap_or_else(|| panic!("{answer}")).to_owned();
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(record["exit_code"].as_i64(), Some(-48), "{record}");
    let body = serde_json::json!({"target": agent.config.agent_id, "script": "true", "cpu_max": "lots"});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.expect("POST");
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("`cpu_max`"));
    service.stop().await;
    remove_journal(&prefix).await;
    stop(agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_given_as_flags_are_reported_and_bad_limits_are_refused_with_the_reason_before_anything_runs() {
    let flags = [
        "--max-memory-per-script",
        "32MiB",
        "--max-cpu-per-script",
        "0.25",
        "--max-tasks-per-script",
        "50",
        "--max-file-size-per-script",
        "1MiB",
    ];
    let agent = agent("limit-flags", &flags, &[]).await;
    let id = agent.config.agent_id.clone();
    let out = run_dispatcher(&["capabilities", &id, "--json"]).await;
    let answer: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let caps = &answer["limits"]["caps"];
    assert_eq!(
        (
            caps["memory_max"].as_u64(),
            caps["cpu_max"].as_u64(),
            caps["tasks_max"].as_u64(),
            caps["file_size_max"].as_u64()
        ),
        (Some(32 << 20), Some(250), Some(50), Some(1 << 20)),
        "{answer}"
    );
    stop(agent).await;

    // Values that are no limit: refused by either binary at once, saying what a good one is.
    let submit =
        |flag: &'static str, value: &'static str| vec!["submit", "--target", "nobody-here", flag, value, "--", "true"];
    for (args, reason) in [
        (submit("--memory-max", "0"), "is not a size such as 512MiB"),
        (submit("--memory-max", "1TB"), "is not a size such as 512MiB"),
        (submit("--cpu-max", "lots"), "is not a number of cores"),
        (submit("--cpu-max", "0.0001"), "is not a number of cores"),
        (submit("--tasks-max", "0"), "--tasks-max"),
        (vec!["submit", "--target", "nobody-here", "--file-size-max=-1", "--", "true"], "is not a size such as 512MiB"),
    ] {
        let out = run_dispatcher(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(reason), "{args:?}: {}", text(&out.stderr));
    }
    let config = test_config("limit-bad-caps");
    for (flag, value, reason) in [
        ("--max-memory-per-script", "0", "is not a size such as 512MiB"),
        ("--max-cpu-per-script", "2000", "is not a number of cores"),
        ("--max-tasks-per-script", "0", "--max-tasks-per-script"),
    ] {
        let mut command = AgentProcess::command(&config);
        command.args([flag, value]);
        let out = tokio::time::timeout(Duration::from_secs(20), command.output()).await.unwrap().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(reason), "{flag} {value}: {}", text(&out.stderr));
    }
}
