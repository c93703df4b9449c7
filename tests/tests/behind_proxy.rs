//! Agents and dispatchers behind an HTTP proxy, a WebSocket relay or port 443, against a real
//! proxy (tinyproxy), relay (websockify) and TLS router (HAProxy). The agents that must use the
//! proxy run in a network namespace from which nothing but the proxy can be reached, so a script
//! that runs proves the path.

use contracts::submission::retry::RetryPolicy;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tests::agent::test_config;
use tests::proxy::broker_addr;
use tests::relays::{silent_listener, Haproxy, Namespace, Port443, ProxySetup, Tinyproxy, Websockify};
use tests::services::{free_port, PrivateRabbit};
use tests::tls::TestCa;
use tests::{eventually, needs, sh, skip_unless, AgentProcess, Markers, TestAgent};
use worker_agent::config::StoreKind;

/// Scripts submitted while `fault` is done to the agent's only way to the broker, twice: each
/// runs exactly once and succeeds.
async fn each_runs_once_through<F, Fut>(agent_id: &str, mut fault: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let orchestrator = tests::orchestrator().await;
    let route = dispatcher::route::Route::agent(agent_id).expect("an agent id");
    let markers = Markers::new();
    let mut submissions = Vec::new();
    for n in 0..12 {
        let script = format!("{}; sleep 0.2; echo done {n}", markers.record(&format!("script-{n}")));
        let (orchestrator, route) = (orchestrator.clone(), route.clone());
        submissions.push(tokio::spawn(async move {
            let policy = RetryPolicy::new(Duration::from_secs(60));
            orchestrator.submit(&route, sh(script), policy, &|_| {}, &Default::default()).await
        }));
        if n % 4 == 3 {
            // Some scripts running or sent while the way is cut, some sent after.
            tokio::time::sleep(Duration::from_millis(200)).await;
            fault().await;
        }
    }
    for (n, submission) in submissions.into_iter().enumerate() {
        let outcome = submission.await.expect("the submission ends");
        assert_eq!(outcome.exit_code, Some(0), "script {n}: {outcome:?}");
        assert_eq!(markers.count(&format!("script-{n}")), 1, "script {n} ran exactly once");
    }
}

/// `host:port` of the test broker, as a proxy is asked to tunnel to it.
fn broker_target() -> String {
    broker_addr().to_string()
}

#[tokio::test]
async fn an_agent_that_can_reach_only_a_proxy_runs_scripts_once_each_while_the_proxy_restarts() {
    skip_unless!(needs::relays(), needs::namespaces());
    let namespace = Namespace::create();
    let proxy = Tinyproxy::start(ProxySetup { listen: IpAddr::V4(namespace.host), ..Default::default() }).await;
    // The proof that the path is the proxy's: from inside, the broker cannot be reached.
    let broker = broker_addr();
    let reach = format!("exec 3<>/dev/tcp/{}/{}", broker.ip(), broker.port());
    let direct = std::process::Command::new("ip")
        .args(["netns", "exec", &namespace.name, "bash", "-c", &reach])
        .output()
        .expect("bash runs");
    assert!(!direct.status.success(), "the broker must not be reachable from the namespace");

    let mut config = test_config("via-proxy");
    config.store = StoreKind::Local;
    let mut command = AgentProcess::command_via(&namespace.launcher(), &config);
    command.args(["--proxy", &proxy.url()]);
    let agent = AgentProcess::spawn_command(config, command);
    agent.wait_ready().await;
    let tunnels = proxy.tunnels_to(&broker_target());
    assert!(tunnels >= 1, "the proxy's log shows the tunnel: {}", proxy.log_text());

    each_runs_once_through(&agent.config.agent_id, || proxy.restart()).await;
    assert!(
        proxy.tunnels_to(&broker_target()) > tunnels,
        "the agent came back through the proxy by itself: {}",
        proxy.log_text()
    );
    assert!(agent.log_text().contains("reconnecting"), "{}", agent.log_text());
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_given_only_a_wss_url_runs_scripts_once_each_while_the_relay_drops_its_connections() {
    skip_unless!(needs::relays());
    let ca = TestCa::new("relay");
    let relay = Websockify::start(broker_addr(), &ca.server("relay")).await;
    let mut config = test_config("via-relay");
    // The agent knows no broker address at all, only the relay's.
    config.amqp_url = relay.broker_url();
    // Given as a flag below; set here too for the cleanup, which reaches the broker the same way.
    config.amqp_tls = ca.trusted();
    let agent = AgentProcess::start_with(config, &["--amqp-ca-file", ca.cert.to_str().unwrap()], &[]).await;
    let relayed = relay.connections();
    assert!(relayed >= 1, "the relay's log shows the connection: {}", relay.log_text());

    each_runs_once_through(&agent.config.agent_id, || relay.restart()).await;
    assert!(relay.connections() > relayed, "the agent came back through the relay: {}", relay.log_text());
    assert!(agent.log_text().contains("reconnecting"), "{}", agent.log_text());
    agent.stop().await;
}

/// `dispatcher health --no-retries` of `agent`, with `args` and `env` besides: the exit code,
/// what it wrote (stdout, where it reports each agent, then stderr), and how long it took.
async fn health(agent: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, Duration) {
    let began = Instant::now();
    let mut command = tests::dispatcher_command();
    command.args(["health", "--no-retries"]).args(args).arg(agent).envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(60), command.output()).await.expect("ends").expect("runs");
    (out.status.code(), tests::text(&out.stdout) + &tests::text(&out.stderr), began.elapsed())
}

