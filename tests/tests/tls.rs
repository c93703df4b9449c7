//! TLS to the broker (`amqps://`, client certificates and EXTERNAL login) and to the ticket store
//! (`rediss://`), and Redis ACL users: each through the real binaries, against listeners the test
//! starts with certificates it makes.

use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tests::agent::test_config;
use tests::services::{free_port, PrivateRabbit, PrivateRedis};
use tests::tls::{Issued, TestCa};
use tests::{dispatcher_command, eventually, text, AgentProcess};

/// How a test gives the TLS files to a binary.
#[derive(Clone, Copy)]
enum Given {
    /// `CUTTLE_<SERVICE>_CA_FILE`, `_CLIENT_CERT`, `_CLIENT_KEY`.
    Env,
    /// `--<service>-ca-file`, `-client-cert`, `-client-key`.
    Flags,
}

/// Gives `command` the CA and client certificate for `service` (`amqp`, `redis`).
fn certificates<'a>(
    command: &'a mut tokio::process::Command,
    given: Given,
    service: &str,
    ca: &Path,
    client: &Issued,
) -> &'a mut tokio::process::Command {
    for (name, file) in [("ca-file", ca), ("client-cert", &client.cert), ("client-key", &client.key)] {
        match given {
            Given::Flags => command.arg(format!("--{service}-{name}")).arg(file),
            Given::Env => command.env(format!("CUTTLE_{service}_{name}").to_uppercase().replace('-', "_"), file),
        };
    }
    command
}

/// `dispatcher submit` of `echo WORD` on `agent` with `command` (a dispatcher with its settings).
async fn submit_with(mut command: tokio::process::Command, agent: &str, word: &str) -> Output {
    let output = command.args(["submit", "--target", agent, "--", &format!("echo {word}")]).output();
    tokio::time::timeout(Duration::from_secs(60), output).await.expect("dispatcher finishes").expect("dispatcher runs")
}

