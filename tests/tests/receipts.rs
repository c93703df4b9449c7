//! Run receipts through the real binaries: every run an agent ends (or finds lost after a crash)
//! gets a receipt signed with its key, chained per agent id, published on `cuttle.receipts` once
//! the broker confirms it and kept in the store until then; `dispatcher receipts` lists them
//! checked, and `dispatcher verify` finds, offline, a receipt edited by one byte, one shown field
//! changed, one dropped from the middle, two swapped, and one signed by another key. Receipts
//! forged onto the stream by hand are reported, never listed as verified.

use contracts::receipt::{ChainHead, OutputDigest, Receipt, SignedReceipt};
use contracts::trust::keys::SecretKey;
use contracts::wire::status::{LogLine, LogStream};
use contracts::wire::topology::{pool_queue, pool_service_queue, RECEIPTS_STREAM, RECEIPT_TYPE};
use serde_json::Value;
use std::time::Duration;
use tests::proxy::{broker_addr, FaultProxy};
use tests::*;

/// The digest a receipt gives the output `lines` (JSON objects with `seq`, `stream` and `text`,
/// as `submit --json` and the service's API show them).
fn output_digest<'a>(lines: impl IntoIterator<Item = &'a Value>) -> String {
    let mut digest = OutputDigest::default();
    for line in lines {
        let streams = [LogStream::Stdout, LogStream::Stderr, LogStream::Agent];
        let stream = streams.into_iter().find(|s| line["stream"] == s.name()).expect("a stream");
        let text = line["text"].as_str().expect("a text").to_owned();
        digest.add(&LogLine { seq: line["seq"].as_u64().expect("a sequence number"), stream, text, at: 0 });
    }
    digest.finish().0
}

/// Runs a script on `agent_id` through `dispatcher submit --json`: its ticket, exit code, and
/// the digest of the output it showed, as a receipt computes it.
async fn submit_and_digest(agent_id: &str, script: &str) -> (String, Option<i32>, String) {
    let out = run_dispatcher(&["submit", "--json", "--target", agent_id, "--", script]).await;
    let events: Vec<Value> =
        text(&out.stdout).lines().map(|line| serde_json::from_str(line).expect("a JSON event")).collect();
    let ticket = events.iter().find(|e| e["event"] == "ticket").expect("a ticket event")["ticket"].as_str().unwrap();
    let digest = output_digest(events.iter().filter(|e| e["event"] == "log"));
    (ticket.to_owned(), out.status.code(), digest)
}

/// `dispatcher receipts --target agent_id --json`, once it lists `count` receipts: the lines.
async fn receipts(agent_id: &str, count: usize) -> Vec<String> {
    eventually(&format!("{count} receipts of {agent_id}"), Duration::from_secs(30), || async move {
        let out = run_dispatcher(&["receipts", "--target", agent_id, "--json", "--since", "10m"]).await;
        let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        (lines.len() >= count).then(|| {
            assert_eq!(out.status.code(), Some(0), "every receipt verifies: {}", text(&out.stderr));
            lines
        })
    })
    .await
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).expect("a receipt as JSON")
}

/// `dispatcher verify` of `lines` (written to a file): exit code and stderr.
async fn verify(lines: &[String]) -> (Option<i32>, String) {
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique("receipts")));
    std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let out = run_dispatcher(&["verify", file.to_str().unwrap()]).await;
    std::fs::remove_file(&file).unwrap();
    (out.status.code(), text(&out.stderr))
}

