//! Trust (ARCHITECTURE.md, Trust) against the real RabbitMQ: every attack on an agent (unsigned, tampered
//! fields, wrong or revoked key, misaddressed, expired, over-long window, replays, and MACs in
//! sessions the agent does not hold, tampered, replayed or offered by a revoked key) is refused
//! and runs nothing; forged answers and impostors never make the dispatcher report success; an
//! unpinned agent gets a clear error; an agent that restarts forgets its sessions and the
//! dispatcher signs again; a captured session offer replayed thousands of times creates no
//! session and evicts none. `attack_table` prints the attack table of docs/security.md:
//!
//! ```sh
//! cargo build --bins && cargo nextest run -p tests --test trust --no-capture 2>&1 | grep ATTACK-TABLE
//! ```

use contracts::time::unix_millis;
use contracts::trust::files::Pin;
use contracts::trust::keys::SecretKey;
use contracts::trust::seal::Seal;
use contracts::trust::session::{accept, Offer, Session};
use contracts::trust::verify::Believed;
use contracts::wire::envelope::{Envelope, Reply, Request};
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::messages::{CompleteScriptV2, GetCapabilities, GetStatusV2, StartScriptV2};
use contracts::wire::ticket::Ticket;
use contracts::wire::topology::{agent_queue, pool_queue, CLOCK_SKEW_ALLOWANCE_MS};
use std::process::Output;
use std::time::{Duration, SystemTime};
use tests::agent::test_config;
use tests::raw::RawBroker;
use tests::trust::{
    keypair, keys, publish_to_agent, write_atomically, Answerer, CommandCopies, Impostor, Taken, Thief,
};
use tests::*;

fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}

/// A start of `script` for `target`, as a dispatcher encodes it: (envelope, its bytes).
fn start(target: &str, ticket: &Ticket, script: String, issued_at: u64, not_after: Option<u64>) -> Vec<u8> {
    let body = StartScriptV2 { ticket: ticket.clone(), spec: sh(script), wait_for_output: None, first_issued_at: None };
    Request::StartScriptV2(body).encode(target, issued_at, not_after, &mut edge::entropy::OsEntropy).expect("encode").1
}

/// A change made to a signed start.
type Tamper = Box<dyn FnOnce(&mut Envelope<StartScriptV2>)>;

/// The same start with one envelope field changed by `tamper` after it was signed.
fn tampered(bytes: &[u8], tamper: impl FnOnce(&mut Envelope<StartScriptV2>)) -> Vec<u8> {
    let mut envelope: Envelope<StartScriptV2> = rmp_serde::from_slice(bytes).expect("decode");
    tamper(&mut envelope);
    envelope.encode().expect("encode")
}

/// What happened to one attack.
struct Verdict {
    reply: Option<ErrorReply>,
    ran: bool,
}

/// One row of the table: the attack and whether it was refused (nothing ran).
struct Row {
    attack: &'static str,
    refused: bool,
    how: String,
}

struct Bench {
    raw: RawBroker,
    markers: Markers,
    rows: Vec<Row>,
}

impl Bench {
    /// Publishes `body` with `seal` to `queue`; the reply, and whether the marker `name` ran (again).
    async fn send(&mut self, queue: &str, body: &[u8], seal: Option<&Seal>, name: &str) -> Verdict {
        let before = self.markers.count(name);
        let id = self.raw.publish_to(queue, "StartScriptV2", body, seal).await;
        let reply = match self.raw.reply(&id).await {
            Reply::Error(error) => Some(error),
            _ => None,
        };
        // A refused command is dead-lettered; one that runs would have recorded its marker by the
        // time a status comes back (the reply waits for nothing, so give the script a moment).
        if reply.is_some() {
            let dead = self.raw.dead_letter(&id).await;
            assert_eq!(dead.reason.as_deref(), Some("rejected"), "{name}: a refused command is dead-lettered");
        } else {
            eventually(&format!("{name} to run"), Duration::from_secs(10), || async {
                (self.markers.count(name) > before).then_some(())
            })
            .await;
        }
        Verdict { reply, ran: self.markers.count(name) > before }
    }

    /// Records an attack that must be refused with `expected`, running nothing.
    fn refused(&mut self, attack: &'static str, verdict: Verdict, expected: ErrorKind) {
        self.refused_because(attack, verdict, expected, None);
    }

    /// [`Bench::refused`], with a reason the answer must begin with (shown in the table).
    fn refused_because(&mut self, attack: &'static str, verdict: Verdict, expected: ErrorKind, reason: Option<&str>) {
        let how = match (&verdict.reply, reason) {
            (None, _) => "answered".into(),
            (Some(error), None) => format!("{:?}", error.kind),
            (Some(error), Some(reason)) => format!("{:?}: {reason}", error.kind),
        };
        self.rows.push(Row { attack, refused: !verdict.ran, how });
        let reply = verdict.reply.unwrap_or_else(|| panic!("{attack}: answered as if it ran"));
        assert_eq!(reply.kind, expected, "{attack}: {}", reply.message);
        assert!(reply.message.starts_with(reason.unwrap_or_default()), "{attack}: {}", reply.message);
        assert!(!verdict.ran, "{attack}: nothing runs");
    }

    fn row(&mut self, attack: &'static str, refused: bool, how: impl Into<String>) {
        self.rows.push(Row { attack, refused, how: how.into() });
    }
}