#[tokio::test]
async fn the_dispatcher_uses_the_proxy_it_is_given_or_the_environment_names_except_for_no_proxy_hosts() {
    skip_unless!(needs::relays());
    let agent = TestAgent::start("proxied-dispatcher").await;
    let proxy = Tinyproxy::start(ProxySetup::default()).await;
    let target = broker_target();

    let (code, stderr, _) = health(agent.id(), &["--proxy", &proxy.url()], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let by_flag = proxy.tunnels_to(&target);
    assert!(by_flag >= 1, "--proxy: {}", proxy.log_text());

    let (code, stderr, _) = health(agent.id(), &[], &[("CUTTLE_PROXY", &proxy.url())]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let by_cuttle_proxy = proxy.tunnels_to(&target);
    assert!(by_cuttle_proxy > by_flag, "CUTTLE_PROXY: {}", proxy.log_text());

    let mut tunnels = by_cuttle_proxy;
    for variable in ["ALL_PROXY", "all_proxy"] {
        let (code, stderr, _) = health(agent.id(), &[], &[(variable, &proxy.url())]).await;
        assert_eq!(code, Some(0), "{stderr}");
        let now = proxy.tunnels_to(&target);
        assert!(now > tunnels, "{variable}: {}", proxy.log_text());
        tunnels = now;
    }

    // NO_PROXY names the broker: reached directly, though the proxy set would never answer.
    let (silent, _task) = silent_listener().await;
    let silent_url = format!("http://{silent}");
    let no_proxy = broker_addr().ip().to_string();
    for variable in ["NO_PROXY", "no_proxy"] {
        let (code, stderr, _) =
            health(agent.id(), &["--proxy", &silent_url, "--connect-timeout", "2s"], &[(variable, &no_proxy)]).await;
        assert_eq!(code, Some(0), "{variable}={no_proxy}: {stderr}");
    }

    // A wss:// broker URL goes through HTTPS_PROXY to the relay, TLS and all.
    let ca = TestCa::new("relay-proxy");
    let relay = Websockify::start(broker_addr(), &ca.server("relay")).await;
    let relay_target = format!("localhost:{}", relay.port);
    for (n, variable) in ["HTTPS_PROXY", "https_proxy"].into_iter().enumerate() {
        let (code, stderr, _) = health(
            agent.id(),
            &["--amqp-ca-file", ca.cert.to_str().unwrap()],
            &[("CUTTLE_AMQP_URL", &relay.broker_url()), (variable, &proxy.url())],
        )
        .await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(proxy.tunnels_to(&relay_target) > n, "{variable}: {}", proxy.log_text());
    }
    assert!(relay.connections() >= 2, "{}", relay.log_text());
    // A relay whose certificate is not trusted is a refusal, as the broker's would be.
    let (code, stderr, _) = health(agent.id(), &[], &[("CUTTLE_AMQP_URL", &relay.broker_url())]).await;
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains("the broker refused the connection: TLS handshake failed"), "{stderr}");
    agent.stop().await;
}

#[tokio::test]
async fn a_proxy_that_refuses_or_never_answers_is_a_clear_error_within_the_connect_timeout() {
    skip_unless!(needs::relays());
    let agent = TestAgent::start("refused-by-proxy").await;
    let password = "s3cret-proxy-word";
    let locked =
        Tinyproxy::start(ProxySetup { basic_auth: Some(("alice".into(), password.into())), ..Default::default() })
            .await;
    let dir = std::env::temp_dir().join(tests::unique("proxy-credentials"));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    std::fs::write(&good, format!("alice:{password}\n")).unwrap();
    std::fs::write(&bad, "alice:wrong\n").unwrap();
    let good_path = good.to_str().unwrap();

    let (code, stderr, _) = health(agent.id(), &["--proxy", &locked.url()], &[]).await;
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains("asks for credentials (407)") && stderr.contains("--proxy-credentials"), "{stderr}");

    let (code, stderr, _) =
        health(agent.id(), &["--proxy", &locked.url(), "--proxy-credentials", bad.to_str().unwrap()], &[]).await;
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains("refused the ones given"), "{stderr}");

    let (code, stderr, _) =
        health(agent.id(), &["--proxy", &locked.url(), "--proxy-credentials", good_path], &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr, _) =
        health(agent.id(), &["--proxy", &locked.url()], &[("CUTTLE_PROXY_CREDENTIALS", good_path)]).await;
    assert_eq!(code, Some(0), "CUTTLE_PROXY_CREDENTIALS: {stderr}");
    let with_password = format!("http://alice:{password}@{}", locked.addr);
    let env = [("CUTTLE_PROXY", with_password.as_str()), ("RUST_LOG", "debug")];
    let (code, stderr, _) = health(agent.id(), &[], &env).await;
    assert_eq!(code, Some(0), "CUTTLE_PROXY with the password in its URL: {stderr}");
    assert!(!stderr.contains(password), "the password is never shown: {stderr}");

    // On the command line, a password is refused before anything is tried.
    let (code, stderr, _) = health(agent.id(), &["--proxy", &with_password], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("must not carry a password") && !stderr.contains(password), "{stderr}");

    // A proxy that lets CONNECT reach only 443.
    let only_443 = Tinyproxy::start(ProxySetup { connect_ports: vec![443], ..Default::default() }).await;
    let (code, stderr, _) = health(agent.id(), &["--proxy", &only_443.url()], &[]).await;
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains(&format!("forbids a tunnel to {} (403", broker_target())), "{stderr}");

    // A proxy that accepts the connection and never answers.
    let (silent, _task) = silent_listener().await;
    let silent_url = format!("http://{silent}");
    let (code, stderr, took) = health(agent.id(), &["--proxy", &silent_url, "--connect-timeout", "2s"], &[]).await;
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains(&format!("no answer through the proxy {silent_url} within 2s")), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // Ctrl-C while waiting on it is acted on at once.
    let mut child = tests::dispatcher_command()
        .args(["health", "--proxy", &silent_url, "--connect-timeout", "60s", agent.id()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let interrupted = Instant::now();
    tests::sigint(&child);
    let ended = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    assert!(ended.is_ok(), "Ctrl-C ends the wait at once");
    assert!(interrupted.elapsed() < Duration::from_secs(3));
    let _ = std::fs::remove_dir_all(&dir);
    agent.stop().await;
}

#[tokio::test]
async fn an_agent_refused_by_its_proxy_stops_with_exit_78_and_says_why_without_the_password() {
    skip_unless!(needs::relays());
    let password = "agent-proxy-word";
    let proxy =
        Tinyproxy::start(ProxySetup { basic_auth: Some(("alice".into(), password.into())), ..Default::default() })
            .await;
    let config = test_config("agent-refused");
    let mut command = AgentProcess::command(&config);
    let wrong = format!("http://alice:not-{password}@{}", proxy.addr);
    command.env("CUTTLE_PROXY", &wrong);
    let began = Instant::now();
    let mut agent = AgentProcess::spawn_command(config, command);
    let status = tokio::time::timeout(Duration::from_secs(20), agent.wait()).await.expect("the agent stops");
    assert_eq!(status.code(), Some(78), "{}", agent.log_text());
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    let log = agent.log_text();
    assert!(log.contains("refused the ones given") && log.contains("a setting to fix"), "{log}");
    assert!(!log.contains(password), "the password is never logged: {log}");
    assert!(log.contains("use --store local"), "the store notice: {log}");
    agent.stop().await;

    // The same refusal of credentials from a file.
    let wrong_file = std::env::temp_dir().join(tests::unique("wrong-credentials"));
    std::fs::write(&wrong_file, "alice:wrong\n").unwrap();
    let config = test_config("agent-refused-file");
    let mut command = AgentProcess::command(&config);
    command.args(["--proxy", &proxy.url(), "--proxy-credentials", wrong_file.to_str().unwrap()]);
    let mut agent = AgentProcess::spawn_command(config, command);
    let status = tokio::time::timeout(Duration::from_secs(20), agent.wait()).await.expect("the agent stops");
    assert_eq!(status.code(), Some(78), "{}", agent.log_text());
    assert!(agent.log_text().contains("refused the ones given"), "{}", agent.log_text());
    agent.stop().await;
    let _ = std::fs::remove_file(&wrong_file);

    // One that never answers: said so, and tried again.
    let (silent, _task) = silent_listener().await;
    let config = test_config("agent-silent-proxy");
    let mut command = AgentProcess::command(&config);
    command.args(["--proxy", &format!("http://{silent}")]);
    let agent = AgentProcess::spawn_command(config, command);
    let expected = format!("no answer through the proxy http://{silent} within 5s");
    eventually("the agent to say the proxy does not answer", Duration::from_secs(20), || async {
        agent.log_text().contains(&expected).then_some(())
    })
    .await;
    agent.stop().await;
}

/// `deploy/rabbitmq/port-443.conf` with the test CA's files in place of the ones it names.
fn shipped_port_443_settings(ca: &TestCa, server: &tests::tls::Issued) -> String {
    let text = std::fs::read_to_string(tests::repo().join("deploy/rabbitmq/port-443.conf")).expect("the shipped file");
    assert!(text.contains("listeners.ssl.default = 443"), "{text}");
    text.replace("/etc/rabbitmq/tls/ca.pem", ca.cert.to_str().unwrap())
        .replace("/etc/rabbitmq/tls/server.pem", server.cert.to_str().unwrap())
        .replace("/etc/rabbitmq/tls/server.key", server.key.to_str().unwrap())
}

#[tokio::test]
async fn an_agent_behind_a_proxy_that_lets_out_only_443_reaches_a_broker_listening_on_443() {
    skip_unless!(needs::relays(), needs::namespaces(), needs::private_rabbit());
    let _port = Port443::take().await;
    let ca = TestCa::new("port-443");
    let server = ca.server("broker");
    let rabbit = PrivateRabbit::start_tls_with(&shipped_port_443_settings(&ca, &server), "[].\n", 443).await;
    let namespace = Namespace::create();
    let proxy = Tinyproxy::start(ProxySetup {
        listen: IpAddr::V4(namespace.host),
        connect_ports: vec![443],
        ..Default::default()
    })
    .await;
    let mut config = test_config("port-443");
    config.store = StoreKind::Local;
    config.amqp_url = "amqps://guest:guest@localhost:443/%2f".into();
    config.amqp_tls = ca.trusted();
    let mut command = AgentProcess::command_via(&namespace.launcher(), &config);
    command.args(["--proxy", &proxy.url(), "--amqp-ca-file", ca.cert.to_str().unwrap()]);
    let agent = AgentProcess::spawn_command(config, command);
    agent.wait_ready().await;
    assert!(proxy.tunnels_to("localhost:443") >= 1, "{}", proxy.log_text());

    let orchestrator = orchestrator_at("amqps://guest:guest@localhost:443/%2f", &ca).await;
    let route = agent_route(&agent);
    let (outcome, lines) = tests::submit(&orchestrator, &route, sh("echo over 443")).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert!(lines.iter().any(|line| line.text == "over 443"), "{lines:?}");
    agent.stop().await;
    drop(rabbit);
}

#[tokio::test]
async fn haproxy_shares_443_between_the_broker_and_a_web_server_by_server_name() {
    skip_unless!(needs::relays(), needs::private_rabbit());
    let _port = Port443::take().await;
    let ca = TestCa::new("sni");
    let server = ca.server("broker");
    let tls_port = free_port();
    let settings = format!(
        "listeners.ssl.default = 127.0.0.1:{tls_port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\nssl_options.verify = verify_none\n",
        ca.cert.display(),
        server.cert.display(),
        server.key.display()
    );
    let rabbit = PrivateRabbit::start_tls_with(&settings, "[].\n", tls_port).await;
    // The web server: openssl's test server, which answers every GET with a page of its own.
    let web_port = free_port();
    let mut web = tokio::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &web_port.to_string()])
        .arg("-cert")
        .arg(&server.cert)
        .arg("-key")
        .arg(&server.key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl runs");
    let shipped = std::fs::read_to_string(tests::repo().join("deploy/haproxy/haproxy.cfg")).unwrap();
    let config = shipped
        .replace("broker.example.com", "localhost")
        .replace("127.0.0.1:5671", &format!("127.0.0.1:{tls_port}"))
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{web_port}"));
    let _haproxy = Haproxy::start(&config, "127.0.0.1:443".parse().unwrap()).await;

    let mut config = test_config("sni");
    config.amqp_url = "amqps://guest:guest@localhost:443/%2f".into();
    config.amqp_tls = ca.trusted();
    let agent = AgentProcess::start_with(config, &["--amqp-ca-file", ca.cert.to_str().unwrap()], &[]).await;
    let orchestrator = orchestrator_at("amqps://guest:guest@localhost:443/%2f", &ca).await;
    let (outcome, lines) = tests::submit(&orchestrator, &agent_route(&agent), sh("echo beside the web")).await;
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert!(lines.iter().any(|line| line.text == "beside the web"), "{lines:?}");

    // Another name on the same address and port reaches the web server.
    let page = std::process::Command::new("curl")
        .args(["-sS", "--cacert", ca.cert.to_str().unwrap(), "--resolve", "www.example.com:443:127.0.0.1"])
        .args(["--connect-to", "www.example.com:443:127.0.0.1:443", "-k", "https://www.example.com/"])
        .output()
        .expect("curl runs");
    assert!(tests::text(&page.stdout).contains("s_server"), "{}", tests::text(&page.stderr));
    agent.stop().await;
    let _ = web.start_kill();
    drop(rabbit);
}

