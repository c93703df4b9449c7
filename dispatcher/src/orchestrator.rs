//! The script orchestrator: start a script under a ticket of our own, follow its log to the end,
//! complete it. Every request goes through the retry executor; Ctrl-C (the `interrupt` token)
//! cancels the script on the agent and follows it until it has stopped.

use crate::error::RpcError;
use crate::follow::LogFollower;
use crate::metrics::Metrics;
use crate::negotiate::{AgentKind, CapabilityCache, ProtocolMode, ScriptProtocol};
use crate::outcome::Outcome;
use crate::retry::{self, GaveUp, RetryNotice, RetryPolicy};
use crate::route::Route;
use crate::rpc::{CallTiming, RpcClient};
use contracts::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Timing of the requests the orchestrator makes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long one attempt waits for a reply (on top of any wait asked of the agent).
    pub attempt_timeout: Duration,
    /// How long the agent may hold a status request for new output.
    pub status_wait: Duration,
    /// How long the agent may hold the start reply for first output or the end.
    pub start_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            attempt_timeout: Duration::from_secs(10),
            status_wait: Duration::from_secs(5),
            start_wait: Duration::from_millis(500),
        }
    }
}

/// What happens during a submission, for the user to see.
#[derive(Clone, Debug)]
pub enum Event {
    /// The ticket chosen for the script, before anything is sent.
    Ticket {
        ticket: Ticket,
        target: String,
    },
    Log(LogLine),
    /// A request failed and will be repeated.
    Retry {
        request: Kind,
        notice: RetryNotice,
    },
    /// Something the user should know (one line, lowercase).
    Notice(String),
    /// Something the user should worry about: a forged answer ignored, an agent believed
    /// unsigned because it is pinned as legacy (one line, lowercase).
    Warning(String),
}

/// Where events go. Called from the submission's task; must be quick.
pub type EventSink<'a> = &'a (dyn Fn(Event) + Send + Sync);

/// How often a legacy (v1) agent is asked for status: it cannot hold the request.
const V1_POLL: Duration = Duration::from_millis(250);

/// How long a user's cancel is repeated when retries are off: it must get through even so.
pub const CANCEL_REPEAT: Duration = Duration::from_secs(30);

/// The retry policy of a user's cancel: the command's, or [`CANCEL_REPEAT`] when that one does
/// not retry, since a cancel that does not get through leaves the script running.
pub fn cancel_policy(policy: RetryPolicy) -> RetryPolicy {
    if policy.enabled {
        policy
    } else {
        RetryPolicy::new(CANCEL_REPEAT)
    }
}

/// The retry policies of one submission: for the script's requests, and for the capabilities
/// request that comes first (the machine policy's health-check duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies {
    pub script: RetryPolicy,
    pub health: RetryPolicy,
}

impl From<RetryPolicy> for Policies {
    fn from(policy: RetryPolicy) -> Self {
        Policies { script: policy, health: policy }
    }
}

/// A start planned under a ticket chosen (and recorded, by the service) before anything is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStart {
    pub ticket: Ticket,
    /// When the first start was issued (`first_issued_at` on the wire).
    pub issued_at: SystemTime,
    /// The agent refuses the start after this, and the dispatcher stops repeating it.
    pub not_after: SystemTime,
}