/// Every attack on trust (docs/security.md, "The attack table") and of issue 9, through the real
/// broker, one row each; all refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_table() {
    let mut attacked = test_config("attacked");
    // It runs scripts as nobody when their command says so: a start changed to say so after it
    // was signed is refused by the signature alone.
    attacked.run_as = worker_agent::run_as::policy(vec!["nobody".into()], None).unwrap();
    let agent = TestAgent::start_with(attacked).await;
    let mut worker_config = test_config("other");
    let pool = unique("pool");
    worker_config.pool = Some(pool.clone());
    worker_config.key_prefix = agent.config.key_prefix.clone();
    let other = TestAgent::start_with(worker_config).await;
    let mut bench = Bench { raw: RawBroker::connect().await, markers: Markers::new(), rows: Vec::new() };
    let dispatcher = &keys().dispatcher;
    let me = agent.id().to_owned();
    let own = agent_queue(&me);
    let at = now_ms();
    let soon = Some(at + 60_000);

    // Unsigned, with and without a forged key id.
    let bytes = start(&me, &edge::entropy::ticket(), bench.markers.record("unsigned"), at, soon);
    let verdict = bench.send(&own, &bytes, None, "unsigned").await;
    bench.refused("unsigned command", verdict, ErrorKind::NotAuthorized);

    // Tampered after signing: every field that matters.
    let fields: [(&'static str, &str, Tamper); 6] = [
        ("tampered body (script)", "t-body", Box::new(|e| e.body.spec.script.push_str("; echo owned"))),
        ("tampered target", "t-target", Box::new(|e| e.target = "someone-else".into())),
        ("tampered ticket", "t-ticket", Box::new(|e| e.body.ticket = edge::entropy::ticket())),
        ("tampered not_after", "t-deadline", Box::new(|e| e.not_after = e.not_after.map(|n| n + 3_600_000))),
        ("tampered kind (v2 start made a v1 start)", "t-kind", Box::new(|e| e.kind = "StartScriptV1".into())),
        (
            "tampered run_as (made nobody, whom the agent allows)",
            "t-run-as",
            Box::new(|e| e.body.spec.run_as = Some("nobody".into())),
        ),
    ];
    for (attack, name, tamper) in fields {
        let bytes = start(&me, &edge::entropy::ticket(), bench.markers.record(name), at, soon);
        let seal = dispatcher.seal_command(&bytes);
        let verdict = bench.send(&own, &tampered(&bytes, tamper), Some(&seal), name).await;
        bench.refused(attack, verdict, ErrorKind::NotAuthorized);
    }

    // A key the agent does not trust.
    let (stranger, _) = keypair("stranger");
    let bytes = start(&me, &edge::entropy::ticket(), bench.markers.record("wrong-key"), at, soon);
    let verdict = bench.send(&own, &bytes, Some(&stranger.seal_command(&bytes)), "wrong-key").await;
    bench.refused("signed by an untrusted key", verdict, ErrorKind::NotAuthorized);

    // Addressed to another agent, and the checks of the deadline.
    let bytes = start(other.id(), &edge::entropy::ticket(), bench.markers.record("misaddressed"), at, soon);
    let verdict = bench.send(&own, &bytes, Some(&dispatcher.seal_command(&bytes)), "misaddressed").await;
    bench.refused("misaddressed (signed for another agent)", verdict, ErrorKind::NotAuthorized);
    let past = at - 60_000;
    let bytes = start(&me, &edge::entropy::ticket(), bench.markers.record("expired"), past - 1_000, Some(past));
    let verdict = bench.send(&own, &bytes, Some(&dispatcher.seal_command(&bytes)), "expired").await;
    // Past its deadline is one of the trust checks (ARCHITECTURE.md, Trust): NotAuthorized, with the reason.
    bench.refused_because("expired", verdict, ErrorKind::NotAuthorized, Some("expired"));
    let day_and_more = Some(at + 25 * 3_600_000);
    let bytes = start(&me, &edge::entropy::ticket(), bench.markers.record("long"), at, day_and_more);
    let verdict = bench.send(&own, &bytes, Some(&dispatcher.seal_command(&bytes)), "long").await;
    bench.refused("valid for more than 24 h", verdict, ErrorKind::NotAuthorized);
    let bytes = start(&me, &edge::entropy::ticket(), bench.markers.record("no-deadline"), at, None);
    let verdict = bench.send(&own, &bytes, Some(&dispatcher.seal_command(&bytes)), "no-deadline").await;
    bench.refused("no not_after", verdict, ErrorKind::NotAuthorized);

    // Replays of a genuine command that ran once, with a short deadline so it can expire here.
    let ticket = edge::entropy::ticket();
    let genuine_deadline = now_ms() + 1_000;
    let bytes = start(&me, &ticket, bench.markers.record("genuine"), now_ms(), Some(genuine_deadline));
    let seal = dispatcher.seal_command(&bytes);
    let verdict = bench.send(&own, &bytes, Some(&seal), "genuine").await;
    assert!(verdict.ran && verdict.reply.is_none(), "the genuine command runs");
    // Status requests held by the agent until the script has ended (a few at most).
    for attempt in 1.. {
        let status = bench.raw.publish(&me, "GetStatusV2", &status_request(&me, &ticket)).await;
        if matches!(bench.raw.reply(&status).await, Reply::ScriptStatus(s) if s.is_complete()) {
            break;
        }
        assert!(attempt < 5, "the genuine run ends");
    }
    let id = bench.raw.publish_to(&own, "StartScriptV2", &bytes, Some(&seal)).await;
    let again = matches!(bench.raw.reply(&id).await, Reply::ScriptStatus(_)) && bench.markers.count("genuine") == 1;
    bench.row("replayed to the same agent", again, "answered with its status");
    assert!(again, "a replay to its own agent finds its ticket");
    for (attack, queue) in
        [("replayed to another agent", agent_queue(other.id())), ("replayed to a pool", pool_queue(&pool))]
    {
        let verdict = bench.send(&queue, &bytes, Some(&seal), "genuine").await;
        bench.refused(attack, verdict, ErrorKind::NotAuthorized);
        assert_eq!(bench.markers.count("genuine"), 1);
    }
    let complete = Request::CompleteScriptV2(CompleteScriptV2::new(ticket.clone()));
    let (_, complete) = complete.encode(&me, now_ms(), Some(now_ms() + 60_000), &mut edge::entropy::OsEntropy).unwrap();
    let id = bench.raw.publish(&me, "CompleteScriptV2", &complete).await;
    bench.raw.reply(&id).await;
    let id = bench.raw.publish_to(&own, "StartScriptV2", &bytes, Some(&seal)).await;
    let after_completion = matches!(bench.raw.reply(&id).await, Reply::ScriptStatus(s) if s.is_complete());
    let after_completion = after_completion && bench.markers.count("genuine") == 1;
    bench.row("replayed after its completion", after_completion, "answered from its tombstone");
    assert!(after_completion);
    // After its deadline (and the skew allowance) the replay is refused without asking the store.
    eventually("the genuine command to expire", Duration::from_secs(20), || async {
        (now_ms() > genuine_deadline + CLOCK_SKEW_ALLOWANCE_MS).then_some(())
    })
    .await;
    let verdict = bench.send(&own, &bytes, Some(&seal), "genuine").await;
    bench.refused_because("replayed after its expiry", verdict, ErrorKind::NotAuthorized, Some("expired"));
    assert_eq!(bench.markers.count("genuine"), 1, "the genuine command ran once, whatever was replayed");

    // Sessions: MACs the agent cannot check, altered, or sent to another agent.
    session_rows(&mut bench, &me, other.id()).await;
    // Revoked: trusted by a file the agent reloads (SIGHUP), then removed from it.
    revoked(&mut bench).await;
    // The dispatcher's side: forged answers and impostors never turn into success.
    forged_rows(&mut bench).await;

    println!("ATTACK-TABLE | attack | result |");
    println!("ATTACK-TABLE |---|---|");
    for row in &bench.rows {
        let result = if row.refused { "refused" } else { "RAN" };
        println!("ATTACK-TABLE | {} | {result} ({}) |", row.attack, row.how);
    }
    assert!(bench.rows.iter().all(|r| r.refused), "every attack is refused");
    assert_eq!(bench.rows.len(), 29);
    bench.raw.close().await;
    agent.stop().await;
    other.stop().await;
    tests::raw::delete_queue(&pool_queue(&pool)).await;
    tests::raw::delete_queue(&contracts::wire::topology::pool_service_queue(&pool)).await;
}