async fn log_shows(agent: &AgentProcess, what: &'static str) {
    eventually(what, Duration::from_secs(20), || async { agent.log_text().contains(what).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_over_tls_to_broker_and_store_with_client_certificates_and_a_wrong_ca_is_refused() {
    tests::skip_unless!(tests::needs::private_rabbit(), tests::needs::private_redis());
    let ca = TestCa::new("cuttle-test-ca");
    let server = ca.server("localhost");
    let (rabbit, tls_port) = PrivateRabbit::start_tls(&ca, &server).await;
    let redis = PrivateRedis::start_tls(&ca, &server).await;
    let amqps = format!("amqps://localhost:{tls_port}/%2f");

    let mut config = test_config("tls");
    config.amqp_url = amqps.clone();
    config.redis_url = format!("rediss://localhost:{}", redis.port);
    let agent_cert = ca.client(&config.agent_id);
    rabbit.add_certificate_user(&config.agent_id);
    let dispatcher_cert = ca.client("cuttle-dispatcher");
    rabbit.add_certificate_user("cuttle-dispatcher");
    let mut command = AgentProcess::command(&config);
    certificates(&mut command, Given::Env, "amqp", &ca.cert, &agent_cert);
    certificates(&mut command, Given::Env, "redis", &ca.cert, &agent_cert);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;

    let mut command = dispatcher_command();
    certificates(&mut command, Given::Env, "amqp", &ca.cert, &dispatcher_cert).env("CUTTLE_AMQP_URL", &amqps);
    let out = submit_with(command, &config.agent_id, "over-tls").await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("over-tls"), "{}", text(&out.stdout));
    // Both logged in with their certificates, over TLS.
    let connections = rabbit.query(&["-q", "--no-table-headers", "list_connections", "user", "ssl", "auth_mechanism"]);
    assert!(
        connections.lines().any(|l| l.contains(&config.agent_id) && l.contains("true") && l.contains("EXTERNAL")),
        "{connections}"
    );
    // The ticket went through the TLS store.
    let keys = redis.cli(&["keys", &format!("{}*", config.key_prefix)]);
    assert!(!keys.trim().is_empty(), "no ticket keys in the TLS store");

    // A dispatcher trusting another CA (given as flags, which beat the variables) is refused at
    // once, as the broker refusing it is (101).
    let wrong = TestCa::new("not-the-ca");
    let started = std::time::Instant::now();
    let mut command = dispatcher_command();
    certificates(&mut command, Given::Env, "amqp", &ca.cert, &dispatcher_cert).env("CUTTLE_AMQP_URL", &amqps);
    certificates(&mut command, Given::Flags, "amqp", &wrong.cert, &dispatcher_cert);
    let out = submit_with(command, &config.agent_id, "never").await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "{stderr}");
    assert!(stderr.contains("certificate is not trusted") && stderr.contains("CA file"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "refused at once, not retried: {:?}", started.elapsed());

    // An agent trusting another CA says why it cannot connect, to the broker and to the store.
    let mut bad = test_config("tls-wrong-ca");
    bad.amqp_url = amqps.clone();
    bad.redis_url = format!("rediss://localhost:{}", redis.port);
    let mut command = AgentProcess::command(&bad);
    certificates(&mut command, Given::Env, "amqp", &wrong.cert, &agent_cert);
    certificates(&mut command, Given::Env, "redis", &wrong.cert, &agent_cert);
    let bad_agent = AgentProcess::spawn_command(bad.clone(), command);
    log_shows(&bad_agent, "TLS handshake with the ticket store failed").await;
    assert!(bad_agent.log_text().contains("certificate is not trusted"), "{}", bad_agent.log_text());
    assert!(!bad_agent.log_text().contains("consuming commands"));
    bad_agent.stop().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_trusting_another_ca_exits_78_naming_the_broker_certificate_as_the_reason() {
    tests::skip_unless!(tests::needs::private_rabbit());
    let ca = TestCa::new("cuttle-test-ca");
    let server = ca.server("localhost");
    let (rabbit, tls_port) = PrivateRabbit::start_tls(&ca, &server).await;
    let wrong = TestCa::new("not-the-ca");
    let config = test_config("tls-wrong-broker-ca");
    let client = ca.client(&config.agent_id);
    rabbit.add_certificate_user(&config.agent_id);
    let mut bad = config.clone();
    bad.amqp_url = format!("amqps://localhost:{tls_port}/%2f");
    let mut command = AgentProcess::command(&bad);
    certificates(&mut command, Given::Flags, "amqp", &wrong.cert, &client);
    let agent = AgentProcess::spawn_command(bad, command);
    let log = exits_78_naming(agent, "the broker").await;
    assert_eq!(log.matches("TLS handshake with the broker failed").count(), 2, "not retried: {log}");
}

/// Waits for `agent` to exit by itself with 78, its last line naming the certificate of `service`
/// as not trusted, having consumed nothing: its log.
async fn exits_78_naming(mut agent: AgentProcess, service: &str) -> String {
    // A setting to fix, not an outage: it exits at once instead of retrying forever.
    let status = tokio::time::timeout(Duration::from_secs(30), agent.wait()).await.expect("the agent exits by itself");
    let log = agent.log_text();
    assert_eq!(status.code(), Some(i32::from(worker_agent::EXIT_SETTING)), "{log}");
    assert_eq!(worker_agent::EXIT_SETTING, 78);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("worker-agent: TLS handshake with {service} failed"))
            && last.contains("certificate is not trusted: check the CA file"),
        "{log}"
    );
    assert!(!log.contains("consuming commands"));
    agent.stop().await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_trusting_another_ca_exits_78_naming_the_store_certificate_as_the_reason() {
    tests::skip_unless!(tests::needs::private_redis());
    let ca = TestCa::new("cuttle-test-ca");
    let server = ca.server("localhost");
    let redis = PrivateRedis::start_tls(&ca, &server).await;
    let wrong = TestCa::new("not-the-ca");
    let mut config = test_config("tls-wrong-store-ca");
    config.redis_url = format!("rediss://localhost:{}", redis.port);
    let client = ca.client(&config.agent_id);
    let mut command = AgentProcess::command(&config);
    certificates(&mut command, Given::Flags, "redis", &wrong.cert, &client);
    let agent = AgentProcess::spawn_command(config, command);
    let log = exits_78_naming(agent, "the ticket store").await;
    assert_eq!(log.matches("the ticket store's certificate is not trusted").count(), 1, "not retried: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_acl_user_limited_to_the_key_prefix_holds_the_tickets() {
    tests::skip_unless!(tests::needs::private_redis());
    let redis = PrivateRedis::start(false).await;
    let mut config = test_config("acl");
    let user = config.agent_id.clone();
    let acl = redis.cli(&["acl", "setuser", &user, "on", ">s3cret-pass", &format!("~{}*", config.key_prefix), "+@all"]);
    assert_eq!(acl.trim(), "OK");
    config.redis_url = format!("redis://{user}:s3cret-pass@127.0.0.1:{}", redis.port);
    let agent = AgentProcess::start(config.clone()).await;
    let out =
        tests::run_dispatcher(&["submit", "--json", "--target", &config.agent_id, "--", "echo as-acl-user"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("as-acl-user"));
    // The user has no pub/sub channel (Redis 7 gives new users none): cancels still go through
    // the store (this one, of the ended script, is flagged there and published in vain), and the
    // agent says that it cannot follow cancel notices.
    let ticket: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let ticket = ticket["ticket"].as_str().expect("the ticket event first");
    let out = tests::run_dispatcher(&["cancel", ticket, "--target", &config.agent_id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the script had already ended"), "{}", text(&out.stderr));
    assert!(agent.log_text().contains("may not subscribe to cancel notices"), "{}", agent.log_text());
    agent.stop().await;

    // A wrong password is named as the reason.
    let mut wrong = test_config("acl-wrong");
    wrong.redis_url = format!("redis://{user}:not-it@127.0.0.1:{}", redis.port);
    let agent = AgentProcess::spawn_command(wrong.clone(), AgentProcess::command(&wrong));
    log_shows(&agent, "cannot reach the ticket store").await;
    assert!(agent.log_text().contains("Password authentication failed"), "{}", agent.log_text());
    agent.stop().await;
}

/// A Redis Sentinel of the test's own that speaks only TLS, to its clients and to the master it
/// watches, with `server`'s certificate (and a client certificate of `ca`'s for the master).
struct TlsSentinel {
    port: u16,
    dir: std::path::PathBuf,
    cli: Vec<String>,
}

impl TlsSentinel {
    async fn start(ca: &TestCa, server: &Issued, service: &str, master_port: u16) -> TlsSentinel {
        let dir = std::env::temp_dir().join(tests::unique("tls-sentinel"));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, client) = (free_port(), ca.client("sentinel"));
        let config = format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndaemonize yes\ndir {dir}\n\
             tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-client-cert-file {ccert}\ntls-client-key-file {ckey}\ntls-replication yes\n\
             sentinel monitor {service} 127.0.0.1 {master_port} 1\n",
            dir = dir.display(),
            cert = server.cert.display(),
            key = server.key.display(),
            ca = ca.cert.display(),
            ccert = client.cert.display(),
            ckey = client.key.display(),
        );
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, config).unwrap();
        let status = std::process::Command::new("redis-server").arg(&file).arg("--sentinel").status().unwrap();
        assert!(status.success(), "the sentinel starts");
        let cli = ["--tls", "--cacert", &ca.cert.display().to_string()]
            .into_iter()
            .map(String::from)
            .chain([
                "--cert".into(),
                client.cert.display().to_string(),
                "--key".into(),
                client.key.display().to_string(),
            ])
            .collect();
        let sentinel = TlsSentinel { port, dir, cli };
        // Up once it reaches the master over TLS: `flags` is then `master` alone.
        eventually("the TLS sentinel to see the master", Duration::from_secs(20), || async {
            let master = sentinel.cli(&["sentinel", "master", service]);
            master.lines().skip_while(|l| *l != "flags").nth(1).is_some_and(|f| f == "master").then_some(())
        })
        .await;
        sentinel
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(&self.cli)
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout)
    }
}

impl Drop for TlsSentinel {
    fn drop(&mut self) {
        self.cli(&["shutdown", "nosave"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_found_through_sentinels_is_reached_with_tls_given_as_flags() {
    tests::skip_unless!(tests::needs::private_redis());
    let ca = TestCa::new("cuttle-test-ca");
    let server = ca.server("localhost");
    let redis = PrivateRedis::start_tls(&ca, &server).await;
    let service = tests::unique("tls-service");
    let sentinel = TlsSentinel::start(&ca, &server, &service, redis.port).await;

    let mut config = test_config("tls-sentinel");
    config.redis_url = "rediss://127.0.0.1".into();
    config.redis_sentinels = vec![format!("127.0.0.1:{}", sentinel.port)];
    config.redis_service = service;
    let client = ca.client(&config.agent_id);
    let mut command = AgentProcess::command(&config);
    certificates(&mut command, Given::Flags, "redis", &ca.cert, &client);
    let agent = AgentProcess::spawn_command(config.clone(), command);
    agent.wait_ready().await;
    assert!(agent.log_text().contains("connected to the redis master named by the sentinels"), "{}", agent.log_text());
    let out = tests::run_dispatcher(&["submit", "--target", &config.agent_id, "--", "echo via-tls-sentinel"]).await;
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("via-tls-sentinel"));
    let keys = redis.cli(&["keys", &format!("{}*", config.key_prefix)]);
    assert!(!keys.trim().is_empty(), "no ticket keys in the TLS master");
    agent.stop().await;
}
