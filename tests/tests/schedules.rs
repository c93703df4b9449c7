//! Schedules through the real binaries (`dispatcher schedule`, `/v1/schedules`, `dispatcher
//! serve`): each slot runs exactly once across two replicas while one is killed as a slot fires,
//! counted by the scripts themselves; slots missed while every replica was down are skipped or
//! run once; bad expressions, zones and secrets are refused with the reason; pause, resume,
//! remove and run-now; and a schedule changed in the journal without the service's key never
//! runs. Daylight-saving changes are decided by plain functions, tested with an injected clock in
//! `dispatcher::schedule`.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};
use tests::service::{http, journal_prefix, remove_journal};
use tests::*;

/// Every two seconds: the shortest slots the tests use.
const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";

/// `dispatcher ARGS` on the journal under `prefix`.
async fn cli(args: &[&str], prefix: &str) -> std::process::Output {
    tests::service::journal_cli(args, prefix).await
}

fn stderr(output: &std::process::Output) -> String {
    text(&output.stderr)
}

/// Adds a schedule through the CLI (it must succeed).
async fn add(prefix: &str, name: &str, flags: &[&str], script: &str) {
    let mut args = vec!["schedule", "add", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", script]);
    let out = cli(&args, prefix).await;
    assert_eq!(out.status.code(), Some(0), "schedule add: {}", stderr(&out));
}

/// The schedules as `schedule list --json` shows them, by name.
async fn listed(prefix: &str) -> BTreeMap<String, Value> {
    let out = cli(&["schedule", "list", "--json"], prefix).await;
    assert_eq!(out.status.code(), Some(0), "schedule list: {}", stderr(&out));
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// A script that appends its schedule's name, slot and ticket to `file`, and prints the slot.
fn slot_script(file: &Path) -> String {
    format!(
        "echo \"$CUTTLE_SCHEDULE $CUTTLE_SCHEDULE_SLOT $CUTTLE_TICKET\" >> '{}'; echo \"$CUTTLE_SCHEDULE_SLOT\"",
        file.display()
    )
}

/// The runs the scripts wrote to `file`: each slot (unix ms) and ticket, as often as it ran,
/// after checking they name `schedule`.
fn runs_written(file: &Path, schedule: &str) -> Vec<(u64, String)> {
    let written = std::fs::read_to_string(file).unwrap_or_default();
    written
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [name, slot, ticket] = fields[..] else { panic!("{line:?}") };
            assert_eq!(name, schedule, "CUTTLE_SCHEDULE names the schedule");
            (rfc3339_ms(slot), ticket.to_owned())
        })
        .collect()
}

/// The slots the scripts wrote to `file` (unix ms), each as often as it ran.
fn slots_run(file: &Path, schedule: &str) -> Vec<u64> {
    runs_written(file, schedule).into_iter().map(|(slot, _)| slot).collect()
}

fn rfc3339_ms(text: &str) -> u64 {
    let time = chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    time.timestamp_millis() as u64
}

fn now_ms() -> u64 {
    contracts::time::unix_millis(SystemTime::now())
}

/// Waits until every ticket of `target` in the journal has finished (the runs started before a
/// schedule was removed).
async fn all_finished(service: &ServiceProcess, target: &str) {
    let url = format!("{}/v1/tickets?target={target}&limit=1000", service.url);
    eventually("every run to finish", Duration::from_secs(60), || {
        let request = http().get(&url).send();
        async move {
            let body: Value = request.await.ok()?.json().await.ok()?;
            let tickets = body["tickets"].as_array()?;
            tickets.iter().all(|t| t["state"] == "finished").then_some(())
        }
    })
    .await;
}