/// Agrees a session with `agent_id` as a dispatcher with `key` does: a signed capabilities
/// request offering one, and the agent's signed answer accepting it.
async fn agree_session(raw: &mut RawBroker, agent_id: &str, key: &SecretKey) -> Session {
    let (offer, header, bytes) = offering_capabilities(agent_id);
    let queue = agent_queue(agent_id);
    let id = raw.publish_to(&queue, "GetCapabilities", &bytes, Some(&key.seal_command(&bytes))).await;
    let (seal, body) = raw.sealed_reply(&id).await;
    let pin = Pin::Keys(vec![*keys().agent.public()]);
    let believed =
        contracts::trust::verify::check_answer(&pin, &id, seal, &body, None).expect("the agent's own answer");
    let Believed::Key(agent_key) = believed else { panic!("signed by the agent key, not legacy") };
    let (answer, _) = Reply::decode_with_header(&body).unwrap();
    let share = answer.key_share.expect("the agent accepts a session offered to it");
    offer.complete(&header.message_id, &share, key.id(), agent_key).expect("a session")
}

/// A capabilities request to `agent_id` offering a session, valid for a minute: the offer, the
/// envelope and its bytes.
fn offering_capabilities(agent_id: &str) -> (Offer, Envelope<()>, Vec<u8>) {
    let offer = Offer::new(&mut edge::entropy::OsEntropy).expect("random bytes");
    let capabilities = Request::GetCapabilities(GetCapabilities {});
    let (header, bytes) = capabilities
        .encode_offering(
            agent_id,
            now_ms(),
            Some(now_ms() + 60_000),
            Some(offer.share()),
            &mut edge::entropy::OsEntropy,
        )
        .unwrap();
    (offer, header, bytes)
}

