//! Approvals the agent enforces, through the real binaries: an agent whose trusted-keys file says
//! `require 2 of release-manager oncall security for purpose=deployment` runs such a command only
//! with approvals by two distinct named keys over that very command, unexpired; forged,
//! duplicated, foreign, expired and misdirected approvals sent by hand do not count, and nothing
//! runs. `dispatcher submit` is told before anything is sent; `submit --detach` waits in the
//! journal, `dispatcher approve` adds approvals, and the service sends the start once the last
//! one needed is in: the script runs once, and its receipt names the approvers.

use contracts::trust::approval::{approve, command_digest};
use contracts::trust::keys::SecretKey;
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::error::ErrorKind;
use contracts::wire::messages::{ScriptSpec, StartScriptV2};
use contracts::wire::ticket::Ticket;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tests::agent::{test_config, AgentProcess};
use tests::raw::RawBroker;
use tests::service::{http, journal_cli as run_cli, journal_command, journal_prefix, remove_journal, ServiceProcess};
use tests::*;

const RULE: &str = "require 2 of release-manager oncall security for purpose=deployment";

fn now_ms() -> u64 {
    contracts::time::unix_millis(SystemTime::now())
}

/// The three approvers' keys and key files: release-manager, oncall, security.
struct Approvers {
    keys: Vec<(SecretKey, PathBuf)>,
}

impl Approvers {
    fn new() -> Approvers {
        Approvers { keys: ["release-manager", "oncall", "security"].iter().map(|name| trust::keypair(name)).collect() }
    }

    fn key(&self, index: usize) -> &SecretKey {
        &self.keys[index].0
    }

    fn file(&self, index: usize) -> &str {
        self.keys[index].1.to_str().expect("a UTF-8 path")
    }
}

/// Writes the trusted keys of an agent: the test dispatcher key and the three approvers, named,
/// and `rule` if any.
fn write_trusted(file: &std::path::Path, approvers: &Approvers, rule: Option<&str>) {
    let text = format!(
        "{} test dispatcher\n{} name=release-manager\n{} name=oncall\n{} name=security\n{}\n",
        trust::keys().dispatcher.public(),
        approvers.key(0).public(),
        approvers.key(1).public(),
        approvers.key(2).public(),
        rule.unwrap_or("")
    );
    trust::write_atomically(file, &text);
}

/// The configuration of an agent trusting the test dispatcher key and the three approvers,
/// under `rule` if any.
fn approving_config(what: &str, approvers: &Approvers, rule: Option<&str>) -> worker_agent::config::AgentConfig {
    let mut config = test_config(what);
    let file = std::env::temp_dir().join(format!("{}.trusted", config.agent_id));
    write_trusted(&file, approvers, rule);
    config.trusted_keys_file = Some(file);
    config
}

/// An agent trusting the test dispatcher key and the three approvers, named, under `RULE`.
async fn approving_agent(what: &str, approvers: &Approvers) -> AgentProcess {
    AgentProcess::start(approving_config(what, approvers, Some(RULE))).await
}