/// Waits until the slot after the one in progress starts, and a few milliseconds more: the
/// moment a replica is firing a slot.
async fn into_the_next_even_second() {
    let now = now_ms();
    let next = (now / 2000 + 1) * 2000;
    tokio::time::sleep(Duration::from_millis(next - now + 12)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_run_each_of_30_slots_exactly_once_while_one_is_killed_as_a_slot_fires() {
    let agent = TestAgent::start("sched-once").await;
    let prefix = journal_prefix("sched-once");
    let replica = |id: &'static str| ["--replica-id", id, "--lease-ttl", "1s"];
    let mut first = ServiceProcess::start(&prefix, &replica("first")).await;
    let second = ServiceProcess::start(&prefix, &replica("second")).await;
    let markers = Markers::new();
    let file = markers.dir.join("slots");
    let name = unique("every-two");
    add(&prefix, &name, &["--cron", EVERY_TWO_SECONDS, "--target", agent.id()], &slot_script(&file)).await;

    let ran = |at_least: usize| {
        let (file, name) = (file.clone(), name.clone());
        move || {
            let (file, name) = (file.clone(), name.clone());
            async move { (slots_run(&file, &name).len() >= at_least).then_some(()) }
        }
    };
    eventually("ten slots to run", Duration::from_secs(40), ran(10)).await;
    // SIGKILL as a slot fires: whichever replica was recording it, or submitting its ticket, or
    // following it, the other finishes what it began.
    into_the_next_even_second().await;
    first.kill().await;
    eventually("twenty slots to run", Duration::from_secs(40), ran(20)).await;
    first.restart().await;
    eventually("thirty slots to run", Duration::from_secs(40), ran(30)).await;
    let out = cli(&["schedule", "remove", &name], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    all_finished(&second, agent.id()).await;

    let slots = slots_run(&file, &name);
    let mut counted: BTreeMap<u64, usize> = BTreeMap::new();
    for slot in &slots {
        *counted.entry(*slot).or_default() += 1;
    }
    let twice: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "slots that ran more than once: {twice:?}");
    let (first_slot, last_slot) = (*counted.keys().next().unwrap(), *counted.keys().last().unwrap());
    let every: Vec<u64> = (first_slot..=last_slot).step_by(2000).collect();
    assert_eq!(counted.keys().copied().collect::<Vec<_>>(), every, "every slot from the first to the last ran");
    assert!(counted.len() >= 30, "{} slots", counted.len());
    // Both replicas fired slots: any may, the journal's record makes each once.
    let log = format!("{}\n{}", first.log_text(), second.log_text());
    assert!(log.contains("slot fired"), "{log}");

    first.stop().await;
    second.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_missed_while_every_replica_was_down_are_skipped_or_run_once_never_in_a_burst() {
    let agent = TestAgent::start("sched-missed").await;
    let prefix = journal_prefix("sched-missed");
    let mut service = ServiceProcess::start(&prefix, &["--lease-ttl", "1s"]).await;
    let markers = Markers::new();
    let (skip, once) = (unique("skip"), unique("once"));
    let (skip_file, once_file) = (markers.dir.join("skip"), markers.dir.join("once"));
    let flags = |missed| vec!["--cron", EVERY_TWO_SECONDS, "--missed", missed, "--target", agent.id()];
    add(&prefix, &skip, &flags("skip"), &slot_script(&skip_file)).await;
    add(&prefix, &once, &flags("once"), &slot_script(&once_file)).await;
    let both_ran = |skip_file: &Path, once_file: &Path, after: u64| {
        let late = |file: &Path, name: &str| slots_run(file, name).iter().any(|&slot| slot > after);
        late(skip_file, &skip) && late(once_file, &once)
    };
    eventually("both schedules to run", Duration::from_secs(30), || async {
        both_ran(&skip_file, &once_file, 0).then_some(())
    })
    .await;

    service.kill().await;
    let killed_at = now_ms();
    // Every replica down for six slots, well past the time after which slots count as missed.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let restarted_at = now_ms();
    service.restart().await;
    eventually("both schedules to run again on time", Duration::from_secs(30), || async {
        both_ran(&skip_file, &once_file, restarted_at + 4_000).then_some(())
    })
    .await;
    for name in [&skip, &once] {
        let out = cli(&["schedule", "pause", name], &prefix).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    all_finished(&service, agent.id()).await;

    let during = |file: &Path, name: &str| -> Vec<u64> {
        slots_run(file, name).into_iter().filter(|&slot| slot > killed_at && slot <= restarted_at).collect()
    };
    assert_eq!(during(&skip_file, &skip), Vec::<u64>::new(), "--missed skip runs none of the missed slots");
    let schedules = listed(&prefix).await;
    let kinds = |name: &str| -> Vec<String> {
        schedules[name]["runs"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap().to_owned()).collect()
    };
    assert!(!kinds(&skip).contains(&"missed".to_owned()), "{:?}", kinds(&skip));
    // `once`: one run for all the missed slots, under the latest of them, and none of the others.
    let missed: Vec<&Value> =
        schedules[&once]["runs"].as_array().unwrap().iter().filter(|r| r["kind"] == "missed").collect();
    assert_eq!(missed.len(), 1, "{:?}", kinds(&once));
    let missed_slot = missed[0]["slot_ms"].as_u64().unwrap();
    assert!(missed_slot > killed_at + 5_000, "the run is for a slot of the outage: {missed_slot} after {killed_at}");
    let once_slots = slots_run(&once_file, &once);
    let in_outage: Vec<u64> = once_slots.iter().copied().filter(|&s| s > killed_at && s <= missed_slot).collect();
    assert_eq!(in_outage, vec![missed_slot], "one run, never a burst");
    let metrics = http().get(format!("{}/metrics", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("cuttle_schedule_runs_total{outcome=\"skipped\"}"), "{metrics}");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expressions_zones_and_secrets_are_refused_with_the_reason_and_nothing_is_recorded() {
    let prefix = journal_prefix("sched-bad");
    let name = unique("bad");
    let refused = |flags: &'static [&'static str]| {
        let (prefix, name) = (prefix.clone(), name.clone());
        async move {
            let mut args = vec!["schedule", "add", &name, "--target", "web-01"];
            args.extend_from_slice(flags);
            args.extend_from_slice(&["--", "true"]);
            let out = cli(&args, &prefix).await;
            assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
            stderr(&out)
        }
    };
    let error = refused(&["--cron", "61 * * * *"]).await;
    assert!(error.contains(r#"the minute field (the 1st of 5) "61" is not valid"#), "{error}");
    let error = refused(&["--cron", "0 0 * * * MOON"]).await;
    assert!(error.contains("the day-of-week field (the 6th of 6)"), "{error}");
    let error = refused(&["--cron", "*/5 * * *"]).await;
    assert!(error.contains("has 4 fields; give 5"), "{error}");
    let error = refused(&["--cron", "0 0 30 2 *"]).await;
    assert!(error.contains("never comes"), "{error}");
    let error = refused(&["--cron", "@daily", "--timezone", "Europe/Berln"]).await;
    assert!(error.contains(r#"unknown time zone "Europe/Berln""#), "{error}");
    let error = refused(&["--cron", "@daily", "--timezone", "europe/berlin"]).await;
    assert!(error.contains("did you mean Europe/Berlin?"), "{error}");
    let error = refused(&["--cron", "@daily", "--secret-env", "TOKEN=s3cret"]).await;
    assert!(error.contains("refused for schedules, as for submit --detach"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    let error = refused(&["--cron", "@daily", "--detach"]).await;
    assert!(error.contains("leave out --detach"), "{error}");
    let error = refused(&["--cron", "@daily", "--env", "CUTTLE_SCHEDULE_SLOT=x"]).await;
    assert!(error.contains("set by the schedule itself"), "{error}");
    assert!(listed(&prefix).await.is_empty(), "nothing was recorded");

    // A good one, with no replica on the journal: added, with a warning that nothing runs it.
    let out = cli(&["schedule", "add", &name, "--cron", "@daily", "--target", "web-01", "--", "true"], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: no `dispatcher serve` replica has run on this journal"),
        "{}",
        stderr(&out)
    );
    let out = cli(&["schedule", "add", &name, "--cron", "@daily", "--target", "web-01", "--", "true"], &prefix).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("a schedule named {name} exists")), "{}", stderr(&out));
    let out = cli(&["schedule", "pause", "no-such-schedule"], &prefix).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no schedule named no-such-schedule"), "{}", stderr(&out));

    // The API says the same.
    let service = ServiceProcess::start(&prefix, &[]).await;
    let post = |body: Value| http().post(format!("{}/v1/schedules", service.url)).json(&body).send();
    let run = json!({"target": "web-01", "script": "true"});
    for (body, reason) in [
        (json!({"name": "x", "cron": "61 * * * *", "run": run}), "the minute field"),
        (json!({"name": "x", "cron": "@daily", "timezone": "Mars/Olympus", "run": run}), "unknown time zone"),
        (
            json!({"name": "x", "cron": "@daily", "run": {"target": "a", "script": "true", "secret_env": {"T": "x"}}}),
            "cannot hold secrets",
        ),
        (json!({"name": name, "cron": "@daily", "run": run}), "exists"),
    ] {
        let response = post(body.clone()).await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert!(status == 400 || status == 409, "{body}: {status} {answer}");
        assert!(answer["error"].as_str().unwrap().contains(reason), "{body}: {answer}");
    }
    assert_eq!(listed(&prefix).await.len(), 1);

    service.stop().await;
    remove_journal(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_run_now_and_remove_do_what_they_say() {
    let agent = TestAgent::start("sched-ops").await;
    let prefix = journal_prefix("sched-ops");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let markers = Markers::new();
    let file = markers.dir.join("slots");
    let name = unique("ops");
    add(&prefix, &name, &["--cron", EVERY_TWO_SECONDS, "--target", agent.id()], &slot_script(&file)).await;
    let count = || slots_run(&file, &name).len();
    eventually("two slots to run", Duration::from_secs(30), || async { (count() >= 2).then_some(()) }).await;

    let out = cli(&["schedule", "pause", &name], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // No slot fires once `pause` has returned: every run from then on is a run-now.
    let paused_at = now_ms();
    // Three slots' time: none runs while paused.
    tokio::time::sleep(Duration::from_secs(6)).await;
    all_finished(&service, agent.id()).await;
    let paused = count();
    let shown = &listed(&prefix).await[&name];
    assert_eq!((shown["paused"].as_bool(), shown["next_run"].as_str()), (Some(true), None), "{shown}");

    // run-now runs even while paused, under a slot of its own: from the CLI and the API.
    let out = cli(&["schedule", "run-now", &name, "--json"], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let asked: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert!(asked["slot"].as_str().unwrap().starts_with("now-"), "{asked}");
    let ticket = asked["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!(record["outcome"], "completed", "{record}");
    let response = http().post(format!("{}/v1/schedules/{name}/run", service.url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let run: Value = response.json().await.unwrap();
    let api_ticket = run["run"]["tickets"][0]["ticket"].as_str().unwrap().to_owned();
    assert_ne!(api_ticket, ticket, "each run-now is a slot of its own");
    let record = service.finished(&api_ticket, Duration::from_secs(30)).await;
    let slot_time = record["output"][0]["text"].as_str().unwrap();
    assert!(rfc3339_ms(slot_time).abs_diff(now_ms()) < 60_000, "CUTTLE_SCHEDULE_SLOT is the run's time: {slot_time}");
    assert_eq!(count(), paused + 2);
    let resumed_at = now_ms();
    let while_paused: Vec<String> = runs_written(&file, &name)
        .into_iter()
        .filter(|(slot, _)| *slot > paused_at && *slot < resumed_at)
        .map(|(_, ticket)| ticket)
        .collect();
    assert_eq!(while_paused, [ticket.clone(), api_ticket.clone()], "only the two run-nows ran while paused");

    let out = cli(&["schedule", "resume", &name], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    eventually("slots to run again", Duration::from_secs(30), || async { (count() >= paused + 4).then_some(()) }).await;
    let mut cron_slots: Vec<u64> = runs_written(&file, &name)
        .into_iter()
        .filter(|(_, t)| *t != ticket && *t != api_ticket)
        .map(|(slot, _)| slot)
        .collect();
    let ran = cron_slots.len();
    cron_slots.sort_unstable();
    cron_slots.dedup();
    assert_eq!(cron_slots.len(), ran, "each slot once: {cron_slots:?}");

    // What the service shows: the runs with their outcomes, the metrics, the web view.
    let listed_now = &listed(&prefix).await[&name];
    let runs = listed_now["runs"].as_array().unwrap();
    assert!(runs.iter().any(|r| r["kind"] == "run-now" && r["tickets"][0]["outcome"] == "completed"), "{listed_now}");
    let metrics = http().get(format!("{}/metrics", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("cuttle_schedule_runs_total{outcome=\"completed\"}"), "{metrics}");
    assert!(metrics.contains("cuttle_schedule_lag_seconds_count"), "{metrics}");
    let page = http().get(format!("{}/", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"schedules\"") && page.contains(&name), "the web view lists the schedule");

    let out = cli(&["schedule", "remove", &name], &prefix).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let removed_at = now_ms();
    // Several slots' time: no slot after the removal runs (one fired before it may still end).
    tokio::time::sleep(Duration::from_secs(5)).await;
    all_finished(&service, agent.id()).await;
    let after: Vec<u64> = slots_run(&file, &name).into_iter().filter(|&slot| slot > removed_at).collect();
    assert!(after.is_empty(), "nothing runs once removed: {after:?}");
    assert!(!listed(&prefix).await.contains_key(&name));
    let response = http().post(format!("{}/v1/schedules/{name}/run", service.url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_changed_in_the_journal_without_the_services_key_never_runs() {
    let agent = TestAgent::start("sched-signed").await;
    let prefix = journal_prefix("sched-signed");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let markers = Markers::new();
    let (file, tampered) = (markers.dir.join("slots"), markers.dir.join("tampered"));
    let name = unique("signed");
    let body =
        json!({"name": name, "cron": EVERY_TWO_SECONDS, "run": {"target": agent.id(), "script": slot_script(&file)}});
    let response = http().post(format!("{}/v1/schedules", service.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let added: Value = response.json().await.unwrap();
    let id = added["id"].as_str().unwrap().to_owned();
    eventually("a slot to run", Duration::from_secs(30), || async {
        (!slots_run(&file, &name).is_empty()).then_some(())
    })
    .await;

    // Someone with write access to the journal's Redis, without the key, changes the script.
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}schedule:{id}");
    let record: String = redis::cmd("HGET").arg(&key).arg("record").query_async(&mut redis).await.unwrap();
    let changed = record.replace(&file.display().to_string(), &tampered.display().to_string());
    assert_ne!(changed, record);
    let _: () = redis::cmd("HSET").arg(&key).arg("record").arg(&changed).query_async(&mut redis).await.unwrap();
    let changed_at = now_ms();
    // A schedule added with another dispatcher key: signed, but not by the service's.
    let other_key = markers.dir.join("other.key");
    let out = run_dispatcher(&["keygen", "--out", other_key.to_str().unwrap()]).await;
    assert!(out.status.success());
    let other = unique("other-key");
    let out = tests::service::journal_command(&prefix)
        .args(["schedule", "add", &other, "--cron", EVERY_TWO_SECONDS, "--target", agent.id(), "--"])
        .arg(slot_script(&tampered))
        .env("CUTTLE_DISPATCHER_KEY", &other_key)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("they will not run it"), "the CLI warns: {}", stderr(&out));

    eventually("the service to refuse both", Duration::from_secs(20), || async {
        let log = service.log_text();
        (log.matches("not running the schedule").count() >= 2).then_some(())
    })
    .await;
    // Several slots' time: neither the changed script nor the other key's runs, nor the original.
    tokio::time::sleep(Duration::from_secs(5)).await;
    all_finished(&service, agent.id()).await;
    assert!(!tampered.exists(), "a script changed or signed without the service's key never runs");
    let after: Vec<u64> = slots_run(&file, &name).into_iter().filter(|&slot| slot > changed_at).collect();
    assert!(after.is_empty(), "nor does the schedule it was changed from: {after:?}");
    let list: Value = http().get(format!("{}/v1/schedules", service.url)).send().await.unwrap().json().await.unwrap();
    let refused: Vec<&str> =
        list["schedules"].as_array().unwrap().iter().filter_map(|s| s["refused"].as_str()).collect();
    assert_eq!(refused.len(), 2, "{list}");
    assert!(refused.iter().all(|r| r.contains("signature")), "{refused:?}");
    let response = http().post(format!("{}/v1/schedules/{name}/run", service.url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 409, "run-now of a refused schedule is refused too");

    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}
