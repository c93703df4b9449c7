//! Faults injected for real between the dispatcher, the agent and RabbitMQ (through
//! [`FaultProxy`]): every request and every reply lost once, on either link, and the script
//! still runs exactly once; outages longer than the retry deadline fail in time with the last
//! real error; after a lost link the next connection comes at once. The agent's link faults are
//! also injected with the agent behind an HTTP proxy and behind a WebSocket relay (the fault
//! between them and the broker), where it must fare as a directly connected agent does.

use contracts::submission::negotiate::ScriptProtocol;
use contracts::submission::outcome::OutcomeKind;
use contracts::submission::retry::{RetryPolicy, Timing};
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::exit_code;
use contracts::wire::messages::{CancelScriptV2, CompleteScriptV2, GetStatusV2, StartScriptV2, SERVICE_SCRIPT_V2};
use contracts::wire::status::ScriptStatus;
use contracts::wire::ticket::Ticket;
use dispatcher::orchestrator::Orchestrator;
use dispatcher::rpc::RpcClient;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::proxy::{broker_addr, Direction, FaultProxy};
use tests::relays::{ProxySetup, Tinyproxy, Websockify};
use tests::tls::TestCa;
use tests::*;

/// The dispatcher and an agent, each reaching RabbitMQ through a proxy of its own.
struct Chaos {
    dispatcher_link: FaultProxy,
    agent_link: FaultProxy,
    agent: TestAgent,
    orchestrator: Orchestrator,
    markers: Markers,
    _path: Path,
}

/// How the agent reaches its fault-injecting link to the broker.
#[derive(Clone, Copy, Debug)]
enum AgentPath {
    Direct,
    /// Through an HTTP proxy's tunnel (`--proxy`).
    Proxy,
    /// Over a WebSocket, to a relay in front of the link (a `wss://` URL).
    Relay,
}

/// What stands between the agent and its link, kept for the test's length.
enum Path {
    Direct,
    Proxy(Tinyproxy),
    /// The relay, and the CA of its certificate (kept: its files are the relay's).
    Relay {
        relay: Websockify,
        _ca: TestCa,
    },
}

impl Path {
    /// Sets `config` to reach `link` by `path`.
    async fn set_up(path: AgentPath, link: &FaultProxy, config: &mut worker_agent::config::AgentConfig) -> Path {
        config.amqp_url = link.amqp_url();
        match path {
            AgentPath::Direct => Path::Direct,
            AgentPath::Proxy => {
                let proxy = Tinyproxy::start(ProxySetup::default()).await;
                let through = edge::connect::proxy::Proxy::parse("test", &proxy.url()).expect("a proxy URL");
                config.proxy = edge::connect::proxy::ProxySettings::through(through, Default::default());
                Path::Proxy(proxy)
            }
            AgentPath::Relay => {
                let ca = TestCa::new("chaos-relay");
                let relay = Websockify::start(link.addr(), &ca.server("relay")).await;
                config.amqp_url = relay.broker_url();
                config.amqp_tls = ca.trusted();
                Path::Relay { relay, _ca: ca }
            }
        }
    }

    /// Checks the agent's connection took the path.
    fn check_used(&self, link: &FaultProxy) {
        match self {
            Path::Direct => {}
            Path::Proxy(proxy) => {
                let tunnels = proxy.tunnels_to(&link.addr().to_string());
                assert!(tunnels >= 1, "the agent connected through the proxy: {}", proxy.log_text());
            }
            Path::Relay { relay, .. } => assert!(relay.connections() >= 1, "through the relay: {}", relay.log_text()),
        }
    }
}

/// Short attempt timeouts, so lost replies are noticed quickly.
fn chaos_timing() -> Timing {
    Timing {
        attempt_timeout: Duration::from_secs(3),
        status_wait: Duration::from_secs(1),
        start_wait: Duration::from_millis(500),
    }
}

