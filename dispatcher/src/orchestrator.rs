//! The script orchestrator: drives contracts' [`Submission`] machine (start a script under a
//! ticket of our own, follow its log to the end, complete it; Ctrl-C cancels the script on the
//! agent and follows it until it has stopped) over the broker and the clock. Every decision is
//! the machine's; this file only sends, waits and reports.

use crate::completes::CompleteBatches;
use crate::error::{LinkLost, RpcError};
use crate::metrics::Metrics;
use crate::negotiate::{CapabilityCache, ProtocolMode};
use crate::retry::{self, GaveUp};
use crate::route::Route;
use crate::rpc::{CallTiming, RpcClient};
use contracts::submission::error::Unexpected;
use contracts::submission::follow::LogFollower;
use contracts::submission::machine::{Action, Config, Input, Now, Submission};
use contracts::submission::negotiate::no_consumer_notice;
use contracts::submission::negotiate::{AgentKind, ScriptProtocol};
use contracts::submission::outcome::Outcome;
use contracts::submission::requests::PlannedStart;
use contracts::submission::requests::{complete_request, expect_status};
use contracts::submission::retry::RetryPolicy;
use contracts::submission::retry::{Policies, Timing};
use contracts::wire::envelope::{Reply, Request};
use contracts::wire::messages::{
    Capabilities, CompleteScriptV2, GetCapabilities, GetStatusV1, GetStatusV2, Kind, ScriptSpec,
};
use contracts::wire::status::ScriptStatus;
use contracts::wire::ticket::Ticket;
use contracts::wire::topology;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What happens during a submission, for the user to see.
pub type Event = contracts::submission::machine::Event<RpcError>;

/// Where events go. Called from the submission's task; must be quick.
pub type EventSink<'a> = &'a (dyn Fn(Event) + Send + Sync);

/// Sends requests to agents and follows scripts.
#[derive(Clone)]
pub struct Orchestrator {
    rpc: Arc<RpcClient>,
    pub timing: Timing,
    /// Negotiate (the default), or speak only script v1 as dispatchers did before.
    pub protocol: ProtocolMode,
    capabilities: Arc<CapabilityCache>,
    /// Completes waiting to go to agents that take many in one message.
    completes: Arc<CompleteBatches>,
    metrics: Metrics,
}

impl Orchestrator {
    /// An orchestrator recording in metrics of its own (see [`Orchestrator::with_metrics`]).
    pub fn new(rpc: Arc<RpcClient>, timing: Timing) -> Self {
        Orchestrator {
            rpc,
            timing,
            protocol: ProtocolMode::Auto,
            capabilities: Arc::default(),
            completes: Arc::default(),
            metrics: Metrics::default(),
        }
    }

    /// The same orchestrator recording its requests in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The same orchestrator speaking `protocol`.
    pub fn with_protocol(mut self, protocol: ProtocolMode) -> Self {
        self.protocol = protocol;
        self
    }

    /// The status protocol for tickets given by the user (`status --follow`).
    pub fn status_protocol(&self) -> ScriptProtocol {
        match self.protocol {
            ProtocolMode::Auto => ScriptProtocol::V2,
            ProtocolMode::V1 => ScriptProtocol::V1,
        }
    }

    /// The script service a ticket of `route` is asked about with afterwards (`status`,
    /// `cancel`): v1 when this dispatcher speaks only v1 or the agent said it is a legacy one.
    pub fn script_protocol_of(&self, route: &Route) -> ScriptProtocol {
        match (self.protocol, self.capabilities.get(route)) {
            (ProtocolMode::V1, _) => ScriptProtocol::V1,
            (ProtocolMode::Auto, Some(kind)) => kind.script_protocol().unwrap_or(ScriptProtocol::V2),
            (ProtocolMode::Auto, None) => ScriptProtocol::V2,
        }
    }

    /// What the agent supports, from the cache or by asking it.
    pub async fn agent_kind(
        &self,
        route: &Route,
        policy: RetryPolicy,
        events: EventSink<'_>,
    ) -> Result<AgentKind, GaveUp> {
        if let Some(kind) = self.capabilities.get(route) {
            return Ok(kind);
        }
        if self.rpc.consumers(route, Kind::GetCapabilities).await == Some(0) {
            let queue = route.queue(Kind::GetCapabilities);
            events(Event::Notice(no_consumer_notice(&queue, policy, self.timing)));
        }
        let request = Request::GetCapabilities(GetCapabilities {});
        let answer = self.request(route, &request, policy, Duration::ZERO, None, events).await;
        let kind = AgentKind::from_answer(answer)?;
        self.capabilities.put(route, kind.clone());
        Ok(kind)
    }