/// Commands MAC'd in sessions: a genuine one runs; one in a session the agent never agreed, one
/// altered after its MAC, and one sent to another agent are refused.
async fn session_rows(bench: &mut Bench, me: &str, other: &str) {
    let own = agent_queue(me);
    let session = agree_session(&mut bench.raw, me, &keys().dispatcher).await;
    let command = |script: String| start(me, &edge::entropy::ticket(), script, now_ms(), Some(now_ms() + 60_000));

    let bytes = command(bench.markers.record("in-session"));
    let verdict = bench.send(&own, &bytes, Some(&session.seal_command(&bytes)), "in-session").await;
    assert!(verdict.ran && verdict.reply.is_none(), "a command MAC'd in the agent's session runs");

    // Whoever made this session knows its key; the agent never agreed it.
    let made_up = accept(
        "made-up",
        Offer::new(&mut edge::entropy::OsEntropy).unwrap().share(),
        keys().dispatcher.id(),
        keys().agent.id(),
        &mut edge::entropy::OsEntropy,
    );
    let made_up = made_up.expect("a session").1;
    let bytes = command(bench.markers.record("unknown-session"));
    let verdict = bench.send(&own, &bytes, Some(&made_up.seal_command(&bytes)), "unknown-session").await;
    let attack = "MAC'd in a session the agent does not hold";
    bench.refused_because(attack, verdict, ErrorKind::UnknownSession, Some("session"));

    let bytes = command(bench.markers.record("t-mac"));
    let seal = session.seal_command(&bytes);
    let altered = tampered(&bytes, |e| e.body.spec.script.push_str("; echo owned"));
    let verdict = bench.send(&own, &altered, Some(&seal), "t-mac").await;
    bench.refused("MAC'd in the agent's session, then tampered", verdict, ErrorKind::NotAuthorized);

    let bytes = command(bench.markers.record("session-elsewhere"));
    let seal = session.seal_command(&bytes);
    let verdict = bench.send(&agent_queue(other), &bytes, Some(&seal), "session-elsewhere").await;
    bench.refused("MAC'd in one agent's session, sent to another", verdict, ErrorKind::UnknownSession);
}

fn status_request(target: &str, ticket: &Ticket) -> Vec<u8> {
    let status = Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: 0, wait: Some(2_000) });
    status.encode(target, now_ms(), Some(now_ms() + 60_000), &mut edge::entropy::OsEntropy).unwrap().1
}

/// A command signed with a key the agent trusted, revoked by removing it from the trusted-keys
/// file and sending the agent binary SIGHUP.
async fn revoked(bench: &mut Bench) {
    let (revoked_key, _) = keypair("revoked");
    let trusted = keys().dir.join(format!("{}-trusted", unique("revocation")));
    let both = format!("{} test\n{} to revoke\n", keys().dispatcher.public(), revoked_key.public());
    std::fs::write(&trusted, both).unwrap();
    let mut config = test_config("revoking");
    config.trusted_keys_file = Some(trusted.clone());
    let agent = AgentProcess::start(config.clone()).await;
    let queue = agent_queue(&config.agent_id);
    let signed = |script: String| {
        let bytes = start(&config.agent_id, &edge::entropy::ticket(), script, now_ms(), Some(now_ms() + 60_000));
        let seal = revoked_key.seal_command(&bytes);
        (bytes, seal)
    };
    let (bytes, seal) = signed(bench.markers.record("before-revocation"));
    let verdict = bench.send(&queue, &bytes, Some(&seal), "before-revocation").await;
    assert!(verdict.ran, "trusted before it is revoked");
    let session = agree_session(&mut bench.raw, &config.agent_id, &revoked_key).await;
    write_atomically(&trusted, &format!("{} test\n", keys().dispatcher.public()));
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("the agent to reload its trusted keys", Duration::from_secs(10), || async {
        agent.log_text().contains("trusted keys reloaded").then_some(())
    })
    .await;
    let (bytes, seal) = signed(bench.markers.record("after-revocation"));
    let verdict = bench.send(&queue, &bytes, Some(&seal), "after-revocation").await;
    bench.refused("signed by a revoked key (removed, SIGHUP)", verdict, ErrorKind::NotAuthorized);
    let bytes = start(
        &config.agent_id,
        &edge::entropy::ticket(),
        bench.markers.record("revoked-session"),
        now_ms(),
        Some(now_ms() + 60_000),
    );
    let verdict = bench.send(&queue, &bytes, Some(&session.seal_command(&bytes)), "revoked-session").await;
    bench.refused("MAC'd in a session a revoked key agreed", verdict, ErrorKind::NotAuthorized);
    let refusal =
        agent.log_text().lines().find(|l| l.contains("command refused")).map(str::to_owned).unwrap_or_default();
    assert!(refusal.contains(&revoked_key.id().to_string()), "the key id is logged: {refusal}");
    agent.stop().await;
}