/// A receipt that follows `line`'s in its chain, with its ticket changed, signed with `key`.
fn next_signed_by(line: &str, key: &SecretKey) -> SignedReceipt {
    let signed = SignedReceipt::from_text(json(line)["receipt"].as_str().unwrap()).unwrap();
    let receipt = signed.receipt().unwrap();
    let (sequence, previous) = ChainHead::next(Some(&ChainHead::of(&signed, receipt.sequence)));
    Receipt { sequence, previous, ticket: "forged-ticket".into(), ..receipt }.sign(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_leaves_a_signed_receipt_and_verify_finds_any_tampering() {
    let agent = AgentProcess::start(agent::test_config("receipts")).await;
    let id = agent.config.agent_id.clone();
    let mut ran = Vec::new();
    for script in ["echo one; echo two >&2", "echo failing; exit 3", "printf 'a\\nb\\n'"] {
        ran.push(submit_and_digest(&id, script).await);
    }
    let lines = receipts(&id, 3).await;
    assert_eq!(lines.len(), 3, "one receipt per run: {lines:?}");
    let dispatcher_key = trust::keys().dispatcher.id().to_string();
    let mut previous: Option<String> = None;
    for (index, (line, (ticket, code, digest))) in lines.iter().zip(&ran).enumerate() {
        let receipt = json(line);
        assert_eq!(receipt["ticket"].as_str(), Some(ticket.as_str()));
        assert_eq!(receipt["exit_code"].as_i64(), code.map(i64::from), "{line}");
        assert_eq!(receipt["output_sha256"].as_str(), Some(digest.as_str()), "the output the dispatcher showed");
        assert_eq!(receipt["sequence"].as_u64(), Some(index as u64 + 1));
        assert_eq!(receipt["signed_by"], serde_json::json!([dispatcher_key]));
        assert_eq!(receipt["key"].as_str(), Some(trust::keys().agent.id().to_string().as_str()));
        let signed = SignedReceipt::from_text(receipt["receipt"].as_str().unwrap()).unwrap();
        assert_eq!(receipt["previous"].as_str().map(str::to_owned), previous, "chained");
        previous = Some(signed.digest());
    }
    // The human listing says each verified.
    let out = run_dispatcher(&["receipts", "--target", &id, "--since", "10m"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).matches("verified").count(), 3, "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(&format!("{id} #2")) && text(&out.stdout).contains("exit 3"));
    // On a terminal a spinner says how far the read has got, and is cleared once it is done.
    let mut command = dispatcher_command();
    command.args(["receipts", "--target", &id, "--since", "10m"]);
    let (status, shown) = output_on_terminal(command).await;
    let shown = text(&shown);
    assert!(status.success(), "{shown}");
    assert!(shown.contains("reading cuttle.receipts: ") && shown.contains(" messages"), "{shown:?}");
    assert_eq!(shown.matches("  verified").count(), 3, "{shown:?}");

    let (code, stderr) = verify(&lines).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("3 receipt(s) verified") && stderr.contains(&format!("{id}: receipts 1 to 3")), "{stderr}");
    // From standard input too.
    let mut child = dispatcher_command()
        .args(["verify", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, lines.join("\n").as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // One byte of the signed body.
    let mut byte = lines.clone();
    let receipt = json(&byte[1])["receipt"].as_str().unwrap().to_owned();
    let body_at = receipt.find(' ').unwrap() + 20;
    let flipped = if &receipt[body_at..=body_at] == "A" { "B" } else { "A" };
    let mut tampered = receipt.clone();
    tampered.replace_range(body_at..=body_at, flipped);
    byte[1] = byte[1].replace(&receipt, &tampered);
    // A field shown beside it.
    let mut shown = lines.clone();
    shown[1] = shown[1].replace("\"exit_code\":3", "\"exit_code\":0");
    // One dropped from the middle; two swapped; one signed by another key.
    let mut dropped = lines.clone();
    dropped.remove(1);
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let other_key = SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap();
    let forged = next_signed_by(&lines[2], &other_key);
    let mut foreign = lines.clone();
    foreign.push(forged.to_text());
    for (what, tampered, expected) in [
        ("one byte of a receipt", byte, "line 2:".to_owned()),
        (
            "a shown field",
            shown,
            "line 2: what the line shows of the receipt is not what its agent signed: exit_code was edited".to_owned(),
        ),
        ("a receipt dropped", dropped, format!("agent {id}: receipts 2 missing between 1 and 3")),
        (
            "two swapped",
            swapped,
            format!("line 3: agent {id}'s receipt 2 comes after its receipt 3: the receipts were reordered"),
        ),
        (
            "another key's",
            foreign,
            format!("line 4: receipt of agent {id} signed by key {}, which is not pinned for it", other_key.id()),
        ),
    ] {
        let (code, stderr) = verify(&tampered).await;
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(stderr.contains(&expected), "{what}: expected {expected:?} in {stderr}");
    }

    // Hand-made broker traffic: a receipt in the agent's name under another key, and junk.
    let stream = tests::presence::PresenceStream::connect().await;
    stream.append_to(RECEIPTS_STREAM, RECEIPT_TYPE, &forged.body, Some(&forged.seal())).await;
    stream.append_to(RECEIPTS_STREAM, RECEIPT_TYPE, b"\xc1 not a receipt", None).await;
    stream.close().await;
    let out = run_dispatcher(&["receipts", "--target", &id, "--since", "10m"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("forged-ticket") && stdout.contains("NOT VERIFIED"), "{stdout}");
    assert_eq!(stdout.matches("  verified").count(), 3, "{stdout}");
    assert!(stderr.contains("not pinned for it") && stderr.contains("not signed receipts"), "{stderr}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_wait_in_the_store_while_the_broker_is_away_and_outlive_a_crash() {
    let link = FaultProxy::start(broker_addr()).await;
    let mut config = agent::test_config("receipts-kept");
    config.amqp_url = link.amqp_url();
    let mut agent = AgentProcess::start(config).await;
    let id = agent.config.agent_id.clone();
    let pending_key = format!("{}agent:{id}:receipts:pending", agent.config.key_prefix);
    let pending = || {
        let key = pending_key.clone();
        async move {
            let client = redis::Client::open(redis_url()).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("ZCARD").arg(&key).query_async::<u64>(&mut con).await.unwrap()
        }
    };
    submit_and_digest(&id, "echo before").await;
    receipts(&id, 1).await;
    assert_eq!(pending().await, 0, "a confirmed receipt leaves the store");

    // Two runs: one ends while the agent cannot reach the broker, one is lost with the agent.
    let markers = Markers::new();
    let go = markers.dir.join("go");
    let ends = format!("{}; while [ ! -e '{}' ]; do sleep 0.1; done; echo ended", markers.record("ends"), go.display());
    let lost = format!("{}; sleep 20", markers.record("lost"));
    let spawn = |script: String| {
        dispatcher_command()
            .args(["submit", "--target", &id, "--", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (_ends, _lost) = (spawn(ends), spawn(lost));
    eventually("both scripts running", Duration::from_secs(20), || async {
        (markers.count("ends") == 1 && markers.count("lost") == 1).then_some(())
    })
    .await;
    link.outage();
    std::fs::write(&go, "").unwrap();
    eventually("the receipt kept in the store", Duration::from_secs(20), || async {
        (pending().await == 1).then_some(())
    })
    .await;
    agent.kill().await;
    link.restore();
    agent.restart().await;

    let lines = receipts(&id, 3).await;
    let receipts: Vec<Value> = lines.iter().map(|l| json(l)).collect();
    assert_eq!(receipts.iter().map(|r| r["sequence"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(receipts[1]["exit_code"], 0, "the run that ended while the broker was away");
    assert_eq!(receipts[1]["lines"], 1);
    let unknown = contracts::wire::exit_code::UNKNOWN_RESULT;
    assert_eq!(receipts[2]["exit_code"], unknown, "the run lost with the agent, found at its restart");
    assert!(receipts[2]["output_sha256"].is_null() && receipts[2]["signed_by"] == serde_json::json!([]));
    assert_eq!(pending().await, 0);
    let (code, stderr) = verify(&lines).await;
    assert_eq!(code, Some(0), "one whole chain across the crash: {stderr}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_receipts_are_read_together_each_worker_with_its_own_chain_and_since_bounds_them() {
    let pool = unique("receipts-pool");
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut config = agent::test_config("receipts-worker");
        config.pool = Some(pool.clone());
        // A pool's workers share their ticket store, so any of them answers for any ticket.
        config.key_prefix = format!("{pool}:");
        workers.push(TestAgent::start_with(config).await);
    }
    for _ in 0..4 {
        let out = run_dispatcher(&["submit", "--pool", &pool, "--", "echo pooled"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let lines = eventually("the pool's 4 receipts", Duration::from_secs(30), || async {
        let out = run_dispatcher(&["receipts", "--pool", &pool, "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        (lines.len() == 4).then_some(lines)
    })
    .await;
    let ids: Vec<&str> = workers.iter().map(|w| w.id()).collect();
    for line in &lines {
        let receipt = json(line);
        assert_eq!(receipt["pool"].as_str(), Some(pool.as_str()));
        assert!(ids.contains(&receipt["agent_id"].as_str().unwrap()), "{line}");
    }
    let (code, stderr) = verify(&lines).await;
    assert_eq!(code, Some(0), "each worker's chain is whole: {stderr}");
    // --since reads back only that far: soon none of these is within the last second.
    eventually("no receipt within --since 1s", Duration::from_secs(15), || async {
        let out = run_dispatcher(&["receipts", "--pool", &pool, "--since", "1s"]).await;
        assert_eq!(out.status.code(), Some(0));
        text(&out.stderr).contains("cuttle: no receipts in the last 1s").then_some(())
    })
    .await;
    for worker in workers {
        worker.stop().await;
    }
    for queue in [pool_queue(&pool), pool_service_queue(&pool)] {
        tests::raw::delete_queue(&queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_keeps_each_tickets_receipt_and_shows_it_verified_only_while_it_checks() {
    use tests::service::{http, journal_prefix, remove_journal, ServiceProcess};
    let agent = TestAgent::start("svc-receipts").await;
    let prefix = journal_prefix("svc-receipts");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let receipt_of = |ticket: String| {
        let url = format!("{}/v1/tickets/{ticket}", service.url);
        async move {
            let body: Value = http().get(&url).send().await.ok()?.json().await.ok()?;
            (!body["receipt"].is_null()).then_some(body)
        }
    };
    // A forged receipt for the ticket appended to the stream while it runs does not take its place.
    let markers = Markers::new();
    let gate = markers.dir.join("gate");
    let script = format!(
        "{}; echo proved; while [ ! -e '{}' ]; do sleep 0.05; done; exit 4",
        markers.record("run"),
        gate.display()
    );
    let ticket = service.submit(agent.id(), &script).await;
    eventually("the script running", Duration::from_secs(20), || async { (markers.count("run") == 1).then_some(()) })
        .await;
    let other_key = SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap();
    let forged = Receipt {
        version: contracts::receipt::RECEIPT_VERSION,
        agent_id: agent.id().to_owned(),
        pool: None,
        sequence: 1,
        previous: None,
        ticket: ticket.clone(),
        command_digest: "00".repeat(32),
        signed_by: Vec::new(),
        started_at: 1,
        ended_at: 2,
        exit_code: 0,
        output_sha256: None,
        lines: None,
        purpose: None,
        submitter: None,
        approved_by: Vec::new(),
    }
    .sign(&other_key);
    let stream = tests::presence::PresenceStream::connect().await;
    stream.append_to(RECEIPTS_STREAM, RECEIPT_TYPE, &forged.body, Some(&forged.seal())).await;
    stream.close().await;
    std::fs::write(&gate, "").unwrap();
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    let record = match record["receipt"].is_null() {
        true => eventually("the ticket's receipt", Duration::from_secs(30), || receipt_of(ticket.clone())).await,
        false => record,
    };
    let receipt = &record["receipt"];
    assert_eq!(receipt["verified"], true, "{record}");
    assert_eq!((receipt["agent_id"].as_str(), receipt["exit_code"].as_i64()), (Some(agent.id()), Some(4)));
    let digest = output_digest(record["output"].as_array().unwrap());
    assert_eq!(receipt["output_sha256"].as_str(), Some(digest.as_str()), "the output the journal shows");
    let page = http().get(format!("{}/tickets/{ticket}", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("verified</span>: signed by agent") && page.contains("exit code 4"), "{page}");

    // Whoever can write to the journal cannot make a ticket look verified: a receipt signed by
    // another key, or a genuine one of another ticket, put in its place.
    let mut journal = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let hash = format!("{prefix}t:{}", ticket.to_lowercase());
    let shown = |text: String| {
        let (mut journal, hash, url) = (journal.clone(), hash.clone(), format!("{}/v1/tickets/{ticket}", service.url));
        async move {
            redis::cmd("HSET").arg(&hash).arg("receipt").arg(text).query_async::<()>(&mut journal).await.unwrap();
            let body: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
            body["receipt"].clone()
        }
    };
    let moved = shown(forged.to_text()).await;
    assert_eq!(moved["verified"], false);
    assert!(moved["problem"].as_str().unwrap().contains("not pinned for agent"), "{moved}");
    let other = service.submit(agent.id(), "echo other").await;
    service.finished(&other, Duration::from_secs(30)).await;
    let genuine = eventually("the other ticket's receipt", Duration::from_secs(30), || receipt_of(other.clone())).await;
    let moved = shown(genuine["receipt"]["receipt"].as_str().unwrap().to_owned()).await;
    assert_eq!(moved["verified"], false);
    assert!(moved["problem"].as_str().unwrap().contains(&format!("made for ticket {other}")), "{moved}");
    let page = http().get(format!("{}/tickets/{ticket}", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("NOT VERIFIED"), "{page}");
    let _: () = redis::cmd("DEL").arg(&hash).query_async(&mut journal).await.unwrap();
    service.stop().await;
    remove_journal(&prefix).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_and_hostile_files_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(unique("receipts-hostile"));
    std::fs::create_dir_all(&dir).unwrap();
    // A 2 MiB line of base64, a line of JSON that is not an object, and a binary blob.
    let huge = dir.join("huge.jsonl");
    std::fs::write(&huge, format!("cuttle-receipt-v1 {} 0011223344556677 AA==\n[1,2]\n", "A".repeat(2 << 20))).unwrap();
    let binary = dir.join("binary");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    let missing = dir.join("missing.jsonl");
    let cases: [(&[&str], i32, &str); 9] = [
        (&["verify", missing.to_str().unwrap()], 2, "cannot read"),
        (&["verify", binary.to_str().unwrap()], 2, "cannot read"),
        (&["verify", huge.to_str().unwrap()], 1, "line 1: not a receipt: the receipt is"),
        (&["receipts", "--target", "web 01"], 2, "characters outside"),
        (&["receipts", "--pool", "../p"], 2, "characters outside"),
        (&["receipts"], 2, "--target"),
        (&["receipts", "--target", "a", "--pool", "p"], 2, "cannot be used with"),
        (&["receipts", "--target", "a", "--since", "soon"], 2, "--since"),
        (&["setup-broker", "--receipts-max-age", "30X"], 2, "one of Y, M, D, h, m, s"),
    ];
    for (args, code, reason) in cases {
        let out = run_dispatcher(args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: expected {reason:?} in {stderr}");
    }
    let out = run_dispatcher(&["verify", huge.to_str().unwrap()]).await;
    assert!(text(&out.stderr).contains("line 2: not a receipt"), "{}", text(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}
