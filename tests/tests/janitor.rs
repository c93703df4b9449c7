//! The agent's workspace janitor, through the binary: leftover workspaces of completed tickets
//! and stale ones go (at start, and every --janitor-interval), young ones stay.

use std::process::Command;
use std::time::Duration;
use tests::agent::test_config;
use tests::{eventually, run_dispatcher, text, AgentProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_workspaces_of_completed_tickets_and_stale_ones_are_removed_and_young_ones_kept() {
    let config = test_config("janitor");
    std::fs::create_dir_all(&config.work_dir).unwrap();
    let stale = config.work_dir.join("stale-ticket-1");
    let young = config.work_dir.join("young-ticket-1");
    for dir in [&stale, &young] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("script.sh"), "echo left behind").unwrap();
    }
    assert!(Command::new("touch").args(["-d", "2 hours ago"]).arg(&stale).status().unwrap().success());

    let mut command = AgentProcess::command(&config);
    command.args(["--janitor-interval", "1s", "--workspace-max-age", "1h"]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    eventually("the stale workspace to go at start", Duration::from_secs(10), || async {
        (!stale.exists()).then_some(())
    })
    .await;

    // A completed ticket whose workspace was left behind (as a crash before its removal would).
    let out = run_dispatcher(&["submit", "--json", "--target", &config.agent_id, "--", "echo done"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let ticket = first["ticket"].as_str().expect("a ticket").to_ascii_lowercase();
    let leftover = config.work_dir.join(&ticket);
    // Only once the agent has removed the workspace itself on completing it (it logs so after),
    // or that removal could take the one left behind here.
    eventually("the agent to complete the ticket", Duration::from_secs(10), || async {
        agent.log_text().contains("tombstone kept").then_some(())
    })
    .await;
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("out.txt"), "x").unwrap();
    eventually("the completed ticket's workspace to go", Duration::from_secs(10), || async {
        (!leftover.exists()).then_some(())
    })
    .await;

    // The janitor logs once the removal is done, so the line may trail the directory's going.
    eventually("the janitor to log the completed ticket's removal", Duration::from_secs(10), || async {
        agent.log_text().contains("reason=\"completed\"").then_some(())
    })
    .await;
    assert!(young.exists(), "a young workspace of a ticket the store does not know stays");
    let log = agent.log_text();
    assert!(log.contains("janitor removed a workspace") && log.contains("reason=\"stale\""), "{log}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_and_max_age_from_the_environment_remove_a_workspace_that_goes_stale_while_running() {
    let config = test_config("janitor-env");
    let mut command = AgentProcess::command(&config);
    // The defaults (1h, 7d) would keep it for a week.
    command.env("CUTTLE_JANITOR_INTERVAL", "300ms").env("CUTTLE_WORKSPACE_MAX_AGE", "2s");
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let late = config.work_dir.join("late-ticket-1");
    std::fs::create_dir(&late).unwrap();
    let made = std::time::Instant::now();
    eventually("the workspace to go once 2s old", Duration::from_secs(15), || async { (!late.exists()).then_some(()) })
        .await;
    assert!(made.elapsed() >= Duration::from_millis(1900), "not before it was stale: {:?}", made.elapsed());
    eventually("the janitor to log the stale workspace's removal", Duration::from_secs(10), || async {
        agent.log_text().contains("reason=\"stale\"").then_some(())
    })
    .await;
    agent.stop().await;
}