/// Runs `dispatcher submit` to its end.
async fn submit(args: &[&str]) -> Output {
    let output = dispatcher_command().arg("submit").args(args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("submit ends").expect("submit runs")
}

/// Impostors answering in an agent's name: alone (no genuine answer ever comes), they never make
/// `submit` succeed; beside the real agent, their answers are ignored and reported.
async fn forged_rows(bench: &mut Bench) {
    let (impostor_key, _) = keypair("impostor");
    let answerers = [
        ("forged answer, unsigned (impostor alone)", Answerer::Unsigned),
        ("forged answer, impostor's own key (impostor alone)", Answerer::Key(Box::new(impostor_key.clone()))),
        ("genuine agent's old answer replayed (impostor alone)", Answerer::Replayed),
    ];
    for (attack, answerer) in answerers {
        let id = unique("impersonated");
        let impostor = Impostor::start(&id, answerer).await;
        let out = submit(&["--target", &id, "--retry-duration", "3s", "--", "echo hi"]).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let believed = out.status.code() == Some(0) || stdout.contains(Impostor::OUTPUT);
        bench.row(attack, !believed, format!("exit {}", out.status.code().unwrap_or(-1)));
        assert_eq!(out.status.code(), Some(110), "no genuine answer before the deadline: {stderr}");
        assert!(stderr.contains("warning: ignored a forged answer"), "{stderr}");
        assert!(stderr.contains("ignored forged answer(s)"), "the final error says why: {stderr}");
        // The attempt's reply timeout was cut to the 3 s deadline (to 2.99... s): shown rounded,
        // as a person reads it, never as `2s 999ms 871us 20ns`.
        let within = stderr.split("no genuine answer from ").nth(1).and_then(|rest| rest.split(" within ").nth(1));
        let within = within.and_then(|rest| rest.split(';').next()).unwrap_or_default();
        let round = !within.is_empty() && !within.contains(' ') && !within.contains("us") && !within.contains("ns");
        assert!(round, "the timeout is shown round ({within:?}): {stderr}");
        assert!(impostor.answered() > 0);
        impostor.stop().await;
    }

    // Beside the real agent: its answer counts, the impostor's is reported.
    let agent = TestAgent::start("beside-impostor").await;
    let impostor = Impostor::start(agent.id(), Answerer::Key(Box::new(impostor_key))).await;
    let out = submit(&["--target", agent.id(), "--", "sleep 0.3; echo real; exit 3"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    bench.row(
        "impostor answering beside the real agent",
        out.status.code() == Some(3),
        format!("exit {}, the script's own", out.status.code().unwrap_or(-1)),
    );
    assert_eq!((out.status.code(), stdout.as_str()), (Some(3), "real\n"), "{stderr}");
    assert!(stderr.contains("warning: ignored a forged answer"), "{stderr}");
    impostor.stop().await;
    agent.stop().await;

    // The agent's own signature on an answer to another message than the request.
    junk_under_a_requests_ids(bench).await;
    old_start_replayed_under_a_stolen_requests_ids(bench).await;

    // An agent nobody pinned: a clear error, nothing sent.
    let id = "t-never-pinned";
    let out = submit(&["--target", id, "--", "echo hi"]).await;
    let stderr = text(&out.stderr);
    bench.row("agent not pinned", out.status.code() == Some(2), format!("exit {}", out.status.code().unwrap_or(-1)));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{id} is not pinned")) && stderr.contains(&format!("echo '{id} ed25519:")),
        "{stderr}"
    );
}

/// The next message of `kind` among the copies of an agent's commands.
async fn next_copy(copies: &mut lapin::Consumer, kind: &str) -> Taken {
    use futures_util::StreamExt;
    let wait = async {
        loop {
            let delivery = copies.next().await.expect("the copies' consumer").expect("a delivery");
            let taken = Taken { data: delivery.data, properties: delivery.properties };
            if taken.kind() == Some(kind) {
                break taken;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.unwrap_or_else(|_| panic!("a copy of a {kind}"))
}

/// `properties` answering to `request`'s reply-to under its correlation id.
fn under_ids_of(properties: &lapin::BasicProperties, request: &Taken) -> lapin::BasicProperties {
    let properties = properties.clone();
    let properties = match request.properties.correlation_id() {
        Some(id) => properties.with_correlation_id(id.clone()),
        None => properties,
    };
    match request.properties.reply_to() {
        Some(reply_to) => properties.with_reply_to(reply_to.clone()),
        None => properties,
    }
}

/// A start passes (a queue bound to the agent's routing key sees it); the attacker sends the
/// agent a junk message under that start's correlation id and reply-to. The agent's signed
/// refusal names the junk it refused, not the start, so the dispatcher ignores it and the script
/// runs and is reported as it ran. (Without the binding: "nothing ran", exit 103, while it ran.)
async fn junk_under_a_requests_ids(bench: &mut Bench) {
    let agent = TestAgent::start("junk-under-ids").await;
    let CommandCopies { connection, requests: mut copies, .. } = CommandCopies::of(agent.id()).await;
    // Its start is answered after the half second the agent waits for first output: the refusal
    // of the junk comes well before it.
    let script = format!("{}; sleep 1; echo genuine; exit 3", bench.markers.record("junk-victim"));
    let victim = tokio::spawn(submit_owned(vec!["--target".into(), agent.id().into(), "--".into(), script]));
    let start = next_copy(&mut copies, "StartScriptV2").await;
    let junk = under_ids_of(&lapin::BasicProperties::default().with_type("StartScriptV2".into()), &start);
    publish_to_agent(agent.id(), b"junk", junk).await;
    let out = victim.await.unwrap();
    let stderr = text(&out.stderr);
    let believed_refusal = out.status.code() == Some(i32::from(contracts::submission::outcome::exit::REJECTED));
    bench.row(
        "agent made to sign a refusal of junk sent under a request's ids",
        !believed_refusal && out.status.code() == Some(3),
        format!("ignored (it names the junk); the script's own exit {}", out.status.code().unwrap_or(-1)),
    );
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(3), "genuine\n"), "{stderr}");
    assert!(
        stderr.contains("warning: ignored a forged answer") && stderr.contains("answers another message"),
        "{stderr}"
    );
    assert_eq!(bench.markers.count("junk-victim"), 1);
    let _ = connection.close(200, "done".into()).await;
    agent.stop().await;
}

/// A consumer of higher priority on the agent's queue takes a start (it never reaches the agent)
/// and sends the agent, under that start's ids, an old signed start of a finished ticket, so the
/// agent answers it "complete, exit 0", signed. That answer names the old start, so the dispatcher ignores it
/// and asks again; the thief holding its one message, the start reaches the agent and runs.
/// (Without the binding: exit 0 for a script that never ran.)
async fn old_start_replayed_under_a_stolen_requests_ids(bench: &mut Bench) {
    let agent = TestAgent::start("stolen-start").await;
    // A start signed by the trusted dispatcher key (as a dispatcher's first request to an agent
    // is), run to its end: its bytes and seal, as a queue bound to the agent's routing key saw them.
    let at = now_ms();
    let bytes = start(agent.id(), &edge::entropy::ticket(), bench.markers.record("old"), at, Some(at + 60_000));
    let seal = keys().dispatcher.seal_command(&bytes);
    let id = bench.raw.publish_to(&agent_queue(agent.id()), "StartScriptV2", &bytes, Some(&seal)).await;
    bench.raw.reply(&id).await;
    eventually("the old start to run", Duration::from_secs(10), || async {
        (bench.markers.count("old") == 1).then_some(())
    })
    .await;
    let properties = lapin::BasicProperties::default().with_type("StartScriptV2".into());
    let old = Taken { data: bytes, properties: contracts::trust::amqp::with_seal(properties, &seal) };

    let mut thief = Thief::on(agent.id()).await;
    let script = format!("{}; echo genuine; exit 3", bench.markers.record("stolen-victim"));
    let victim = tokio::spawn(submit_owned(vec!["--target".into(), agent.id().into(), "--".into(), script]));
    let stolen = thief.stolen(Duration::from_secs(30)).await;
    publish_to_agent(agent.id(), &old.data, under_ids_of(&old.properties, &stolen)).await;
    let out = victim.await.unwrap();
    let stderr = text(&out.stderr);
    bench.row(
        "old start replayed to the agent under a stolen request's ids",
        out.status.code() == Some(3) && bench.markers.count("stolen-victim") == 1,
        format!("ignored (it names the old start); asked again, ran once, exit {}", out.status.code().unwrap_or(-1)),
    );
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(3), "genuine\n"), "{stderr}");
    assert!(
        stderr.contains("warning: ignored a forged answer") && stderr.contains("answers another message"),
        "{stderr}"
    );
    assert_eq!(bench.markers.count("stolen-victim"), 1, "ran once, when asked again");
    thief.stop().await;
    agent.stop().await;
}

async fn submit_owned(args: Vec<String>) -> Output {
    let output = dispatcher_command().arg("submit").args(&args).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("submit ends").expect("submit runs")
}

/// The same through `dispatcher serve`: the old start replayed is MAC'd in the service's own
/// session. The journal never records the stolen ticket as completed by the old one's answer:
/// the service asks again and records the script's own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_never_records_a_ticket_completed_by_an_answer_to_an_old_start() {
    let markers = Markers::new();
    let agent = TestAgent::start("stolen-service").await;
    let prefix = tests::service::journal_prefix("stolen");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let CommandCopies { connection, requests: mut copies, .. } = CommandCopies::of(agent.id()).await;
    let first = service.submit(agent.id(), "echo old").await;
    let first = service.finished(&first, Duration::from_secs(60)).await;
    assert_eq!((first["outcome"].as_str(), first["exit_code"].as_i64()), (Some("completed"), Some(0)), "{first}");
    let old = next_copy(&mut copies, "StartScriptV2").await;
    assert!(
        old.properties.headers().as_ref().is_some_and(|h| h.inner().contains_key(contracts::trust::seal::MAC_HEADER)),
        "MAC'd in the service's session"
    );
    let _ = connection.close(200, "done".into()).await;

    let mut thief = Thief::on(agent.id()).await;
    let ticket = service.submit(agent.id(), &format!("{}; echo genuine; exit 3", markers.record("victim"))).await;
    let stolen = thief.stolen(Duration::from_secs(30)).await;
    publish_to_agent(agent.id(), &old.data, under_ids_of(&old.properties, &stolen)).await;
    let record = service.finished(&ticket, Duration::from_secs(60)).await;
    assert_eq!((record["outcome"].as_str(), record["exit_code"].as_i64()), (Some("completed"), Some(3)), "{record}");
    assert_eq!(markers.count("victim"), 1, "the script ran, once");
    let metrics =
        tests::service::http().get(format!("{}/metrics", service.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("cuttle_forged_answers_ignored_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let journal = ["--journal", &redis_url(), "--journal-prefix", &prefix];
    let status = dispatcher_command().args(journal).args(["status", &ticket, "--json"]).output().await.unwrap();
    let events = text(&status.stdout);
    assert!(
        events.lines().any(|l| l.contains(r#""event":"warning""#) && l.contains("answers another message")),
        "the ignored answer is a warning of the ticket: {events}"
    );
    thief.stop().await;
    service.stop().await;
    tests::service::remove_journal(&prefix).await;
    agent.stop().await;
}

/// Answers of an agent of the release before (genuinely signed, naming no request) are believed
/// with a warning naming the risk; `--strict-answers` (and `CUTTLE_STRICT_ANSWERS`) refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_name_no_request_are_believed_with_a_warning_unless_strict() {
    let id = unique("pre-binding");
    let old_agent = Impostor::start(&id, Answerer::PreBinding).await;
    let out = submit(&["--target", &id, "--", "echo hi"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "believed: {stderr}");
    assert!(text(&out.stdout).contains(Impostor::OUTPUT));
    let warning = format!("warning: believing answers from agent {id} that do not name the request they answer");
    assert_eq!(stderr.matches(&warning).count(), 1, "warned once: {stderr}");
    assert!(stderr.contains("--strict-answers"), "{stderr}");

    let strict = dispatcher_command()
        .args(["--strict-answers", "submit", "--target", &id, "--retry-duration", "3s", "--", "echo hi"])
        .output();
    let by_env = dispatcher_command()
        .env("CUTTLE_STRICT_ANSWERS", "true")
        .args(["submit", "--target", &id, "--retry-duration", "3s", "--", "echo hi"])
        .output();
    for out in [strict.await.unwrap(), by_env.await.unwrap()] {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(110), "refused: no answer believed before the deadline: {stderr}");
        assert!(
            stderr.contains("does not name the request it answers") || stderr.contains("do not name the request"),
            "{stderr}"
        );
        assert!(stderr.contains("--strict-answers refuses such answers"), "{stderr}");
        assert!(!text(&out.stdout).contains(Impostor::OUTPUT));
    }
    old_agent.stop().await;
}

/// Quorum queues do not enforce an exclusive consumer: an agent that finds another consumer on
/// its own queue says so at start, and in `cuttle_queue_other_consumers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_another_consumer_on_its_own_queue() {
    let config = test_config("second-consumer");
    // The attacker is there first: it declares the queue as the agent does, and consumes.
    let thief = Thief::on_declared(&config.agent_id).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], services::free_port()));
    let mut command = AgentProcess::command(&config);
    command.args(["--health-addr", &addr.to_string()]);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    let log = eventually("the agent to report the other consumer", Duration::from_secs(20), || async {
        let log = agent.log_text();
        log.contains("another consumer reads this agent's own queue").then_some(log)
    })
    .await;
    assert!(log.contains("others=1"), "{log}");
    let scrape =
        tests::service::http().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(scrape.lines().any(|l| l == "cuttle_queue_other_consumers 1"), "{scrape}");
    thief.stop().await;
    agent.stop().await;
}