    pub fn rpc(&self) -> &Arc<RpcClient> {
        &self.rpc
    }

    /// One RPC through the retry executor. `extra_wait` is what the agent may hold the reply.
    pub async fn request(
        &self,
        route: &Route,
        request: &Request,
        policy: RetryPolicy,
        extra_wait: Duration,
        not_after: Option<SystemTime>,
        events: EventSink<'_>,
    ) -> Result<Reply, GaveUp> {
        let usual = self.timing.attempt_timeout + extra_wait;
        let warn = |warning| events(Event::Warning(warning));
        let warn: crate::rpc::Warn<'_> = &warn;
        let kind = request.kind();
        retry::execute(
            policy,
            usual,
            &CancellationToken::new(),
            |notice| {
                self.metrics.retry(kind);
                events(Event::Retry { request: kind, notice: notice.clone() })
            },
            |reply_timeout| async move {
                let not_after = not_after.unwrap_or_else(|| SystemTime::now() + reply_timeout);
                let timing = CallTiming { reply_timeout, not_after };
                self.attempt(route, request, timing, &AtomicBool::new(false), warn).await
            },
        )
        .await
    }

    /// One attempt of `request`, recorded in the metrics.
    async fn attempt(
        &self,
        route: &Route,
        request: &Request,
        timing: CallTiming,
        published: &AtomicBool,
        warn: crate::rpc::Warn<'_>,
    ) -> Result<Reply, RpcError> {
        let sent = std::time::Instant::now();
        let reply = self.rpc.call_noting_publish(route, request, timing, published, warn).await;
        self.metrics.attempt(request.kind(), sent.elapsed(), reply.as_ref().map(|_| ()));
        reply
    }

    /// For a pool, one of its workers that answers now (a capabilities request to the pool; the
    /// answer names who sent it), as a route of its own: its queue, the pool's pin. Requests
    /// that must all reach the same worker (a transfer's chunks) go there. Other routes are
    /// their own.
    pub async fn one_worker(&self, route: &Route, policy: RetryPolicy, events: EventSink<'_>) -> Result<Route, GaveUp> {
        let Route::Pool(pool) = route else { return Ok(route.clone()) };
        let request = Request::GetCapabilities(GetCapabilities {});
        let warn = |warning| events(Event::Warning(warning));
        let warn: crate::rpc::Warn<'_> = &warn;
        let (request, kind) = (&request, request.kind());
        let answered = retry::execute(
            policy,
            self.timing.attempt_timeout,
            &CancellationToken::new(),
            |notice| events(Event::Retry { request: kind, notice: notice.clone() }),
            |reply_timeout| async move {
                let timing = CallTiming { reply_timeout, not_after: SystemTime::now() + reply_timeout };
                self.rpc.call_with_sender(route, request, timing, &AtomicBool::new(false), warn).await
            },
        )
        .await?;
        let (agent, _) = answered;
        topology::validate_name("agent id", &agent)
            .map_err(|source| GaveUp::at_once(RpcError::WorkerName { route: route.to_string(), source }))?;
        Ok(Route::Worker { pool: pool.clone(), agent })
    }

    /// Asks an agent what it supports.
    pub async fn capabilities(
        &self,
        route: &Route,
        policy: RetryPolicy,
        events: EventSink<'_>,
    ) -> Result<Capabilities, GaveUp> {
        let request = Request::GetCapabilities(GetCapabilities {});
        match self.request(route, &request, policy, Duration::ZERO, None, events).await? {
            Reply::Capabilities(capabilities) => Ok(capabilities),
            other => Err(GaveUp::at_once(RpcError::Unexpected(Unexpected::Kind {
                expected: "capabilities",
                got: other.kind(),
            }))),
        }
    }

    /// The machine's configuration for `route`, under `policies`.
    fn config(&self, route: &Route, policies: Policies) -> Config {
        Config {
            target: route.name().to_owned(),
            shown: route.to_string(),
            addressed: route.target(),
            capabilities_queue: route.queue(Kind::GetCapabilities),
            timing: self.timing,
            policies,
            v1_only: self.protocol == ProtocolMode::V1,
            known: self.capabilities.get(route),
            seed: fastrand::u64(..),
        }
    }

    /// Runs a script on `route` to its end: capabilities (cached), start, follow, complete.
    pub async fn submit(
        &self,
        route: &Route,
        spec: ScriptSpec,
        policies: impl Into<Policies>,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let config = self.config(route, policies.into());
        let machine = Submission::submit(config, spec, edge::entropy::ticket(), now());
        self.drive(route, machine, events, interrupt).await
    }