/// A dispatcher of this process's connected to `amqp_url`, trusting `ca`'s certificates.
async fn orchestrator_at(amqp_url: &str, ca: &TestCa) -> dispatcher::orchestrator::Orchestrator {
    let rpc = dispatcher::rpc::RpcConfig {
        tls: ca.trusted(),
        ..tests::rpc_config(amqp_url.to_owned(), Duration::from_secs(5))
    };
    let client = dispatcher::rpc::RpcClient::connect(rpc).await.expect("the dispatcher connects");
    dispatcher::orchestrator::Orchestrator::new(std::sync::Arc::new(client), Default::default())
}

fn agent_route(agent: &AgentProcess) -> dispatcher::route::Route {
    dispatcher::route::Route::agent(&agent.config.agent_id).expect("an agent id")
}

#[tokio::test]
async fn the_service_reaches_the_broker_through_its_proxy() {
    skip_unless!(needs::relays());
    let agent = TestAgent::start("proxied-service").await;
    let proxy = Tinyproxy::start(ProxySetup::default()).await;
    let prefix = tests::service::journal_prefix("proxied-service");
    let service = tests::ServiceProcess::start(&prefix, &["--proxy", &proxy.url()]).await;
    let ticket = service.submit(agent.id(), "echo through the proxy").await;
    let record = service.finished(&ticket, Duration::from_secs(30)).await;
    assert_eq!((record["outcome"].as_str(), record["exit_code"].as_i64()), (Some("completed"), Some(0)), "{record}");
    assert!(proxy.tunnels_to(&broker_target()) >= 1, "the service's link went through the proxy: {}", proxy.log_text());
    service.stop().await;
    tests::service::remove_journal(&prefix).await;
    agent.stop().await;
}