impl Chaos {
    async fn start(what: &str) -> Chaos {
        Chaos::start_by(what, AgentPath::Direct).await
    }

    async fn start_by(what: &str, path: AgentPath) -> Chaos {
        let broker = broker_addr();
        let dispatcher_link = FaultProxy::start(broker).await;
        let agent_link = FaultProxy::start(broker).await;
        let mut config = tests::agent::test_config(what);
        let path = Path::set_up(path, &agent_link, &mut config).await;
        let agent = TestAgent::start_with(config).await;
        path.check_used(&agent_link);
        let rpc = RpcClient::new(tests::rpc_config(dispatcher_link.amqp_url(), Duration::from_secs(2)));
        let orchestrator = Orchestrator::new(Arc::new(rpc), chaos_timing());
        Chaos { dispatcher_link, agent_link, agent, orchestrator, markers: Markers::new(), _path: path }
    }

    fn route(&self) -> dispatcher::route::Route {
        self.agent.route()
    }

    async fn request(&self, request: &Request) -> Reply {
        let policy = RetryPolicy::new(Duration::from_secs(30));
        self.orchestrator
            .request(&self.route(), request, policy, Duration::from_secs(2), None, &|_| {})
            .await
            .expect("the request succeeds after retrying")
    }

    async fn start_script(&self, ticket: &Ticket, script: String) -> ScriptStatus {
        let start = Request::StartScriptV2(StartScriptV2 {
            ticket: ticket.clone(),
            spec: sh(script),
            wait_for_output: Some(1000),
            first_issued_at: None,
        });
        match self.request(&start).await {
            Reply::ScriptStatus(status) => status,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    async fn follow(&self, ticket: &Ticket) -> contracts::submission::outcome::Outcome {
        let policy = RetryPolicy::new(Duration::from_secs(30));
        let status = self.orchestrator.status(&self.route(), ticket, policy, &|_| {}).await.unwrap();
        let follower = contracts::submission::follow::LogFollower::after(0);
        self.orchestrator
            .follow_to_end(
                &self.route(),
                ticket,
                follower,
                status,
                policy,
                ScriptProtocol::V2,
                &|_| {},
                &Default::default(),
            )
            .await
    }

    async fn stop(self) {
        self.agent.stop().await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Capabilities,
    Start,
    Status,
    Cancel,
    Complete,
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Dispatcher,
    Agent,
}

#[derive(Clone, Copy, Debug)]
enum Lost {
    Request,
    Reply,
}

/// Loses one `rpc` request or reply on `link`, the agent reaching its link by `path`, and checks
/// the script still runs exactly once.
async fn lose_once(rpc: Rpc, link: Link, lost: Lost, path: AgentPath) {
    let chaos = Chaos::start_by(&format!("lost-{rpc:?}-{link:?}-{lost:?}-{path:?}").to_lowercase(), path).await;
    let (proxy, direction) = match (link, lost) {
        (Link::Dispatcher, Lost::Request) => (&chaos.dispatcher_link, Direction::Upstream),
        (Link::Dispatcher, Lost::Reply) => (&chaos.dispatcher_link, Direction::Downstream),
        (Link::Agent, Lost::Request) => (&chaos.agent_link, Direction::Downstream),
        (Link::Agent, Lost::Reply) => (&chaos.agent_link, Direction::Upstream),
    };
    // Connect the dispatcher first, so the fault hits the request and not the handshake.
    let policy = RetryPolicy::new(Duration::from_secs(30));
    chaos.orchestrator.capabilities(&chaos.route(), policy, &|_| {}).await.expect("capabilities");
    let ticket = edge::entropy::ticket();
    let run = chaos.markers.record("run");
    match rpc {
        Rpc::Capabilities => {
            proxy.drop_next_and_reset(direction);
            let caps = chaos
                .orchestrator
                .capabilities(&chaos.route(), policy, &|_| {})
                .await
                .expect("capabilities after a loss");
            assert!(caps.supports(SERVICE_SCRIPT_V2));
        }
        Rpc::Start => {
            proxy.drop_next_and_reset(direction);
            chaos.start_script(&ticket, format!("{run}; echo done")).await;
            assert_eq!(chaos.follow(&ticket).await.exit_code, Some(0));
        }
        Rpc::Status => {
            chaos.start_script(&ticket, format!("{run}; sleep 1; echo done")).await;
            proxy.drop_next_and_reset(direction);
            let status =
                Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: 0, wait: Some(1000) });
            assert!(matches!(chaos.request(&status).await, Reply::ScriptStatus(_)));
            assert_eq!(chaos.follow(&ticket).await.exit_code, Some(0));
        }
        Rpc::Cancel => {
            chaos.start_script(&ticket, format!("{run}; echo up; sleep 30")).await;
            proxy.drop_next_and_reset(direction);
            let cancel = Request::CancelScriptV2(CancelScriptV2 {
                ticket: ticket.clone(),
                last_log_sequence: 0,
                first_issued_at: None,
            });
            assert!(matches!(chaos.request(&cancel).await, Reply::ScriptStatus(_)));
            let outcome = chaos.follow(&ticket).await;
            assert_eq!(outcome.exit_code, Some(exit_code::CANCELLED));
        }
        Rpc::Complete => {
            chaos.start_script(&ticket, format!("{run}; echo done")).await;
            assert_eq!(chaos.follow(&ticket).await.exit_code, Some(0));
            proxy.drop_next_and_reset(direction);
            let complete = Request::CompleteScriptV2(CompleteScriptV2::new(ticket.clone()));
            let Reply::ScriptStatus(done) = chaos.request(&complete).await else { panic!("expected a status") };
            assert_eq!(done.exit_code, Some(0));
            let after = chaos.orchestrator.status(&chaos.route(), &ticket, policy, &|_| {}).await.unwrap();
            assert!(after.is_complete() && after.logs.is_empty(), "completed: output cleaned, tombstone kept");
        }
    }
    assert!(proxy.resets() >= 1, "the fault was injected");
    if !matches!(rpc, Rpc::Capabilities) {
        assert_eq!(chaos.markers.count("run"), 1, "the script ran exactly once");
    }
    chaos.stop().await;
}

macro_rules! lose_once_tests {
    ($($name:ident: $rpc:ident, $link:ident, $lost:ident, $path:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !matches!(AgentPath::$path, AgentPath::Direct) {
                skip_unless!(needs::relays());
            }
            lose_once(Rpc::$rpc, Link::$link, Lost::$lost, AgentPath::$path).await;
        }
    )*};
}