    /// A start of `ticket` under `policy`, from now: the deadline after which the agent refuses it.
    pub fn plan_start(&self, ticket: Ticket, policy: RetryPolicy) -> PlannedStart {
        PlannedStart::new(ticket, policy, self.timing, SystemTime::now())
    }

    /// Runs a script under a start planned (and recorded) beforehand and follows it after line
    /// `last_seen`, without completing it, so the caller can record the outcome first (see
    /// [`Submission::run_planned`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a different thing the caller holds; a struct of them would only be unpacked here"
    )]
    pub async fn run_planned(
        &self,
        route: &Route,
        plan: &PlannedStart,
        spec: ScriptSpec,
        policies: Policies,
        last_seen: u64,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let config = self.config(route, policies);
        let machine = Submission::run_planned(config, plan.clone(), spec, last_seen, now());
        self.drive(route, machine, events, interrupt).await
    }

    /// Publishes a request nothing waits for (a complete): into the batch of its route when the
    /// agent takes completes in batches ([`CompleteBatches`]), else at once.
    async fn send(&self, route: &Route, request: &Request, not_after: SystemTime) -> Result<(), RpcError> {
        match request {
            Request::CompleteScriptV2(complete)
                if complete.more.is_empty()
                    && self.capabilities.get(route).is_some_and(|kind| kind.completes_in_batches()) =>
            {
                self.completes.add(&self.rpc, route, complete.ticket.clone(), not_after);
                Ok(())
            }
            _ => self.rpc.send(route, request, not_after).await,
        }
    }

    /// Sends the completes still waiting in batches, before the process ends.
    pub async fn flush_completes(&self) {
        self.completes.flush(&self.rpc).await;
    }

    /// Completes a ticket whose end was seen: published (durably, into the agent's queue) but
    /// not waited for, since nothing the user sees depends on it.
    pub(crate) async fn complete_after(
        &self,
        route: &Route,
        ticket: &Ticket,
        outcome: &Outcome,
        policy: RetryPolicy,
        events: EventSink<'_>,
    ) {
        let Some(complete) = complete_request(ScriptProtocol::V2, ticket, outcome) else { return };
        let not_after = SystemTime::now() + policy.duration.max(self.timing.attempt_timeout);
        if let Err(error) = self.send(route, &complete, not_after).await {
            events(Event::Notice(format!(
                "could not complete ticket {ticket} (the agent cleans it up later): {error}"
            )));
        }
    }

    /// Follows a ticket until its script is complete and every line is seen. On `interrupt`
    /// the script is cancelled and followed until it stops.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is a different thing the caller holds; a struct of them would only be unpacked here"
    )]
    pub async fn follow_to_end(
        &self,
        route: &Route,
        ticket: &Ticket,
        follower: LogFollower,
        status: ScriptStatus,
        policy: RetryPolicy,
        protocol: ScriptProtocol,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let config = self.config(route, policy.into());
        let machine = Submission::follow(config, ticket.clone(), follower, status, protocol, now());
        self.drive(route, machine, events, interrupt).await
    }

    /// Tells the agent the script's output is no longer needed, and waits for its answer. Best
    /// effort: a failure is only a notice, since the agent expires what is never completed.
    pub async fn complete(&self, route: &Route, ticket: &Ticket, events: EventSink<'_>) {
        let complete = Request::CompleteScriptV2(CompleteScriptV2::new(ticket.clone()));
        let policy = RetryPolicy::new(self.timing.attempt_timeout);
        if let Err(gave_up) = self.request(route, &complete, policy, Duration::ZERO, None, events).await {
            events(Event::Notice(format!(
                "could not complete ticket {ticket} (the agent cleans it up later): {gave_up}"
            )));
        }
    }

    /// One status of a ticket, with every line from the start.
    pub async fn status(
        &self,
        route: &Route,
        ticket: &Ticket,
        policy: RetryPolicy,
        events: EventSink<'_>,
    ) -> Result<ScriptStatus, GaveUp> {
        let request = match self.protocol {
            ProtocolMode::Auto => {
                Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: 0, wait: None })
            }
            ProtocolMode::V1 => Request::GetStatusV1(GetStatusV1 { ticket: ticket.clone(), last_log_sequence: 0 }),
        };
        expect_status(self.request(route, &request, policy, Duration::ZERO, None, events).await?)
    }

    /// Cancels a ticket (given by the user) and follows it until it has stopped; with
    /// `--protocol v1`, as a legacy agent's script.
    pub async fn cancel(&self, route: &Route, ticket: &Ticket, policy: RetryPolicy, events: EventSink<'_>) -> Outcome {
        let config = self.config(route, policy.into());
        let machine = Submission::cancel(config, ticket.clone(), self.status_protocol(), now());
        self.drive(route, machine, events, &CancellationToken::new()).await
    }

    /// Runs `machine` to its outcome: sends what it says, waits as it says, and feeds it the
    /// replies, failures and the user's `interrupt`. Nothing is decided here.
    async fn drive(
        &self,
        route: &Route,
        mut machine: Submission<RpcError>,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let warn = |warning| events(Event::Warning(warning));
        let warn: crate::rpc::Warn<'_> = &warn;
        // Whether the attempt in flight may have reached the broker.
        let published = AtomicBool::new(false);
        let mut in_flight: Option<(u64, InFlight<'_>)> = None;
        let mut interrupted = false;
        loop {
            match machine.poll(now()) {
                Action::Call { attempt, request, reply_timeout, not_after } => {
                    published.store(false, Ordering::Release);
                    let timing = CallTiming { reply_timeout, not_after };
                    let published = &published;
                    let call = async move { self.attempt(route, &request, timing, published, warn).await };
                    in_flight = Some((attempt, Box::pin(call)));
                }
                Action::AwaitReply(attempt) => {
                    let Some((_, call)) = in_flight.as_mut().filter(|(a, _)| *a == attempt) else {
                        // Only a machine fed out of order could ask this; it hears of a lost reply.
                        let error = RpcError::ConnectionLost(LinkLost::Dropped);
                        machine.handle(Input::Failed { attempt, error, published: true }, now());
                        continue;
                    };
                    let result = tokio::select! {
                        result = call => Some(result),
                        _ = interrupt.cancelled(), if !interrupted => None,
                    };
                    let was_published = published.load(Ordering::Acquire);
                    let input = match result {
                        Some(Ok(reply)) => Input::Reply { attempt, reply },
                        Some(Err(error)) => Input::Failed { attempt, error, published: was_published },
                        None => {
                            interrupted = true;
                            Input::Interrupt { published: was_published }
                        }
                    };
                    if !matches!(input, Input::Interrupt { .. }) {
                        in_flight = None;
                    }
                    machine.handle(input, now());
                }
                Action::Sleep(until) => {
                    in_flight = None;
                    let until = tokio::time::Instant::from_std(*ORIGIN + until);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = interrupt.cancelled(), if !interrupted => {
                            interrupted = true;
                            machine.handle(Input::Interrupt { published: false }, now());
                        }
                    }
                }
                // Every wait below may be connecting to the broker (up to --connect-timeout, and
                // a broker out of file handles never answers its handshake): each is raced with
                // the user's Ctrl-C like the wait for a reply, so Ctrl-C is acted on at once.
                Action::Send { request, not_after } => {
                    let send = self.send(route, &request, not_after);
                    let sent = tokio::select! {
                        sent = send => sent,
                        // Only a complete, after the end, can be sent before a first Ctrl-C: it is
                        // best effort, and given up (the agent cleans the ticket up later).
                        _ = interrupt.cancelled(), if !interrupted => {
                            interrupted = true;
                            Err(RpcError::Cancelled)
                        }
                    };
                    machine.handle(Input::Sent(sent), now());
                }
                Action::CountConsumers(kind) => {
                    let count = self.rpc.consumers(route, kind);
                    tokio::select! {
                        count = count => machine.handle(Input::Consumers(count), now()),
                        // Before the capabilities request: nothing was published.
                        _ = interrupt.cancelled(), if !interrupted => {
                            interrupted = true;
                            machine.handle(Input::Interrupt { published: false }, now());
                        }
                    }
                }
                Action::Learned(kind) => self.capabilities.put(route, kind),
                Action::LegacyNotice(notice) => {
                    if self.capabilities.first_warning(route) {
                        events(Event::Notice(notice));
                    }
                }
                Action::Emit(event) => {
                    if let Event::Retry { request, .. } = &event {
                        self.metrics.retry(*request);
                    }
                    events(event);
                }
                Action::Done(outcome) => return outcome,
            }
        }
    }
}

/// An attempt waiting for its reply.
type InFlight<'a> = Pin<Box<dyn Future<Output = Result<Reply, RpcError>> + Send + 'a>>;

/// The origin of the machines' monotonic time.
static ORIGIN: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

/// The time, as the machines take it.
fn now() -> Now {
    Now { mono: ORIGIN.elapsed(), wall: SystemTime::now() }
}