/// A long-running dispatcher (`dispatcher serve`) keeps a session with each agent. An agent that
/// restarts has forgotten it: it refuses the first command MAC'd in it (nothing runs), and the
/// dispatcher sends that command again, signed, offering a new session. The script runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_refuses_its_forgotten_session_and_the_service_signs_again() {
    let markers = Markers::new();
    let mut agent = AgentProcess::start(test_config("session-restart")).await;
    let id = agent.config.agent_id.clone();
    let prefix = tests::service::journal_prefix("sessions");
    let service = ServiceProcess::start(&prefix, &[]).await;
    let run = |name: &str| {
        let script = markers.record(name);
        let (service, id) = (&service, &id);
        async move {
            let ticket = service.submit(id, &script).await;
            service.finished(&ticket, Duration::from_secs(60)).await
        }
    };
    let first = run("before-restart").await;
    assert_eq!((first["outcome"].as_str(), first["exit_code"].as_i64()), (Some("completed"), Some(0)), "{first}");
    // The first script's complete (sent without waiting for an answer) taken before the restart.
    let queue = contracts::wire::topology::agent_queue(&id);
    eventually("the agent's queue to be empty", Duration::from_secs(20), || async {
        (tests::raw::queue_depth(&queue).await == 0).then_some(())
    })
    .await;
    agent.kill().await;
    agent.restart().await;
    let second = run("after-restart").await;
    assert_eq!((second["outcome"].as_str(), second["exit_code"].as_i64()), (Some("completed"), Some(0)), "{second}");
    assert_eq!((markers.count("before-restart"), markers.count("after-restart")), (1, 1), "each ran once");
    let log = agent.log_text();
    let refused = log.lines().find(|l| l.contains("command refused") && l.contains("is not one this agent holds"));
    assert!(
        refused.is_some_and(|line| line.contains("StartScriptV2")),
        "the start MAC'd in the forgotten session was refused, then sent again signed:\n{log}"
    );
    service.stop().await;
    tests::service::remove_journal(&prefix).await;
    agent.stop().await;
}