lose_once_tests! {
    capabilities_request_lost_on_dispatcher_link: Capabilities, Dispatcher, Request, Direct;
    capabilities_reply_lost_on_dispatcher_link: Capabilities, Dispatcher, Reply, Direct;
    capabilities_request_lost_on_agent_link: Capabilities, Agent, Request, Direct;
    capabilities_reply_lost_on_agent_link: Capabilities, Agent, Reply, Direct;
    start_request_lost_on_dispatcher_link: Start, Dispatcher, Request, Direct;
    start_reply_lost_on_dispatcher_link: Start, Dispatcher, Reply, Direct;
    start_request_lost_on_agent_link: Start, Agent, Request, Direct;
    start_reply_lost_on_agent_link: Start, Agent, Reply, Direct;
    status_request_lost_on_dispatcher_link: Status, Dispatcher, Request, Direct;
    status_reply_lost_on_dispatcher_link: Status, Dispatcher, Reply, Direct;
    status_request_lost_on_agent_link: Status, Agent, Request, Direct;
    status_reply_lost_on_agent_link: Status, Agent, Reply, Direct;
    cancel_request_lost_on_dispatcher_link: Cancel, Dispatcher, Request, Direct;
    cancel_reply_lost_on_dispatcher_link: Cancel, Dispatcher, Reply, Direct;
    cancel_request_lost_on_agent_link: Cancel, Agent, Request, Direct;
    cancel_reply_lost_on_agent_link: Cancel, Agent, Reply, Direct;
    complete_request_lost_on_dispatcher_link: Complete, Dispatcher, Request, Direct;
    complete_reply_lost_on_dispatcher_link: Complete, Dispatcher, Reply, Direct;
    complete_request_lost_on_agent_link: Complete, Agent, Request, Direct;
    complete_reply_lost_on_agent_link: Complete, Agent, Reply, Direct;
    capabilities_request_lost_on_agent_link_through_a_proxy: Capabilities, Agent, Request, Proxy;
    capabilities_reply_lost_on_agent_link_through_a_proxy: Capabilities, Agent, Reply, Proxy;
    start_request_lost_on_agent_link_through_a_proxy: Start, Agent, Request, Proxy;
    start_reply_lost_on_agent_link_through_a_proxy: Start, Agent, Reply, Proxy;
    status_request_lost_on_agent_link_through_a_proxy: Status, Agent, Request, Proxy;
    status_reply_lost_on_agent_link_through_a_proxy: Status, Agent, Reply, Proxy;
    cancel_request_lost_on_agent_link_through_a_proxy: Cancel, Agent, Request, Proxy;
    cancel_reply_lost_on_agent_link_through_a_proxy: Cancel, Agent, Reply, Proxy;
    complete_request_lost_on_agent_link_through_a_proxy: Complete, Agent, Request, Proxy;
    complete_reply_lost_on_agent_link_through_a_proxy: Complete, Agent, Reply, Proxy;
    capabilities_request_lost_on_agent_link_through_a_websocket_relay: Capabilities, Agent, Request, Relay;
    capabilities_reply_lost_on_agent_link_through_a_websocket_relay: Capabilities, Agent, Reply, Relay;
    start_request_lost_on_agent_link_through_a_websocket_relay: Start, Agent, Request, Relay;
    start_reply_lost_on_agent_link_through_a_websocket_relay: Start, Agent, Reply, Relay;
    status_request_lost_on_agent_link_through_a_websocket_relay: Status, Agent, Request, Relay;
    status_reply_lost_on_agent_link_through_a_websocket_relay: Status, Agent, Reply, Relay;
    cancel_request_lost_on_agent_link_through_a_websocket_relay: Cancel, Agent, Request, Relay;
    cancel_reply_lost_on_agent_link_through_a_websocket_relay: Cancel, Agent, Reply, Relay;
    complete_request_lost_on_agent_link_through_a_websocket_relay: Complete, Agent, Request, Relay;
    complete_reply_lost_on_agent_link_through_a_websocket_relay: Complete, Agent, Reply, Relay;
}