/// A proxy that answers a CONNECT with `answer` and then holds the connection: its address.
async fn answering_proxy(answer: Vec<u8>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(&answer).await;
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn hostile_proxy_settings_and_answers_get_a_clear_refusal() {
    let agent = TestAgent::start("hostile-proxy").await;
    let missing = std::env::temp_dir().join(tests::unique("no-such-credentials"));
    let missing = missing.to_str().unwrap();
    for (args, expected) in [
        (vec!["--proxy", "socks5://127.0.0.1:1080"], "HTTP proxies only"),
        (vec!["--proxy", "http://127.0.0.1:notaport"], "bad port"),
        (vec!["--proxy", "http://127.0.0.1:3128", "--proxy-credentials", missing], missing),
        (vec!["--proxy-credentials", missing], missing),
    ] {
        let (code, output, _) = health(agent.id(), &args, &[]).await;
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(output.contains(expected), "{args:?}: {output}");
    }
    let empty = std::env::temp_dir().join(tests::unique("empty-credentials"));
    std::fs::write(&empty, "\n").unwrap();
    let (code, output, _) =
        health(agent.id(), &["--proxy", "http://127.0.0.1:3128", "--proxy-credentials", empty.to_str().unwrap()], &[])
            .await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("its first line must be USER:PASSWORD"), "{output}");
    let _ = std::fs::remove_file(&empty);

    // The agent refuses the same settings at start.
    let config = test_config("hostile-proxy-agent");
    let mut command = AgentProcess::command(&config);
    command.args(["--proxy", "socks5://127.0.0.1:1080"]);
    let mut refused = AgentProcess::spawn_command(config, command);
    let status = tokio::time::timeout(Duration::from_secs(20), refused.wait()).await.expect("the agent stops");
    assert_eq!(status.code(), Some(1), "{}", refused.log_text());
    assert!(refused.log_text().contains("HTTP proxies only"), "{}", refused.log_text());
    refused.stop().await;

    // Answers: an endless head, something not HTTP, and a gateway error.
    let endless = vec![b'X'; 1 << 20];
    let cases: [(Vec<u8>, &str); 3] = [
        (endless, "an answer head too long for HTTP"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec(), "answered something other than HTTP"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n".to_vec(), "(502 Bad Gateway)"),
    ];
    for (answer, expected) in cases {
        let (addr, _task) = answering_proxy(answer).await;
        let (code, output, took) = health(agent.id(), &["--proxy", &format!("http://{addr}")], &[]).await;
        assert_eq!(code, Some(101), "{output}");
        assert!(output.contains(expected), "{expected}: {output}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    agent.stop().await;
}