/// Someone holding the broker's credentials captures one signed command offering a session (a
/// dispatcher's first request to an agent) and publishes copies of it to the agent, more copies
/// than the agent holds sessions of one key. The first delivery agrees a session; every copy is
/// answered (a capabilities request is harmless to repeat) signed and without a share, so no copy
/// creates a session, and the session the same dispatcher key agreed before still works: a
/// command MAC'd in it is answered in it, not refused `UnknownSession`. (Before, each copy made a
/// session and the oldest were evicted: a `dispatcher serve` lost its session to replays.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_session_offer_creates_no_session_and_evicts_none() {
    let agent = AgentProcess::start(test_config("replayed-offer")).await;
    let id = agent.config.agent_id.clone();
    let queue = agent_queue(&id);
    let mut raw = RawBroker::connect().await;
    let existing = agree_session(&mut raw, &id, &keys().dispatcher).await;

    let (_, _, captured) = offering_capabilities(&id);
    let seal = keys().dispatcher.seal_command(&captured);
    let key_share = |body: &[u8]| {
        let (header, reply) = Reply::decode_with_header(body).expect("an answer");
        assert!(matches!(reply, Reply::Capabilities(_)), "answered as any capabilities request: {reply:?}");
        header.key_share
    };
    let first = raw.publish_to(&queue, "GetCapabilities", &captured, Some(&seal)).await;
    let (_, body) = raw.sealed_reply(&first).await;
    assert!(key_share(&body).is_some(), "the genuine offer is accepted");
    let copies = contracts::trust::sessions::MAX_SESSIONS_PER_KEY + 100;
    let mut replayed = Vec::with_capacity(copies);
    for _ in 0..copies {
        replayed.push(raw.publish_to(&queue, "GetCapabilities", &captured, Some(&seal)).await);
    }
    let pin = Pin::Keys(vec![*keys().agent.public()]);
    for (copy, (seal, body)) in replayed.iter().zip(raw.sealed_replies(&replayed).await) {
        let believed = contracts::trust::verify::check_answer(&pin, copy, seal, &body, None);
        assert!(believed.is_ok(), "answered signed by the agent: {believed:?}");
        assert_eq!(key_share(&body), None, "a copy of an accepted offer agrees no session");
    }

    let capabilities = Request::GetCapabilities(GetCapabilities {});
    let (_, bytes) =
        capabilities.encode(&id, now_ms(), Some(now_ms() + 60_000), &mut edge::entropy::OsEntropy).unwrap();
    let asked = raw.publish_to(&queue, "GetCapabilities", &bytes, Some(&existing.seal_command(&bytes))).await;
    let (seal, body) = raw.sealed_reply(&asked).await;
    let reply = Reply::decode(&body).expect("an answer");
    assert!(matches!(reply, Reply::Capabilities(_)), "the session agreed before the replays still holds: {reply:?}");
    let believed = contracts::trust::verify::check_answer(&pin, &asked, seal, &body, Some(&existing));
    assert!(believed.is_ok(), "answered in that session: {believed:?}");
    assert!(agent.log_text().contains("this offer was accepted before"), "the replays are logged");
    raw.close().await;
    agent.stop().await;
}