/// Sends requests to agents and follows scripts.
#[derive(Clone)]
pub struct Orchestrator {
    rpc: Arc<RpcClient>,
    pub timing: Timing,
    /// Negotiate (the default), or speak only script v1 as dispatchers did before.
    pub protocol: ProtocolMode,
    capabilities: Arc<CapabilityCache>,
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
            let wait = if policy.enabled { policy.duration } else { self.timing.attempt_timeout };
            events(Event::Notice(format!(
                "no agent is consuming {}; waiting up to {}",
                route.queue(Kind::GetCapabilities),
                crate::retry::short(wait)
            )));
        }
        let kind = match self.capabilities(route, policy, events).await {
            Ok(caps) => AgentKind::Current(caps),
            Err(gave_up) if gave_up.error.agent_error() == Some(ErrorKind::Unsupported) => AgentKind::Legacy,
            Err(gave_up) => return Err(gave_up),
        };
        self.capabilities.put(route, kind.clone());
        Ok(kind)
    }

    /// The script service to use with `route`.
    async fn script_protocol(
        &self,
        route: &Route,
        policy: RetryPolicy,
        events: EventSink<'_>,
    ) -> Result<ScriptProtocol, GaveUp> {
        if self.protocol == ProtocolMode::V1 {
            return Ok(ScriptProtocol::V1);
        }
        let kind = self.agent_kind(route, policy, events).await?;
        let protocol = kind.script_protocol().ok_or_else(|| GaveUp {
            error: RpcError::Codec(format!("{route} supports no script service this dispatcher knows")),
            elapsed: Duration::ZERO,
            attempts: 1,
        })?;
        if kind == AgentKind::Legacy && self.capabilities.first_warning(route) {
            events(Event::Notice(format!(
                "{route} is a legacy agent (script v1 only): retries are off for it, since a repeated start could run a script twice; upgrade the agent to turn them on"
            )));
        }
        Ok(protocol)
    }

    /// Refuses to send secrets to an agent that cannot mask them (it does not list
    /// [`SERVICE_SECRET_MASKING`]): it would print them in clear. Nothing is sent then.
    async fn check_secrets(
        &self,
        route: &Route,
        spec: &ScriptSpec,
        policy: RetryPolicy,
        events: EventSink<'_>,
    ) -> Result<(), GaveUp> {
        if spec.secret_env.is_empty() {
            return Ok(());
        }
        let masks = match self.protocol {
            ProtocolMode::V1 => false,
            ProtocolMode::Auto => self.agent_kind(route, policy, events).await?.masks_secrets(),
        };
        if masks {
            return Ok(());
        }
        Err(GaveUp {
            error: RpcError::Agent {
                target: route.name().to_owned(),
                error: ErrorReply::new(
                    ErrorKind::Unsupported,
                    format!("{route} is too old to mask secrets (it does not list {SERVICE_SECRET_MASKING}): upgrade it, or pass the value without --secret-env; nothing was sent"),
                ),
            },
            elapsed: Duration::ZERO,
            attempts: 1,
        })
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
        let published = AtomicBool::new(false);
        self.request_noting_publish(route, request, policy, extra_wait, not_after, events, &published).await
    }

    /// [`Orchestrator::request`], setting `published` once any attempt may have reached the broker.
    #[allow(clippy::too_many_arguments)]
    async fn request_noting_publish(
        &self,
        route: &Route,
        request: &Request,
        policy: RetryPolicy,
        extra_wait: Duration,
        not_after: Option<SystemTime>,
        events: EventSink<'_>,
        published: &AtomicBool,
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
                let sent = std::time::Instant::now();
                let timing = CallTiming { reply_timeout, not_after };
                let reply = self.rpc.call_noting_publish(route, request, timing, published, warn).await;
                self.metrics.attempt(kind, sent.elapsed(), reply.as_ref().map(|_| ()));
                reply
            },
        )
        .await
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
        topology::validate_name("agent id", &agent).map_err(|e| GaveUp {
            error: RpcError::Codec(format!("a worker of {route} answered as {e}")),
            elapsed: Duration::ZERO,
            attempts: 1,
        })?;
        Ok(Route::Worker { pool: pool.clone(), agent })
    }

    /// A script-service request whose reply must be a status.
    async fn status_request(
        &self,
        route: &Route,
        request: &Request,
        policy: RetryPolicy,
        extra_wait: Duration,
        not_after: Option<SystemTime>,
        events: EventSink<'_>,
    ) -> Result<ScriptStatus, GaveUp> {
        expect_status(self.request(route, request, policy, extra_wait, not_after, events).await?)
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
            other => Err(GaveUp {
                error: RpcError::Codec(format!("expected capabilities, got {}", other.kind())),
                elapsed: Duration::ZERO,
                attempts: 1,
            }),
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
        let policies = policies.into();
        let protocol = match self.negotiate(route, policies.health, events, interrupt).await {
            None => return Outcome::not_sent(None, route.name()),
            Some(Err(gave_up)) => {
                return Outcome::from_error(None, route.name(), &gave_up.error, gave_up.to_string(), false)
            }
            Some(Ok(protocol)) => protocol,
        };
        if let Err(gave_up) = self.check_secrets(route, &spec, policies.health, events).await {
            return Outcome::from_error(None, route.name(), &gave_up.error, gave_up.error.to_string(), false);
        }
        match protocol {
            ScriptProtocol::V2 => self.submit_v2(route, spec, policies.script, events, interrupt).await,
            ScriptProtocol::V1 => self.submit_v1(route, spec, events, interrupt).await,
        }
    }

    /// [`Orchestrator::script_protocol`], or `None` at once on `interrupt`: nothing is sent
    /// after it (the capabilities request being repeated is dropped).
    async fn negotiate(
        &self,
        route: &Route,
        policy: RetryPolicy,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Option<Result<ScriptProtocol, GaveUp>> {
        tokio::select! {
            protocol = self.script_protocol(route, policy, events) => Some(protocol),
            _ = interrupt.cancelled() => None,
        }
    }

    /// Script v1, the way dispatchers did before resilient communications: the agent makes the
    /// ticket, and the start is repeated only if it surely never reached the broker.
    async fn submit_v1(
        &self,
        route: &Route,
        spec: ScriptSpec,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let start = Request::StartScriptV1(StartScriptV1 { spec });
        let published = AtomicBool::new(false);
        let timing = CallTiming {
            reply_timeout: self.timing.attempt_timeout,
            not_after: SystemTime::now() + self.timing.attempt_timeout,
        };
        let warn = |warning| events(Event::Warning(warning));
        let call = self.rpc.call_noting_publish(route, &start, timing, &published, &warn);
        tokio::pin!(call);
        let call = tokio::select! {
            call = &mut call => call,
            _ = interrupt.cancelled() => {
                if !published.load(Ordering::Acquire) {
                    return Outcome::not_sent(None, route.name());
                }
                // The start may have reached the agent, which makes the ticket: its answer names
                // the script to cancel (following it below sees the interrupt at once).
                call.await
            }
        };
        let status = match call {
            Ok(reply) => match expect_status(reply) {
                Ok(status) => status,
                Err(gave_up) => {
                    return Outcome::from_error(None, route.name(), &gave_up.error, gave_up.to_string(), false)
                }
            },
            Err(error) => {
                // An agent that answered (even "try again") said the start did not run.
                let answered = matches!(error, RpcError::Agent { .. });
                let reached = published.load(Ordering::Acquire) && error.is_transient() && !answered;
                let error = if reached { RpcError::Unrepeatable(error.to_string()) } else { error };
                let message = if reached { format!("{error}; its outcome is unknown") } else { error.to_string() };
                let mut outcome = Outcome::from_error(None, route.name(), &error, message, reached);
                if answered {
                    // Refused, even if only for now: its start is never repeated.
                    outcome.process_exit = crate::outcome::exit::REJECTED;
                }
                return outcome;
            }
        };
        let ticket = status.ticket.clone();
        events(Event::Ticket { ticket: ticket.clone(), target: route.name().to_owned() });
        let mut follower = LogFollower::after(0);
        emit_logs(&mut follower, &status, events);
        let outcome = self
            .follow_to_end(route, &ticket, follower, status, RetryPolicy::once(), ScriptProtocol::V1, events, interrupt)
            .await;
        if outcome.exit_code.is_some() {
            let complete = Request::CompleteScriptV1(CompleteScriptV1 { ticket: ticket.clone() });
            if let Err(error) = self.rpc.send(route, &complete, SystemTime::now() + self.timing.attempt_timeout).await {
                events(Event::Notice(format!("could not complete ticket {ticket}: {error}")));
            }
        }
        outcome
    }

    /// Script v2: a ticket of our own, every request repeated until the deadline.
    async fn submit_v2(
        &self,
        route: &Route,
        spec: ScriptSpec,
        policy: RetryPolicy,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let plan = self.plan_start(Ticket::generate(), policy);
        events(Event::Ticket { ticket: plan.ticket.clone(), target: route.name().to_owned() });
        let outcome = self.start_v2(route, &plan, spec, policy, LogFollower::after(0), events, interrupt).await;
        self.complete_after(route, &plan.ticket, &outcome, policy, events).await;
        outcome
    }

    /// A start of `ticket` under `policy`, from now: the deadline after which the agent refuses it.
    pub fn plan_start(&self, ticket: Ticket, policy: RetryPolicy) -> PlannedStart {
        let issued_at = SystemTime::now();
        // The agent must not start the script after we stop trying: a copy stuck in a queue
        // expires there, and the agent refuses one past this deadline.
        PlannedStart { ticket, issued_at, not_after: issued_at + policy.duration.max(self.timing.attempt_timeout) }
    }

    /// Runs a script under a start planned (and recorded) beforehand and follows it after line
    /// `last_seen`, without completing it, so the caller can record the outcome first. Called
    /// again with the same plan after a crash, it never runs the script twice: within the plan's
    /// deadline the start is repeated (the agent answers a known ticket with its status), past it
    /// the ticket is only asked for. Script v2 only: a legacy agent makes its own tickets.
    #[allow(clippy::too_many_arguments)]
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
        let ticket = &plan.ticket;
        if let Err(gave_up) = self.check_secrets(route, &spec, policies.health, events).await {
            let message = gave_up.error.to_string();
            return Outcome::from_error(Some(ticket.clone()), route.name(), &gave_up.error, message, false);
        }
        match self.negotiate(route, policies.health, events, interrupt).await {
            None => return Outcome::not_sent(Some(ticket.clone()), route.name()),
            Some(Ok(ScriptProtocol::V2)) => {}
            Some(Ok(ScriptProtocol::V1)) => {
                let error = RpcError::Agent {
                    target: route.name().to_owned(),
                    error: ErrorReply::new(
                        ErrorKind::Unsupported,
                        "a legacy agent (script v1) makes its own tickets, so a submission to it cannot be recorded before it starts nor resumed; upgrade the agent",
                    ),
                };
                return Outcome::from_error(Some(ticket.clone()), route.name(), &error, error.to_string(), false);
            }
            Some(Err(gave_up)) => {
                return Outcome::from_error(
                    Some(ticket.clone()),
                    route.name(),
                    &gave_up.error,
                    gave_up.to_string(),
                    false,
                )
            }
        }
        let follower = LogFollower::after(last_seen);
        if SystemTime::now() < plan.not_after {
            return self.start_v2(route, plan, spec, policies.script, follower, events, interrupt).await;
        }
        let request =
            Request::GetStatusV2(GetStatusV2 { ticket: ticket.clone(), last_log_sequence: last_seen, wait: None });
        match self.status_request(route, &request, policies.script, Duration::ZERO, None, events).await {
            Ok(status) => {
                let mut follower = follower;
                emit_logs(&mut follower, &status, events);
                self.follow_to_end(
                    route,
                    ticket,
                    follower,
                    status,
                    policies.script,
                    ScriptProtocol::V2,
                    events,
                    interrupt,
                )
                .await
            }
            Err(gave_up) => {
                let message =
                    format!("lost contact with the script: {gave_up}; its outcome is unknown (ticket {ticket})");
                Outcome::from_error(Some(ticket.clone()), route.name(), &gave_up.error, message, true)
            }
        }
    }

    /// Starts `plan` (repeating the start until the deadline) and follows it to its end.
    #[allow(clippy::too_many_arguments)]
    async fn start_v2(
        &self,
        route: &Route,
        plan: &PlannedStart,
        spec: ScriptSpec,
        policy: RetryPolicy,
        mut follower: LogFollower,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        let ticket = &plan.ticket;
        let start = Request::StartScriptV2(StartScriptV2 {
            ticket: ticket.clone(),
            spec,
            wait_for_output: Some(self.timing.start_wait.as_millis() as u64),
            first_issued_at: Some(unix_millis(plan.issued_at)),
        });
        let published = AtomicBool::new(false);
        let started = tokio::select! {
            started = self.request_noting_publish(route, &start, policy, self.timing.start_wait, Some(plan.not_after), events, &published) => started.and_then(expect_status),
            _ = interrupt.cancelled() => {
                if !published.load(Ordering::Acquire) {
                    return Outcome::not_sent(Some(ticket.clone()), route.name());
                }
                // The start may have reached the agent: cancel it there, so it can never run. The
                // cancel lives in the queue as long as the start could.
                let cancel = CancelPlan { not_after: plan.not_after, start_sent: true };
                return self.cancel_and_follow(route, ticket, follower, policy, cancel, ScriptProtocol::V2, events).await;
            }
        };
        let status = match started {
            Ok(status) => status,
            Err(gave_up) => {
                // Some attempt reached the broker and no answer said it did not start: it may run.
                let started = published.load(Ordering::Acquire)
                    && !matches!(gave_up.error, RpcError::Agent { .. } | RpcError::Unroutable { .. });
                if started {
                    self.best_effort_cancel(route, ticket, ScriptProtocol::V2, events).await;
                }
                return Outcome::from_error(
                    Some(ticket.clone()),
                    route.name(),
                    &gave_up.error,
                    gave_up.to_string(),
                    started,
                );
            }
        };
        emit_logs(&mut follower, &status, events);
        self.follow_to_end(route, ticket, follower, status, policy, ScriptProtocol::V2, events, interrupt).await
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
        if outcome.exit_code.is_none() {
            return;
        }
        let complete = Request::CompleteScriptV2(CompleteScriptV2 { ticket: ticket.clone() });
        let not_after = SystemTime::now() + policy.duration.max(self.timing.attempt_timeout);
        if let Err(error) = self.rpc.send(route, &complete, not_after).await {
            events(Event::Notice(format!(
                "could not complete ticket {ticket} (the agent cleans it up later): {error}"
            )));
        }
    }

    /// Follows a ticket until its script is complete and every line is seen. On `interrupt`
    /// the script is cancelled and followed until it stops.
    #[allow(clippy::too_many_arguments)]
    pub async fn follow_to_end(
        &self,
        route: &Route,
        ticket: &Ticket,
        mut follower: LogFollower,
        mut status: ScriptStatus,
        policy: RetryPolicy,
        protocol: ScriptProtocol,
        events: EventSink<'_>,
        interrupt: &CancellationToken,
    ) -> Outcome {
        while !follower.has_everything(&status) {
            let request = match protocol {
                ScriptProtocol::V2 => Request::GetStatusV2(GetStatusV2 {
                    ticket: ticket.clone(),
                    last_log_sequence: follower.last_seen(),
                    wait: Some(self.timing.status_wait.as_millis() as u64),
                }),
                ScriptProtocol::V1 => {
                    if status.logs.is_empty() {
                        tokio::time::sleep(V1_POLL).await;
                    }
                    Request::GetStatusV1(GetStatusV1 {
                        ticket: ticket.clone(),
                        last_log_sequence: follower.last_seen(),
                    })
                }
            };
            let next = tokio::select! {
                next = self.status_request(route, &request, policy, self.timing.status_wait, None, events) => next,
                _ = interrupt.cancelled() => {
                    // The agent has answered for this ticket: if the cancel finds it unknown, the
                    // agent lost it (its store lost its data), which is not "nothing ran".
                    let cancel = CancelPlan::from_now(policy, self.timing, false);
                    return self.cancel_and_follow(route, ticket, follower, policy, cancel, protocol, events).await;
                }
            };
            match next {
                Ok(next) => {
                    emit_logs(&mut follower, &next, events);
                    status = next;
                }
                Err(gave_up) => {
                    self.best_effort_cancel(route, ticket, protocol, events).await;
                    let message =
                        format!("lost contact with the script: {gave_up}; its outcome is unknown (ticket {ticket})");
                    return Outcome::from_error(Some(ticket.clone()), route.name(), &gave_up.error, message, true);
                }
            }
        }
        Outcome::from_exit_code(ticket.clone(), route.name(), status.exit_code.unwrap_or(exit_code::FATAL))
    }

    /// Cancels the script and follows it until it has stopped (without further interrupts), in
    /// `protocol` (a legacy agent's script v1 has a cancel too). The cancel is repeated until the
    /// agent answers it (see [`cancel_policy`]), on v1 as well: unlike its start, a cancel is
    /// idempotent. When no agent consumes the queue, the cancel is left there, behind the start,
    /// and the user told so at once: the agent stops the script when it returns.
    #[allow(clippy::too_many_arguments)]
    async fn cancel_and_follow(
        &self,
        route: &Route,
        ticket: &Ticket,
        mut follower: LogFollower,
        policy: RetryPolicy,
        plan: CancelPlan,
        protocol: ScriptProtocol,
        events: EventSink<'_>,
    ) -> Outcome {
        let cancel = cancel_request(protocol, ticket, follower.last_seen());
        if self.rpc.consumers(route, cancel.kind()).await == Some(0) {
            return match self.rpc.send(route, &cancel, plan.not_after).await {
                Ok(()) => {
                    let message =
                        format!("cancel queued; the agent will stop the script when it returns (ticket {ticket})");
                    Outcome::from_error(Some(ticket.clone()), route.name(), &RpcError::Cancelled, message, false)
                }
                Err(error) => {
                    let message = format!(
                        "could not queue the cancel: {error}; the script's outcome is unknown (ticket {ticket})"
                    );
                    Outcome::from_error(Some(ticket.clone()), route.name(), &error, message, true)
                }
            };
        }
        events(Event::Notice(format!("cancelling ticket {ticket} on {route}")));
        let not_after = Some(plan.not_after);
        let status =
            match self.status_request(route, &cancel, cancel_policy(policy), Duration::ZERO, not_after, events).await {
                Ok(status) => status,
                Err(gave_up) if gave_up.error.agent_error() == Some(ErrorKind::Unsupported) => {
                    let message = format!(
                    "{route} cannot cancel scripts (it predates {}): left ticket {ticket} running; upgrade the agent",
                    cancel.kind()
                );
                    return Outcome::from_error(Some(ticket.clone()), route.name(), &gave_up.error, message, true);
                }
                Err(gave_up) => {
                    let message =
                        format!("could not cancel: {gave_up}; the script's outcome is unknown (ticket {ticket})");
                    return Outcome::from_error(Some(ticket.clone()), route.name(), &gave_up.error, message, true);
                }
            };
        emit_logs(&mut follower, &status, events);
        let uninterrupted = CancellationToken::new();
        let outcome =
            Box::pin(self.follow_to_end(route, ticket, follower, status, policy, protocol, events, &uninterrupted))
                .await;
        outcome.after_cancel(plan.start_sent)
    }

    /// Sends one cancel, without retries, after contact was lost: if it gets through, the script
    /// does not go on unwatched.
    async fn best_effort_cancel(
        &self,
        route: &Route,
        ticket: &Ticket,
        protocol: ScriptProtocol,
        events: EventSink<'_>,
    ) {
        let cancel = cancel_request(protocol, ticket, 0);
        if let Err(gave_up) = self.request(route, &cancel, RetryPolicy::once(), Duration::ZERO, None, events).await {
            tracing::debug!(ticket = %ticket, error = %gave_up, "best-effort cancel failed");
        }
    }

    /// Tells the agent the script's output is no longer needed, and waits for its answer. Best
    /// effort: a failure is only a notice, since the agent expires what is never completed.
    pub async fn complete(&self, route: &Route, ticket: &Ticket, events: EventSink<'_>) {
        let complete = Request::CompleteScriptV2(CompleteScriptV2 { ticket: ticket.clone() });
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
        self.status_request(route, &request, policy, Duration::ZERO, None, events).await
    }

    /// Cancels a ticket (given by the user) and follows it until it has stopped; with
    /// `--protocol v1`, as a legacy agent's script.
    pub async fn cancel(&self, route: &Route, ticket: &Ticket, policy: RetryPolicy, events: EventSink<'_>) -> Outcome {
        let plan = CancelPlan::from_now(policy, self.timing, false);
        let protocol = self.status_protocol();
        self.cancel_and_follow(route, ticket, LogFollower::after(0), policy, plan, protocol, events).await
    }
}

