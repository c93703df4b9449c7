//! What a deployment script gets besides its text, through the real binaries: files in its
//! workspace (`--file`), arguments (`--arg`), and secrets (`--secret-env`, `--secret-env-file`)
//! that reach its environment but never its output, the ticket store, the journal, the terminal
//! or a log; and an agent too old to mask secrets is never sent any.

use serde_json::{json, Value};
use std::process::Output;
use std::time::Duration;
use tests::service::{http, journal_prefix, remove_journal};
use tests::*;

async fn run(args: &[&str]) -> Output {
    let output = dispatcher_command().args(args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("dispatcher finishes").expect("dispatcher runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A secret value that appears nowhere in the scripts' text.
const TOKEN: &str = "tok-7f3a9c1e-secret";
const FROM_FILE: &str = "pw-from-file-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_land_in_the_workspace_and_arguments_are_positional() {
    let agent = TestAgent::start("inputs-files").await;
    let markers = Markers::new();
    let (plain, renamed) = (markers.dir.join("notes.txt"), markers.dir.join("local-name.conf"));
    std::fs::write(&plain, "alpha\n").unwrap();
    std::fs::write(&renamed, "k=v\n").unwrap();
    let out = run(&[
        "submit",
        "--target",
        agent.id(),
        "--file",
        plain.to_str().unwrap(),
        "--file",
        &format!("{}:app.conf", renamed.display()),
        "--arg",
        "First",
        "--arg",
        "two words",
        "--arg",
        "-x",
        "--",
        r#"echo "[$1][$2][$3] $#"; cat notes.txt app.conf"#,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "[First][two words][-x] 3\nalpha\nk=v\n");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_does_not_fit_in_a_command_is_refused_pointing_at_upload() {
    let markers = Markers::new();
    let big = markers.dir.join("big.bin");
    std::fs::write(&big, vec![b'x'; contracts::wire::messages::MAX_SCRIPT_SPEC_BYTES + 1]).unwrap();
    let out = run(&["submit", "--target", &unique("nobody"), "--file", big.to_str().unwrap(), "--", "true"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("big.bin") && stderr.contains("dispatcher upload"), "{stderr}");
    // Files under the limit that together are over it.
    let half = markers.dir.join("half.bin");
    std::fs::write(&half, vec![b'x'; contracts::wire::messages::MAX_SCRIPT_SPEC_BYTES / 2 + 1]).unwrap();
    let half = half.to_str().unwrap();
    let out = run(&["submit", "--target", "x", "--file", half, "--file", &format!("{half}:again"), "--", "true"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("dispatcher upload"), "{}", text(&out.stderr));
}

/// Prints the secrets whole, in two writes with a pause between them, across a line end, and on
/// stderr; then waits for `gate` so the test can read the ticket store while output is there.
fn leaky_script(gate: &std::path::Path) -> String {
    format!(
        r#"echo "plain $TOKEN"
half=$(printf %s "$TOKEN" | cut -c1-6); rest=$(printf %s "$TOKEN" | cut -c7-)
printf 'split %s' "$half"; sleep 0.3; printf '%s end\n' "$rest"
echo "err $FROM_FILE" >&2
printf 'lines %s\n' "$MULTI"
echo "set ${{#TOKEN}}"
while [ ! -e '{}' ]; do sleep 0.05; done"#,
        gate.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_script_but_never_its_output_the_store_or_a_log() {
    let mut config = tests::agent::test_config("inputs-secrets");
    config.lease_ttl = Duration::from_secs(3);
    let mut command = AgentProcess::command(&config);
    command.env("RUST_LOG", "debug");
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let markers = Markers::new();
    let secrets_file = markers.dir.join("secrets.env");
    std::fs::write(&secrets_file, format!("# deploy secrets\n\nFROM_FILE={FROM_FILE}\nMULTI=first-line\n")).unwrap();
    let gate = markers.dir.join("gate");
    let submit = dispatcher_command()
        .args(["submit", "--target", &config.agent_id, "--secret-env", &format!("TOKEN={TOKEN}")])
        .args(["--secret-env-file", secrets_file.to_str().unwrap(), "--", &leaky_script(&gate)])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the script waits, its output is in the ticket store: masked.
    let stored = eventually("the output in the ticket store", Duration::from_secs(30), || async {
        let stored = redis_text(&config.key_prefix).await;
        stored.contains("set 19").then_some(stored)
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), submit.wait_with_output()).await.unwrap().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "plain ********\nsplit ******** end\nlines ********\nset 19\n");
    assert!(stderr.contains("err ********"), "{stderr}");
    assert!(stored.contains("split ******** end"), "{stored}");
    let agent_log = agent.log_text();
    for (place, seen) in
        [("stdout", &stdout), ("stderr", &stderr), ("ticket store", &stored), ("agent log", &agent_log)]
    {
        for secret in [TOKEN, FROM_FILE, "first-line"] {
            assert!(!seen.contains(secret), "{secret} in the {place}: {seen}");
        }
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_too_old_to_mask_is_sent_no_secret_and_runs_nothing() {
    let agent = TestAgent::start_with(tests::agent::legacy_config("inputs-legacy")).await;
    let markers = Markers::new();
    let script = markers.record("run");
    let out = run(&["submit", "--target", agent.id(), "--secret-env", &format!("TOKEN={TOKEN}"), "--", &script]).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("too old to mask secrets"), "{}", text(&out.stderr));
    let out = run(&["--protocol", "v1", "submit", "--target", agent.id(), "--secret-env", "A=b", "--", &script]).await;
    assert_eq!(out.status.code(), Some(103), "an old dispatcher's protocol carries no secrets either");
    assert_eq!(markers.count("run"), 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_takes_files_arguments_and_secrets_and_journals_no_secret() {
    let agent = TestAgent::start("inputs-svc").await;
    let prefix = journal_prefix("inputs-svc");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let body = json!({
        "target": agent.id(),
        "script": r#"echo "[$1] $(cat app.conf) $TOKEN""#,
        "args": ["First"],
        "files": [{"name": "app.conf", "content_base64": "az12"}],
        "secret_env": {"TOKEN": TOKEN},
    });
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let ticket = accepted["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/tickets/{ticket}", service.url);
    let record: Value = eventually("the ticket to finish", Duration::from_secs(30), || async {
        let record: Value = http().get(&url).send().await.ok()?.json().await.ok()?;
        (record["state"] == "finished").then_some(record)
    })
    .await;
    assert_eq!(record["output"][0]["text"], "[First] k=v ********", "{record}");
    let journal = redis_text(&prefix).await;
    assert!(journal.contains("TOKEN") && !journal.contains(TOKEN), "{journal}");
    assert!(!service.log_text().contains(TOKEN));
    let bad = json!({"target": agent.id(), "script": "true", "files": [{"name": "../x", "content_base64": ""}]});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&bad).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}