/// A queue bound to an agent's routing key (what a pool worker's user can make: docs/security.md,
/// "Least privilege on the broker") gets a copy of each of its commands. The secrets in a start are sealed to the
/// agent's key, so the copy holds their names only; the agent opens them and the script gets
/// them. Secrets sealed to one key open at no agent of another: refused, nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_to_the_agent_so_a_copy_of_its_start_holds_no_value() {
    use futures_util::StreamExt;
    let agent = TestAgent::start("sealed").await;
    let CommandCopies { connection, requests: mut copies, .. } = CommandCopies::of(agent.id()).await;

    let value = "sealed-value-0c2f9a";
    let markers = Markers::new();
    let expected = markers.dir.join("expected");
    std::fs::write(&expected, value).unwrap();
    let script = format!(r#"test "$TOKEN" = "$(cat {})" && echo the script got it"#, expected.display());
    let secret = format!("TOKEN={value}");
    let out = run_dispatcher(&["submit", "--target", agent.id(), "--secret-env", &secret, "--", &script]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "the script got it\n");
    let copy = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let delivery = copies.next().await.expect("the copies' consumer").expect("a delivery");
            if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some("StartScriptV2") {
                break delivery.data;
            }
        }
    })
    .await
    .expect("a copy of the start");
    assert!(!copy.windows(value.len()).any(|w| w == value.as_bytes()), "the value is readable in the copy");
    let Ok((_, Request::StartScriptV2(start))) = Request::decode(&copy) else { panic!("a start") };
    assert!(start.spec.secret_env.is_empty(), "no secret in clear");
    let sealed_to: Vec<&str> = start.spec.sealed_secret_env.iter().map(|copy| copy.key.as_str()).collect();
    assert_eq!(sealed_to, vec![keys().agent.id().to_string()], "sealed to the agent's key only");
    let _ = connection.close(200, "done".into()).await;

    // The same secrets, in a start signed by the trusted dispatcher key, to an agent of another key.
    let (_, other_key) = keypair("sealed-other");
    let mut config = test_config("sealed-other");
    config.key_file = Some(other_key);
    let other = TestAgent::start_with(config).await;
    let ticket = edge::entropy::ticket();
    let mut spec = sh(markers.record("opened"));
    spec.sealed_secret_env = start.spec.sealed_secret_env.clone();
    let body = StartScriptV2 { ticket: ticket.clone(), spec, wait_for_output: None, first_issued_at: None };
    let at = now_ms();
    let bytes = Request::StartScriptV2(body)
        .encode(other.id(), at, Some(at + 60_000), &mut edge::entropy::OsEntropy)
        .unwrap()
        .1;
    let mut raw = RawBroker::connect().await;
    let id = raw
        .publish_to(&agent_queue(other.id()), "StartScriptV2", &bytes, Some(&keys().dispatcher.seal_command(&bytes)))
        .await;
    let Reply::Error(refused) = raw.reply(&id).await else { panic!("secrets sealed to another key were opened") };
    assert_eq!(refused.kind, ErrorKind::NotAuthorized, "{}", refused.message);
    assert!(refused.message.contains("sealed to key(s)"), "{}", refused.message);
    assert_eq!(markers.count("opened"), 0, "nothing ran");
    raw.close().await;
    other.stop().await;
    agent.stop().await;
}