/// A signed start of `spec` under `ticket` for `target`, as a dispatcher encodes it.
fn start(target: &str, ticket: &Ticket, spec: ScriptSpec) -> Vec<u8> {
    let body = StartScriptV2 { ticket: ticket.clone(), spec, wait_for_output: None, first_issued_at: None };
    let not_after = Some(now_ms() + 60_000);
    Request::StartScriptV2(body).encode(target, now_ms(), not_after, &mut edge::entropy::OsEntropy).expect("encode").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_a_command_only_with_enough_distinct_valid_approvals() {
    let approvers = Approvers::new();
    let agent = approving_agent("approvals-raw", &approvers).await;
    let id = agent.config.agent_id.clone();
    let markers = Markers::new();
    let spec = ScriptSpec {
        script: markers.record("deploy"),
        purpose: Some("deployment".into()),
        submitter: Some("cli:ada".into()),
        ..Default::default()
    };
    let digest = command_digest(&spec, &id);
    let valid = |index: usize| approve(approvers.key(index), &digest, now_ms() + 3_600_000);
    let mut forged = valid(0);
    forged.expires_at += 3_600_000;
    let foreign = approve(&SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap(), &digest, now_ms() + 60_000);
    let expired = approve(approvers.key(2), &digest, now_ms() - 600_000);
    let elsewhere = approve(approvers.key(2), &command_digest(&spec, "another-agent"), now_ms() + 60_000);
    let other_script = ScriptSpec { script: "echo other".into(), ..spec.clone() };
    let for_another_script = approve(approvers.key(0), &command_digest(&other_script, &id), now_ms() + 60_000);
    let mut raw = RawBroker::connect().await;
    let cases = [
        (vec![], "approvals none; 2 more needed of release-manager, oncall, security"),
        (vec![valid(1), valid(1)], "approvals 1 by oncall; 1 more needed of release-manager, security"),
        (vec![forged, valid(1)], "ignored: release-manager's signature does not verify"),
        (vec![foreign, valid(1)], "is not one the rules name"),
        (vec![expired, valid(1)], "ignored: security's approval expired"),
        (vec![elsewhere, valid(1)], "approves another command"),
        (vec![for_another_script, valid(1)], "approves another command"),
    ];
    for (approvals, why) in cases {
        let count = approvals.len();
        let body = start(&id, &edge::entropy::ticket(), ScriptSpec { approvals, ..spec.clone() });
        let correlation = raw.publish(&id, "StartScriptV2", &body).await;
        let Reply::Error(refused) = raw.reply(&correlation).await else { panic!("ran with {count} approvals: {why}") };
        assert_eq!(refused.kind, ErrorKind::NotAuthorized);
        assert!(refused.message.contains(&format!("not approved as `{RULE}` requires")), "{}", refused.message);
        assert!(
            refused.message.contains(why) && refused.message.ends_with("nothing ran"),
            "{why}: {}",
            refused.message
        );
    }
    assert_eq!(markers.count("deploy"), 0, "nothing ran");

    // Another purpose is not what the rule selects.
    let runbook = ScriptSpec { script: markers.record("runbook"), purpose: Some("runbook".into()), ..spec.clone() };
    let correlation = raw.publish(&id, "StartScriptV2", &start(&id, &edge::entropy::ticket(), runbook)).await;
    assert!(matches!(raw.reply(&correlation).await, Reply::ScriptStatus(_)));

    // Two distinct approvals, one of them given twice: it runs, once, however often it is sent.
    let ticket = edge::entropy::ticket();
    let approved = ScriptSpec { approvals: vec![valid(2), valid(0), valid(2)], ..spec.clone() };
    for _ in 0..3 {
        let correlation = raw.publish(&id, "StartScriptV2", &start(&id, &ticket, approved.clone())).await;
        assert!(matches!(raw.reply(&correlation).await, Reply::ScriptStatus(_)), "approved");
    }
    eventually("both scripts ran", Duration::from_secs(20), || async {
        (markers.count("deploy") == 1 && markers.count("runbook") == 1).then_some(())
    })
    .await;
    // Its receipt names the approvers, the purpose and the submitter it was signed with.
    let receipt = eventually("the receipt of the approved run", Duration::from_secs(30), || {
        let (id, ticket) = (id.clone(), ticket.to_string());
        async move {
            let out = run_dispatcher(&["receipts", "--target", &id, "--json", "--since", "10m"]).await;
            let lines: Vec<Value> = text(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            lines.into_iter().find(|r| r["ticket"] == ticket.as_str())
        }
    })
    .await;
    let mut expected = vec![approvers.key(0).id().to_string(), approvers.key(2).id().to_string()];
    expected.sort();
    let mut named: Vec<String> = receipt["approved_by"]
        .as_array()
        .expect("approved_by")
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    named.sort();
    assert_eq!(named, expected, "{receipt}");
    assert_eq!((receipt["purpose"].as_str(), receipt["submitter"].as_str()), (Some("deployment"), Some("cli:ada")));
    raw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_count_only_for_the_agent_itself_even_for_unsigned_commands() {
    let approvers = Approvers::new();
    let mut config = approving_config("approvals-unsigned", &approvers, Some(RULE));
    config.insecure_allow_unsigned = true;
    let agent = AgentProcess::start(config).await;
    let id = agent.config.agent_id.clone();
    let markers = Markers::new();
    let spec =
        ScriptSpec { script: markers.record("deploy"), purpose: Some("deployment".into()), ..Default::default() };
    let approved_for = |target: &str| {
        let digest = command_digest(&spec, target);
        let approvals = (0..2).map(|i| approve(approvers.key(i), &digest, now_ms() + 60_000)).collect();
        ScriptSpec { approvals, ..spec.clone() }
    };
    let mut raw = RawBroker::connect().await;
    let queue = contracts::wire::topology::agent_queue(&id);
    // Unsigned, addressed to another agent (not checked when unsigned), approved for that one.
    let body = start("another-agent", &edge::entropy::ticket(), approved_for("another-agent"));
    let correlation = raw.publish_to(&queue, "StartScriptV2", &body, None).await;
    let Reply::Error(refused) = raw.reply(&correlation).await else { panic!("another agent's approvals counted") };
    assert!(refused.message.contains("approves another command"), "{}", refused.message);
    // Approved for this agent: it runs.
    let body = start(&id, &edge::entropy::ticket(), approved_for(&id));
    let correlation = raw.publish_to(&queue, "StartScriptV2", &body, None).await;
    assert!(matches!(raw.reply(&correlation).await, Reply::ScriptStatus(_)));
    eventually("the approved run", Duration::from_secs(20), || async { (markers.count("deploy") == 1).then_some(()) })
        .await;
    raw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_start_claimed_before_the_rules_changed_gets_its_status() {
    let approvers = Approvers::new();
    let config = approving_config("approvals-reload", &approvers, None);
    let trusted = config.trusted_keys_file.clone().unwrap();
    let agent = AgentProcess::start(config).await;
    let id = agent.config.agent_id.clone();
    let markers = Markers::new();
    let gate = markers.dir.join("gate");
    // Bounded: a failing test leaves no script behind.
    let script = format!(
        "{}; for i in $(seq 600); do [ -e '{}' ] && break; sleep 0.05; done",
        markers.record("deploy"),
        gate.display()
    );
    let spec = ScriptSpec { script, purpose: Some("deployment".into()), ..Default::default() };
    let (ticket, mut raw) = (edge::entropy::ticket(), RawBroker::connect().await);
    let correlation = raw.publish(&id, "StartScriptV2", &start(&id, &ticket, spec.clone())).await;
    assert!(matches!(raw.reply(&correlation).await, Reply::ScriptStatus(_)), "no rule yet: it runs");
    eventually("the script running", Duration::from_secs(20), || async {
        (markers.count("deploy") == 1).then_some(())
    })
    .await;
    // Now the agent requires approvals (reloaded on SIGHUP, as its capabilities then say).
    write_trusted(&trusted, &approvers, Some(RULE));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the rule in force", Duration::from_secs(20), || async {
        let out = run_dispatcher(&["capabilities", &id]).await;
        text(&out.stdout).contains(RULE).then_some(())
    })
    .await;
    // A copy of the start it runs is answered with its status, not "nothing ran".
    let correlation = raw.publish(&id, "StartScriptV2", &start(&id, &ticket, spec.clone())).await;
    let Reply::ScriptStatus(status) = raw.reply(&correlation).await else { panic!("a running script said not to run") };
    assert_eq!(status.ticket, ticket);
    // The same command under a new ticket is refused.
    let correlation = raw.publish(&id, "StartScriptV2", &start(&id, &edge::entropy::ticket(), spec)).await;
    assert!(matches!(raw.reply(&correlation).await, Reply::Error(e) if e.kind == ErrorKind::NotAuthorized));
    std::fs::write(&gate, "").unwrap();
    assert_eq!(markers.count("deploy"), 1);
    raw.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_is_told_before_anything_is_sent_and_capabilities_show_the_rules() {
    let approvers = Approvers::new();
    let agent = approving_agent("approvals-cli", &approvers).await;
    let id = agent.config.agent_id.clone();
    let markers = Markers::new();
    let out = run_dispatcher(&["capabilities", &id]).await;
    assert!(text(&out.stdout).contains(&format!("approvals: {RULE}")), "{} {}", text(&out.stdout), text(&out.stderr));
    let out = run_dispatcher(&["capabilities", &id, "--json"]).await;
    let caps: Value = serde_json::from_str(text(&out.stdout).trim()).expect("JSON");
    assert_eq!(caps["approvals"][0]["approvers"][1]["key"], approvers.key(1).public().to_string().as_str());

    // A deployment (the default purpose) is refused before it is sent, saying what to do.
    let out = run_dispatcher(&["submit", "--target", &id, "--", &markers.record("deploy")]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(103), "{stderr}");
    assert!(stderr.contains("requires approvals: not approved as") && stderr.contains("nothing was sent"), "{stderr}");
    assert!(stderr.contains("dispatcher submit --detach") && stderr.contains("dispatcher approve"), "{stderr}");
    // A runbook is not.
    let out =
        run_dispatcher(&["submit", "--purpose", "runbook", "--target", &id, "--", &markers.record("runbook")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!((markers.count("deploy"), markers.count("runbook")), (0, 1));
}

/// The ticket's record as the API shows it.
async fn ticket_view(service: &ServiceProcess, ticket: &str) -> Value {
    let response = http().get(format!("{}/v1/tickets/{ticket}", service.url)).send().await.expect("GET");
    response.json().await.expect("JSON")
}

/// Waits until the service has followed `ticket` again after `after_ms`: it records what its
/// target answered each time (`GET /v1/agents`).
async fn followed_again(service: &ServiceProcess, agent: &str, after_ms: u64) {
    eventually("the service to look at the ticket again", Duration::from_secs(20), || async {
        let agents: Value = http().get(format!("{}/v1/agents", service.url)).send().await.ok()?.json().await.ok()?;
        let agents = agents["agents"].as_array().cloned().unwrap_or_default();
        let seen = agents.iter().find(|a| a["target"] == agent)?["seen_ms"].as_u64()?;
        (seen > after_ms).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_command_waits_for_its_quorum_and_runs_once_when_the_last_approval_is_in() {
    let approvers = Approvers::new();
    let agent = approving_agent("approvals-svc", &approvers).await;
    let id = agent.config.agent_id.clone();
    let prefix = journal_prefix("approvals-svc");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let markers = Markers::new();
    let script = markers.record("deploy");
    let out = run_cli(&["submit", "--detach", "--target", &id, "--arg", "v2", "--", &script], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ticket = text(&out.stdout).trim().to_owned();
    eventually("the ticket to wait for approvals", Duration::from_secs(20), || async {
        (ticket_view(&service, &ticket).await["state"] == "awaiting-approval").then_some(())
    })
    .await;
    // Its events say what it waits for, and how to give it.
    let said = eventually("the ticket to say why it waits", Duration::from_secs(20), || async {
        let out = run_cli(&["status", &ticket], &prefix).await;
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        said.contains("awaiting approval: not approved as").then_some(said)
    })
    .await;
    assert!(said.contains(&format!("dispatcher approve {ticket}")), "{said}");
    let page = http().get(format!("{}/", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Waiting for approval") && page.contains(&ticket), "the web view lists it");

    // On a terminal it shows the command and asks first: declined, nothing is approved.
    let mut command = journal_command(&prefix);
    command.args(["approve", &ticket, "--approval-key", approvers.file(0)]);
    let (status, shown) = output_on_terminal_typing(command, b"n\n").await;
    let shown = text(&shown);
    assert_eq!(status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("digest:")
            && shown.contains(&format!("approve this command as key {}? [y/N]", approvers.key(0).id())),
        "{shown}"
    );
    assert!(shown.contains("not approved"), "{shown}");
    assert!(ticket_view(&service, &ticket).await["approvals"].is_null(), "no approval recorded");
    // The first approval: shown the command and the digest it signs.
    let before_ms = now_ms();
    let args = ["approve", &ticket, "--approval-key", approvers.file(1), "--yes", "--approval-ttl", "2h"];
    let out = run_cli(&args, &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The approval lasts --approval-ttl.
    let mut con = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let field = format!("approval:{}", approvers.key(1).id());
    let stored: String =
        redis::cmd("HGET").arg(format!("{prefix}t:{ticket}")).arg(field).query_async(&mut con).await.unwrap();
    let expires_at = serde_json::from_str::<Value>(&stored).unwrap()["expires_at"].as_u64().unwrap();
    assert!((before_ms + 7_200_000..=now_ms() + 7_200_000).contains(&expires_at), "{stored}");
    let shown = text(&out.stdout);
    let spec = ScriptSpec {
        script: script.clone(),
        args: vec!["v2".into()],
        purpose: Some("deployment".into()),
        submitter: Some(format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))),
        ..Default::default()
    };
    assert!(shown.contains(&format!("digest:     {}", command_digest(&spec, &id))), "{shown}");
    assert!(shown.contains("purpose:    deployment") && shown.contains("arg:        v2"), "{shown}");
    // The same key again counts once: still one approval of two.
    let approved_ms = now_ms();
    let out = run_cli(&["approve", &ticket, "--approval-key", approvers.file(1), "--yes"], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    followed_again(&service, &id, approved_ms).await;
    let view = ticket_view(&service, &ticket).await;
    assert_eq!(view["state"], "awaiting-approval");
    assert_eq!(view["approvals"], serde_json::json!([approvers.key(1).id().to_string()]), "{view}");
    assert_eq!(view["purpose"], "deployment");
    assert_eq!(markers.count("deploy"), 0, "not sent with one approval");

    // The second key's approval (its file given by the variable) reaches the quorum: sent, run once.
    let out = journal_command(&prefix)
        .args(["approve", &ticket, "--yes"])
        .env("CUTTLE_APPROVAL_KEY", approvers.file(2))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let finished = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(finished["outcome"], "completed", "{finished}");
    assert_eq!(markers.count("deploy"), 1);
    let out = run_cli(&["approve", &ticket, "--approval-key", approvers.file(0), "--yes"], &prefix).await;
    assert_eq!(out.status.code(), Some(1), "nothing left to approve");
    assert!(text(&out.stderr).contains("no longer waits for approvals"), "{}", text(&out.stderr));

    // A command made to mislead its approver on a terminal is shown escaped, every character.
    let script = "echo safe\u{202e} ;hsab | moc.live//:sptth lruc\r\necho second";
    let body = serde_json::json!({"target": id, "script": script, "env": {"A\u{1b}[2J": "v\u{200b}"}, "args": ["\u{1b}]0;x\u{7}"]});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.unwrap();
    let accepted: Value = response.json().await.unwrap();
    let hostile = accepted["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    eventually("the hostile ticket to wait", Duration::from_secs(20), || async {
        (ticket_view(&service, &hostile).await["state"] == "awaiting-approval").then_some(())
    })
    .await;
    let out = run_cli(&["approve", &hostile, "--approval-key", approvers.file(0), "--yes"], &prefix).await;
    let shown = text(&out.stdout);
    assert!(!shown.chars().any(|c| c.is_control() && c != '\n' || !c.is_ascii()), "{shown:?}");
    for escaped in
        ["safe\\u{202e} ;hsab", "lruc\\u{d}", "env:        A\\u{1b}[2J=v\\u{200b}", "arg:        \\u{1b}]0;x\\u{7}"]
    {
        assert!(shown.contains(escaped), "{escaped} in {shown}");
    }
    service.stop().await;
    remove_journal(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_ticket_outlives_its_agent_being_away_and_runs_once_approved() {
    let approvers = Approvers::new();
    let mut agent = approving_agent("approvals-away", &approvers).await;
    let id = agent.config.agent_id.clone();
    let prefix = journal_prefix("approvals-away");
    let mut service = ServiceProcess::start(&prefix, &[]).await;
    let markers = Markers::new();
    let args = ["submit", "--detach", "--retry-duration", "3s", "--target", &id, "--"];
    let out = run_cli(&[&args[..], &[markers.record("deploy").as_str()]].concat(), &prefix).await;
    let ticket = text(&out.stdout).trim().to_owned();
    eventually("the ticket to wait for approvals", Duration::from_secs(20), || async {
        (ticket_view(&service, &ticket).await["state"] == "awaiting-approval").then_some(())
    })
    .await;
    // The agent goes away, and the service restarts without knowing what it enforces.
    agent.kill().await;
    service.kill().await;
    service.restart().await;
    let restarted_ms = now_ms();
    followed_again(&service, &id, restarted_ms).await;
    followed_again(&service, &id, now_ms()).await;
    assert_eq!(ticket_view(&service, &ticket).await["state"], "awaiting-approval", "still waiting, not failed");
    // Back, and approved: it runs, once.
    agent.restart().await;
    for index in [0, 2] {
        let out = run_cli(&["approve", &ticket, "--approval-key", approvers.file(index), "--yes"], &prefix).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let finished = service.finished(&ticket, Duration::from_secs(60)).await;
    assert_eq!(finished["outcome"], "completed", "{finished}");
    assert_eq!(markers.count("deploy"), 1);
    service.stop().await;
    remove_journal(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_not_approved_in_time_fails_unsent_and_approve_refuses_bad_use() {
    let approvers = Approvers::new();
    let agent = approving_agent("approvals-wait", &approvers).await;
    let id = agent.config.agent_id.clone();
    let prefix = journal_prefix("approvals-wait");
    let service = ServiceProcess::start(&prefix, &["--approval-wait", "2s"]).await;
    let markers = Markers::new();
    let out = run_cli(&["submit", "--detach", "--target", &id, "--", &markers.record("deploy")], &prefix).await;
    let ticket = text(&out.stdout).trim().to_owned();
    let key = approvers.file(0);
    // Bad use, refused before anything is approved.
    let out = run_cli(&["approve", &ticket, "--approval-key", key], &prefix).await;
    assert_eq!(out.status.code(), Some(2), "no terminal, no --yes");
    assert!(text(&out.stderr).contains("give --yes"), "{}", text(&out.stderr));
    let out = run_cli(&["approve", &ticket, "--approval-key", key, "--yes", "--approval-ttl", "8d"], &prefix).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--approval-ttl must be"), "{}", text(&out.stderr));
    let out = run_cli(&["approve", &ticket, "--approval-key", "/nonexistent/key", "--yes"], &prefix).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let unknown = edge::entropy::ticket().to_string();
    let out = run_cli(&["approve", &unknown, "--approval-key", key, "--yes"], &prefix).await;
    assert_eq!(out.status.code(), Some(104), "{}", text(&out.stderr));

    // The wait runs out: failed, never sent, and nothing is left to approve.
    let finished = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(finished["outcome"], "failed", "{finished}");
    let error = finished["error"].as_str().unwrap_or_default();
    assert!(error.contains("not approved within --approval-wait 2s") && error.contains("nothing was sent"), "{error}");
    let out = run_cli(&["status", &ticket], &prefix).await;
    assert_eq!(out.status.code(), Some(103), "{}", text(&out.stderr));
    assert_eq!(markers.count("deploy"), 0);
    let out = run_cli(&["approve", &ticket, "--approval-key", key, "--yes"], &prefix).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // Secrets cannot wait for approvals in the journal: refused, never sent.
    let body = serde_json::json!({"target": id, "script": markers.record("secret"), "secret_env": {"TOKEN": "s3cret"}});
    let response = http().post(format!("{}/v1/scripts", service.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let ticket = accepted["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    let finished = service.finished(&ticket, Duration::from_secs(30)).await;
    let error = finished["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot carry secrets") && error.contains("nothing was sent"), "{error}");
    assert!(!error.contains("s3cret"));
    assert_eq!(markers.count("secret"), 0);
    service.stop().await;
    remove_journal(&prefix).await;
}
