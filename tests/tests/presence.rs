//! Presence is believed only under the pinned keys, through the real binaries: an impostor
//! holding the broker's credentials appends announcements to `cuttle.presence` (signed with its
//! own key, unsigned, from an agent nobody pinned, a genuine one with its labels changed, a
//! genuine one replayed after its agent died), and `dispatcher agents` never lists them nor does
//! `submit --select` reach them; the genuine agents are listed (and reported as such when forged
//! announcements in their name are ignored). (Labels, selection and a stopped
//! agent dropping out are in rollouts.rs.)

use contracts::trust::keys::SecretKey;
use std::time::Duration;
use tests::presence::{announcement, PresenceStream};
use tests::trust::{keypair, Answerer, Impostor};
use tests::*;
use tokio_util::sync::CancellationToken;

/// Runs the dispatcher binary with `args`: (exit code, stdout, stderr).
async fn dispatcher(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_dispatcher(args).await;
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `dispatcher agents --json --select select`: the ids listed (sorted) and what it warned of.
async fn listed(select: &str) -> (Vec<String>, String) {
    let (code, stdout, stderr) = dispatcher(&["agents", "--json", "--select", select]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let mut ids: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
        .map(|a| a["agent"].as_str().expect("an agent id").to_owned())
        .collect();
    ids.sort();
    (ids, stderr)
}

/// A config for an agent process labelled `labels`, announcing every second.
fn labelled(what: &str, labels: &[(&str, &str)]) -> worker_agent::config::AgentConfig {
    let mut config = agent::test_config(what);
    config.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    config.announce_interval = Duration::from_secs(1);
    config
}

/// Appends, every 500 ms until `stop`, what `forge` makes (a body and the key to seal it with).
fn keep_appending(
    stop: CancellationToken,
    forge: impl Fn() -> (Vec<u8>, Option<contracts::trust::seal::Seal>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stream = PresenceStream::connect().await;
        while !stop.is_cancelled() {
            let (body, seal) = forge();
            stream.append(&body, seal.as_ref()).await;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        stream.close().await;
    })
}

/// A fresh announcement of `agent_id` labelled `labels`, signed with `key` (unsigned without one).
fn forged(
    agent_id: &str,
    labels: &[(&str, &str)],
    key: Option<&SecretKey>,
) -> (Vec<u8>, Option<contracts::trust::seal::Seal>) {
    let body = announcement(agent_id, labels).encode().expect("encodes");
    let seal = key.map(|key| key.seal_announcement(&body));
    (body, seal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_announcements_never_list_an_agent_nor_reach_a_rollout() {
    let fleet = unique("fleet");
    let genuine = AgentProcess::start(labelled("genuine", &[("fleet", &fleet), ("role", "web")])).await;
    // Pinned names (to the test agent key), announced under another key, and unsigned.
    let (wrong_key_id, unsigned_id) = (unique("impostor"), unique("unsigned"));
    // Signed with the genuine test agent key, but nobody pinned this name.
    let unpinned_id = format!("rogue-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (impostor_key, _) = keypair("impostor");
    let impostor_key_id = impostor_key.id();
    // Whatever reaches the impostor's name is answered as a success: it must never be asked.
    let impostor = Impostor::start(&wrong_key_id, Answerer::Key(Box::new(impostor_key.clone()))).await;
    let genuine_id = genuine.config.agent_id.clone();
    let stop = CancellationToken::new();
    let appenders = {
        let owned = |s: &str| s.to_owned();
        let (fleet_a, fleet_b, fleet_c, fleet_d) = (owned(&fleet), owned(&fleet), owned(&fleet), owned(&fleet));
        let (wrong, unsigned, unpinned) = (wrong_key_id.clone(), unsigned_id.clone(), unpinned_id.clone());
        let (impersonated, impostors_key) = (genuine_id.clone(), impostor_key.clone());
        [
            keep_appending(stop.clone(), move || {
                forged(&wrong, &[("fleet", &fleet_a), ("role", "web")], Some(&impostor_key))
            }),
            // In the name of the genuine agent, which announces too: it stays listed.
            keep_appending(stop.clone(), move || {
                forged(&impersonated, &[("fleet", &fleet_d), ("role", "db")], Some(&impostors_key))
            }),
            keep_appending(stop.clone(), move || forged(&unsigned, &[("fleet", &fleet_b), ("role", "web")], None)),
            keep_appending(stop.clone(), move || {
                forged(&unpinned, &[("fleet", &fleet_c), ("role", "web")], Some(&trust::keys().agent))
            }),
        ]
    };
    let everyone = format!("fleet={fleet}");
    // Wait until each impostor has appended at least once, and the genuine agent is listed.
    let stderr = eventually("the genuine agent listed, the impostors reported", Duration::from_secs(20), || {
        let (everyone, genuine_id, wrong, unsigned, unpinned) =
            (everyone.clone(), genuine_id.clone(), wrong_key_id.clone(), unsigned_id.clone(), unpinned_id.clone());
        async move {
            let (ids, stderr) = listed(&everyone).await;
            assert!(ids.iter().all(|id| *id == genuine_id), "only the genuine agent is ever listed: {ids:?}");
            let reported = stderr.contains(&format!("in the name of agent {wrong}:"))
                && stderr.contains(&format!("in the name of agent {unsigned}:"))
                && stderr.contains(&format!("in the name of agent {genuine_id}:"))
                && stderr.contains(&unpinned);
            (ids == [genuine_id] && reported).then_some(stderr)
        }
    })
    .await;
    assert!(stderr.contains(&format!("agent {wrong_key_id}: signed by key {}", impostor_key_id)), "{stderr}");
    assert!(stderr.contains(&format!("agent {unsigned_id}: unsigned")), "{stderr}");
    // Each forged line says what the forgeries did: nothing to the genuine agent, which is listed.
    let line_of = |id: &str| {
        let name = format!("in the name of agent {id}:");
        stderr.lines().find(|line| line.contains(&name)).unwrap_or_default().to_owned()
    };
    let (impersonated, impostor_alone) = (line_of(&genuine_id), line_of(&wrong_key_id));
    assert!(impersonated.ends_with("signed by its pinned key count, and those were read"), "{impersonated}");
    assert!(!impersonated.contains("not listed"), "the genuine agent is listed: {impersonated}");
    assert!(impostor_alone.ends_with("so it is not listed and no --select reaches it"), "{impostor_alone}");
    assert!(stderr.contains("no key pinned in") && stderr.contains(&unpinned_id), "{stderr}");

    // A rollout over the fleet reaches the genuine agent only.
    let markers = Markers::new();
    let script = format!("echo run >> '{}'/\"$CUTTLE_AGENT_ID\"", markers.dir.display());
    let (code, stdout, stderr) = dispatcher(&["submit", "--json", "--select", &everyone, "--", &script]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let selected = events.iter().find(|e| e["event"] == "selected").expect("a selected event");
    assert_eq!(selected["targets"], serde_json::json!([genuine_id]));
    assert!(selected["ignored"]["forged"].as_u64().unwrap() >= 2, "{selected}");
    assert!(selected["ignored"]["unpinned"].as_u64().unwrap() >= 1, "{selected}");
    let warned = |id: &str| {
        events
            .iter()
            .any(|e| e["event"] == "warning" && e["message"].as_str().unwrap().contains(&format!("agent {id}:")))
    };
    assert!(warned(&wrong_key_id) && warned(&unsigned_id), "forged announcements as warning events: {stdout}");
    assert_eq!(markers.count(&genuine_id), 1);
    for id in [&wrong_key_id, &unsigned_id, &unpinned_id] {
        assert_eq!(markers.count(id), 0);
    }
    assert_eq!(impostor.answered(), 0, "no request ever went to the impostor's name");

    stop.cancel();
    for appender in appenders {
        appender.await.unwrap();
    }
    impostor.stop().await;
    genuine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_replayed_announcement_keeps_no_dead_agent_alive() {
    let fleet = unique("fleet");
    let mut victim = AgentProcess::start(labelled("victim", &[("fleet", &fleet), ("role", "web")])).await;
    let victim_id = victim.config.agent_id.clone();
    let stream = PresenceStream::connect().await;
    let genuine = stream.capture(&victim_id).await;
    assert!(genuine.seal.is_some(), "agents sign their announcements");

    // SIGKILL: no leaving announcement. From now on someone appends, twice a second, the
    // genuine announcement as it was (a replay), and copies of it made fresh (`at` now) with
    // other labels under the genuine seal (tampered).
    victim.kill().await;
    let killed_at = std::time::Instant::now();
    let stop = CancellationToken::new();
    let replayed = genuine.clone();
    let replay = keep_appending(stop.clone(), move || (replayed.body.clone(), replayed.seal.clone()));
    let tampered = genuine.clone();
    let tamper = keep_appending(stop.clone(), move || {
        let mut fresh = announcement(&tampered.announcement.agent_id, &[]);
        fresh.labels = tampered.announcement.labels.clone();
        fresh.labels.insert("role".into(), "db".into());
        (fresh.encode().unwrap(), tampered.seal.clone())
    });

    let everyone = format!("fleet={fleet}");
    assert!(listed(&format!("{everyone},role=db")).await.0.is_empty(), "the tampered labels are never believed");
    let stderr = eventually("the dead agent to drop out", Duration::from_secs(15), || {
        let everyone = everyone.clone();
        async move {
            let (ids, stderr) = listed(&everyone).await;
            ids.is_empty().then_some(stderr)
        }
    })
    .await;
    let gone_after = killed_at.elapsed();
    assert!(gone_after <= Duration::from_secs(6), "within its 3 s window (plus a listing): {gone_after:?}");
    assert!(
        stderr.contains(&format!("in the name of agent {victim_id}: the signature by key")),
        "the tampered copies are reported: {stderr}"
    );
    // Still replayed and tampered with, still gone.
    assert!(listed(&everyone).await.0.is_empty());
    let (code, _, stderr) = dispatcher(&["submit", "--select", &everyone, "--", "true"]).await;
    assert_eq!(code, Some(102), "no live agent to run on: {stderr}");

    stop.cancel();
    replay.await.unwrap();
    tamper.await.unwrap();
    stream.close().await;
    victim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_worker_pinned_only_by_its_pool_is_selected_and_its_answers_believed() {
    let fleet = unique("pool-fleet");
    let pool = unique("sel-pool");
    let mut config = labelled("pool-worker", &[("fleet", &fleet)]);
    // Signed with the key pinned for `pool:<pool>`; its own id is pinned to nothing.
    trust::keys().unpin(&config.agent_id);
    config.pool = Some(pool.clone());
    config.key_prefix = format!("{pool}:");
    let worker = AgentProcess::start(config).await;
    let worker_id = worker.config.agent_id.clone();
    assert_eq!(trust::keys().known().pin(&worker_id), None, "pinned only by its pool");
    let everyone = format!("fleet={fleet}");
    eventually("the worker listed", Duration::from_secs(20), || {
        let (everyone, worker_id) = (everyone.clone(), worker_id.clone());
        async move { (listed(&everyone).await.0 == [worker_id]).then_some(()) }
    })
    .await;

    let markers = Markers::new();
    let script = format!("echo run >> '{}'/\"$CUTTLE_AGENT_ID\"", markers.dir.display());
    let (code, _, stderr) = dispatcher(&["submit", "--select", &everyone, "--", &script]).await;
    assert_eq!(code, Some(0), "its answers believed under the pool's key: {stderr}");
    assert!(!stderr.contains("not pinned") && !stderr.contains("forged"), "{stderr}");
    assert_eq!(markers.count(&worker_id), 1, "the script ran once, on the worker");

    worker.stop().await;
    tests::raw::delete_queue(&contracts::wire::topology::pool_queue(&pool)).await;
    tests::raw::delete_queue(&contracts::wire::topology::pool_service_queue(&pool)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_pinned_legacy_is_warned_of_once_per_command() {
    let fleet = unique("legacy-fleet");
    // An agent upgraded before its pin was: it announces, and is believed unsigned.
    let agent = AgentProcess::start(labelled("legacy-pin", &[("fleet", &fleet)])).await;
    let agent_id = agent.config.agent_id.clone();
    trust::keys().pin_legacy(&agent_id);
    let everyone = format!("fleet={fleet}");
    let warning = format!("believing unsigned answers and announcements from agent {agent_id}");
    let stderr = eventually("the agent listed", Duration::from_secs(20), || {
        let (everyone, agent_id) = (everyone.clone(), agent_id.clone());
        async move {
            let (ids, stderr) = listed(&everyone).await;
            (ids == [agent_id]).then_some(stderr)
        }
    })
    .await;
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");

    // Its announcements and its answers, believed in one command: said once.
    let (code, _, stderr) = dispatcher(&["submit", "--select", &everyone, "--", "echo hi"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
    agent.stop().await;
}

/// The peak memory, in KiB, of the largest child this test process has waited for
/// (`getrusage(RUSAGE_CHILDREN)`): the `dispatcher` runs of this test alone when each test has a
/// process of its own (nextest); `None` otherwise, when other tests' children would count too.
fn dispatcher_runs_peak_kib() -> Option<u64> {
    let own_process = std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
    own_process.then(|| {
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage");
        usage.max_rss() as u64
    })
}

/// `dispatcher agents` drops an announcement over 16 KiB as soon as it is read, and reads at most
/// 64 ahead: junk appended to the stream costs it what is in flight, not the junk's total (it
/// used to keep every announcement until it decoded them: 1 MiB of junk cost 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_presence_stream_is_dropped_as_it_is_read_and_the_genuine_agent_listed() {
    let mut config = agent::test_config("beside-junk");
    config.announce_interval = Duration::from_secs(1);
    // In this process (no child of its own): only the dispatcher runs count as children.
    let genuine = TestAgent::start_with(config).await;
    let only_genuine = format!("id={}", genuine.id());
    eventually("the genuine agent to be listed", Duration::from_secs(20), || async {
        (listed(&only_genuine).await.0 == [genuine.id()]).then_some(())
    })
    .await;
    let before = dispatcher_runs_peak_kib();
    let stream = PresenceStream::connect().await;
    // More junk than the reader holds at once (64 deliveries): kept, it would all count.
    let junk = vec![0x90u8; 128 << 10];
    for _ in 0..160 {
        stream.append(&junk, None).await;
    }
    stream.close().await;
    let (ids, stderr) = listed(&only_genuine).await;
    assert_eq!(ids, [genuine.id()], "{stderr}");
    assert!(stderr.contains("announcement(s) that are not valid"), "the junk is told of: {stderr}");
    if let (Some(before), Some(after)) = (before, dispatcher_runs_peak_kib()) {
        eprintln!("dispatcher agents: peak {} MiB before 20 MiB of junk, {} MiB with it", before >> 10, after >> 10);
        // At most the 64 in flight (8 MiB), and some slack: never the 20 MiB it was given.
        assert!(
            after <= before + 14 * 1024,
            "160 × 128 KiB of junk took the dispatcher from {before} KiB to {after} KiB"
        );
    } else {
        eprintln!("not measuring the dispatcher's memory: tests share this process (run them with nextest)");
    }
    genuine.stop().await;
}