/// What a cancel needs to know of the start it stops.
#[derive(Clone, Copy, Debug)]
struct CancelPlan {
    /// Until when the cancel may act (its expiry in the queue): as long as the start could.
    not_after: SystemTime,
    /// Whether this dispatcher sent the start and no answer to it has come yet (then a ticket
    /// unknown to the agent is a start that will never run, see [`Outcome::after_cancel`]).
    start_sent: bool,
}

impl CancelPlan {
    /// A cancel of a start sent under `policy`, as long as such a start lives and at least as
    /// long as the cancel is repeated ([`cancel_policy`]).
    fn from_now(policy: RetryPolicy, timing: Timing, start_sent: bool) -> Self {
        let lives = policy.duration.max(cancel_policy(policy).duration).max(timing.attempt_timeout);
        CancelPlan { not_after: SystemTime::now() + lives, start_sent }
    }
}

/// The cancel of `ticket` in the script service `protocol`.
fn cancel_request(protocol: ScriptProtocol, ticket: &Ticket, last_log_sequence: u64) -> Request {
    let ticket = ticket.clone();
    match protocol {
        ScriptProtocol::V2 => Request::CancelScriptV2(CancelScriptV2 { ticket, last_log_sequence }),
        ScriptProtocol::V1 => Request::CancelScriptV1(CancelScriptV1 { ticket, last_log_sequence }),
    }
}

/// The status a script-service reply must carry.
fn expect_status(reply: Reply) -> Result<ScriptStatus, GaveUp> {
    match reply {
        Reply::ScriptStatus(status) => Ok(status),
        other => Err(GaveUp {
            error: RpcError::Codec(format!("expected a script status, got {}", other.kind())),
            elapsed: Duration::ZERO,
            attempts: 1,
        }),
    }
}

fn emit_logs(follower: &mut LogFollower, status: &ScriptStatus, events: EventSink<'_>) {
    for line in follower.accept(status) {
        events(Event::Log(line.clone()));
    }
}