/// Runs `$body` (an async function of an [`AgentPath`]) as one test per path of the agent's.
macro_rules! for_each_agent_path {
    ($body:ident: $direct:ident, $proxy:ident, $relay:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $direct() {
            $body(AgentPath::Direct).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $proxy() {
            skip_unless!(needs::relays());
            $body(AgentPath::Proxy).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $relay() {
            skip_unless!(needs::relays());
            $body(AgentPath::Relay).await;
        }
    };
}

for_each_agent_path!(
    rides_out_resets: a_whole_submission_rides_out_resets_of_both_links,
    a_whole_submission_rides_out_resets_of_both_links_through_a_proxy,
    a_whole_submission_rides_out_resets_of_both_links_through_a_websocket_relay
);

async fn rides_out_resets(path: AgentPath) {
    let chaos = Chaos::start_by(&format!("resets-{path:?}").to_lowercase(), path).await;
    let run = chaos.markers.record("run");
    let script = format!("{run}; for i in $(seq 1 30); do echo line $i; sleep 0.05; done");
    let submission = {
        let (orchestrator, route) = (chaos.orchestrator.clone(), chaos.route());
        tokio::spawn(async move {
            let lines = std::sync::Mutex::new(Vec::new());
            let events = |e| {
                if let dispatcher::orchestrator::Event::Log(l) = e {
                    lines.lock().unwrap().push(l.text);
                }
            };
            let policy = RetryPolicy::new(Duration::from_secs(60));
            let outcome = orchestrator.submit(&route, sh(script), policy, &events, &Default::default()).await;
            (outcome, lines.into_inner().unwrap())
        })
    };
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        chaos.dispatcher_link.reset_all();
        chaos.agent_link.reset_all();
    }
    let (outcome, lines) = submission.await.unwrap();
    assert_eq!(outcome.exit_code, Some(0), "{outcome:?}");
    assert_eq!(lines, (1..=30).map(|i| format!("line {i}")).collect::<Vec<_>>(), "every line once, in order");
    assert_eq!(chaos.markers.count("run"), 1);
    chaos.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_retry_duration_fails_soon_after_the_deadline_with_the_last_error() {
    let chaos = Chaos::start("outage").await;
    chaos.dispatcher_link.outage();
    let retry_duration = Duration::from_secs(3);
    let notices = std::sync::atomic::AtomicU32::new(0);
    let events = |e| {
        if matches!(e, dispatcher::orchestrator::Event::Retry { .. }) {
            notices.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let started = Instant::now();
    let policy = RetryPolicy::new(retry_duration);
    let outcome = chaos
        .orchestrator
        .submit(&chaos.route(), sh(chaos.markers.record("run")), policy, &events, &Default::default())
        .await;
    let took = started.elapsed();
    assert!(took >= retry_duration && took < retry_duration + Duration::from_secs(2), "gave up after {took:?}");
    assert_eq!(outcome.outcome, OutcomeKind::Failed, "{outcome:?}");
    let error = outcome.error.unwrap();
    assert!(error.contains("cannot reach the broker") && error.contains("gave up after"), "{error}");
    assert!(notices.into_inner() >= 2, "each retry was reported");
    assert_eq!(chaos.markers.count("run"), 0);

    let started = Instant::now();
    let outcome =
        chaos.orchestrator.submit(&chaos.route(), sh("true"), RetryPolicy::once(), &|_| {}, &Default::default()).await;
    assert!(started.elapsed() < Duration::from_secs(3), "no retries: the first error ends it");
    assert!(outcome.error.unwrap().contains("1 attempt"));
    chaos.dispatcher_link.restore();
    chaos.stop().await;
}

for_each_agent_path!(
    keeps_running_cut_off: a_script_keeps_running_while_its_agent_is_cut_off_and_no_output_is_lost,
    a_script_keeps_running_while_its_agent_behind_a_proxy_is_cut_off_and_no_output_is_lost,
    a_script_keeps_running_while_its_agent_behind_a_websocket_relay_is_cut_off_and_no_output_is_lost
);

async fn keeps_running_cut_off(path: AgentPath) {
    let chaos = Chaos::start_by(&format!("cut-off-{path:?}").to_lowercase(), path).await;
    let ticket = edge::entropy::ticket();
    let script = format!("{}; for i in $(seq 1 20); do echo line $i; sleep 0.1; done", chaos.markers.record("run"));
    chaos.start_script(&ticket, script).await;
    chaos.agent_link.outage();
    let cut = Instant::now();
    // Two seconds without the broker: the script runs on and ends meanwhile.
    eventually("the script to end while cut off", Duration::from_secs(10), || async {
        (chaos.agent.agent.running() == 0).then_some(())
    })
    .await;
    assert!(cut.elapsed() < Duration::from_secs(5));
    chaos.agent_link.restore();
    let mut lines = Vec::new();
    let policy = RetryPolicy::new(Duration::from_secs(30));
    let status = chaos.orchestrator.status(&chaos.route(), &ticket, policy, &|_| {}).await.unwrap();
    lines.extend(status.logs.iter().map(|l| l.text.clone()));
    assert!(status.is_complete() && status.exit_code == Some(0));
    assert_eq!(lines, (1..=20).map(|i| format!("line {i}")).collect::<Vec<_>>());
    assert_eq!(chaos.markers.count("run"), 1);
    chaos.stop().await;
}

/// The next line a dispatcher prints (at most 30 s away).
async fn next_line(stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await.expect("a line in time").unwrap()
}

/// After the dispatcher's link is lost, its next connection comes at once (a random delay up to
/// 100 ms, plus noticing the loss), measured by the proxy's own timeline from the moment the
/// link was reset: a reset of the idle link while a status request waits on the agent, and a
/// lost reply. The fault that loses a reply is armed first and fires only when the next chunk
/// from the broker comes (on this idle link, the broker's heartbeat or the reply held for
/// seconds), so the figure counts from when it fired, not from when it was armed; both are
/// printed. The script runs to its end once, every line shown once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_link_the_next_connection_comes_at_once() {
    let agent = TestAgent::start("reconnect-timeline").await;
    let link = FaultProxy::start(broker_addr()).await;
    let markers = Markers::new();
    let (go, again) = (markers.dir.join("go"), markers.dir.join("again"));
    let wait_for = |file: &std::path::Path| format!("while [ ! -e '{}' ]; do sleep 0.1; done", file.display());
    let script =
        format!("{}; echo one; {}; echo two; {}; echo three", markers.record("run"), wait_for(&go), wait_for(&again));
    let mut submit = dispatcher_command()
        .env("CUTTLE_AMQP_URL", link.amqp_url())
        .args(["submit", "--target", agent.id(), "--", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(submit.stdout.take().unwrap()));
    assert_eq!(next_line(&mut stdout).await.as_deref(), Some("one"));
    // How long after the `resets`-th reset the `connections`-th connection came.
    let reconnected = |connections: usize, resets: usize| {
        let link = &link;
        async move {
            let next = eventually("a new connection", Duration::from_secs(15), || async {
                link.accepted_at().get(connections).copied()
            })
            .await;
            next.saturating_duration_since(link.resets_at()[resets])
        }
    };

    // A reset while the status request waits on the agent (the script waits for `go`).
    let (connections, resets) = (link.accepted_at().len(), link.resets_at().len());
    link.reset_all();
    let after_reset = reconnected(connections, resets).await;
    std::fs::write(&go, "").unwrap();
    assert_eq!(next_line(&mut stdout).await.as_deref(), Some("two"));

    // A lost reply: armed now, it fires with the next chunk from the broker.
    let (connections, resets) = (link.accepted_at().len(), link.resets_at().len());
    let armed = Instant::now();
    link.drop_next_and_reset(Direction::Downstream);
    let fired =
        eventually("the fault to fire", Duration::from_secs(15), || async { link.resets_at().get(resets).copied() })
            .await;
    let after_lost_reply = reconnected(connections, resets).await;
    println!(
        "next connection {after_reset:?} after a reset; a lost reply's fault fired {:?} after it was armed, \
         the next connection {after_lost_reply:?} after it fired",
        fired.saturating_duration_since(armed)
    );
    std::fs::write(&again, "").unwrap();
    assert_eq!(next_line(&mut stdout).await.as_deref(), Some("three"));
    let (code, stderr) = ended(submit, Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(markers.count("run"), 1, "the script ran once");
    // At once: the delay is under 100 ms; slack for noticing the loss on a loaded machine.
    assert!(after_reset < Duration::from_secs(1), "next connection {after_reset:?} after a reset: {stderr}");
    assert!(
        after_lost_reply < Duration::from_secs(1),
        "next connection {after_lost_reply:?} after a lost reply: {stderr}"
    );
    agent.stop().await;
}
