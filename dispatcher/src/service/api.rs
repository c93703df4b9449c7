//! The `/v1` API's handlers and what they take and answer (the router, [`super::router`], serves
//! them and documents them): scripts submitted through [`crate::plan`], tickets and their events
//! read from the journal, cancels, history, the agents, metrics and health.

use super::journal::{HistoryQuery, JournalEvent, Recorded, TicketRecord};
use super::resume::PlaceWait;
use super::state::{parse_ticket, receipt_of, record_of, ApiError, ErrorBody, Shared, Who};
use crate::event::JsonEvent;
use crate::plan::{self, Plan, PolicyChoice, ScriptDraft, ScriptInputs, Targets, Tickets};
use crate::policy::{Overrides, Purpose};
use crate::route::Route;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use contracts::submission::outcome::OutcomeKind;
use contracts::wire::messages::{Isolation, ScriptLimits, ScriptSpec, Shell};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

/// Most tickets one history request returns.
pub(crate) const MAX_HISTORY_LIMIT: usize = 1000;

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ShellName {
    #[default]
    Sh,
    Bash,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IsolationName {
    #[default]
    None,
    Full,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PurposeName {
    #[default]
    Deployment,
    Runbook,
    HealthCheck,
}

/// A script to run on one agent, several agents, or any worker of a pool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    /// One agent id.
    pub(super) target: Option<String>,
    /// Several agent ids: one ticket each.
    pub(super) targets: Option<Vec<String>>,
    /// A worker pool: any one worker runs the script.
    pub(super) pool: Option<String>,
    /// The script text.
    script: String,
    #[serde(default)]
    shell: ShellName,
    /// Environment variables for the script.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Arguments for the script: its `$1`, `$2`, ...
    #[serde(default)]
    args: Vec<String>,
    /// Files put into the script's workspace before it starts. Script, files, arguments and
    /// environment together must fit in one command (15 MiB).
    #[serde(default)]
    files: Vec<FileBody>,
    /// Secret environment variables: set for the script, masked (`********`) in its output by the
    /// agent, never journaled (kept in this replica's memory only until the ticket ends).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub(super) secret_env: contracts::wire::messages::Secrets,
    /// Longest run time, e.g. `90s`; the script is killed past it.
    timeout: Option<String>,
    #[serde(default)]
    isolation: IsolationName,
    /// Isolation mutex name (default with `full` isolation: `RunningScript`).
    mutex: Option<String>,
    /// Longest wait for the isolation mutex, e.g. `5m`.
    mutex_timeout: Option<String>,
    /// The user the script runs as on the agent, which must allow it (its `--allow-run-as`);
    /// default: the agent's `--default-run-as`, else the agent's own user.
    run_as: Option<String>,
    /// The most memory the script may have, e.g. `256MiB`, within the agent's cap; past it the
    /// script is killed (default: the agent's cap).
    memory_max: Option<String>,
    /// The most CPU the script may use, in cores, e.g. `0.5` (default: the agent's cap).
    cpu_max: Option<String>,
    /// The most processes and threads the script may have at once (default: the agent's cap).
    tasks_max: Option<u32>,
    /// The largest file the script may write, e.g. `100MiB` (default: the agent's cap).
    file_size_max: Option<String>,
    /// Machine policy to use instead of the one the target maps to.
    pub(super) policy: Option<String>,
    #[serde(default)]
    pub(super) purpose: PurposeName,
    /// With several targets: how many run at once (default 10).
    pub(super) max_parallel: Option<usize>,
}

/// A file for the script's workspace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileBody {
    /// A plain file name (no directories).
    name: String,
    /// The content, base64 (standard alphabet, padded).
    content_base64: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Accepted {
    pub tickets: Vec<AcceptedTicket>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AcceptedTicket {
    pub ticket: String,
    pub target: String,
    /// Where to read it.
    pub url: String,
}

/// One line of a script's output.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct OutputLine {
    pub seq: u64,
    /// `stdout`, `stderr` or `agent`.
    pub stream: String,
    pub text: String,
    /// Unix milliseconds when the agent read the line.
    pub at: u64,
}

/// A ticket as the journal knows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TicketView {
    pub ticket: String,
    pub target: String,
    /// `agent` or `pool`.
    pub route: String,
    /// `queued`, `awaiting-approval` (not sent until the approvals its target's rules require
    /// are in: `dispatcher approve`), `running` or `finished`.
    pub state: String,
    /// The purpose the command is signed with (`deployment`, `runbook`, `health-check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The ids of the keys that approved it so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
    /// `completed`, `cancelled`, `unknown` or `failed`, once finished.
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub retries: u64,
    pub cancel_requested: bool,
    pub who: String,
    pub policy: String,
    pub script_digest: String,
    /// Unix milliseconds.
    pub submitted_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// Sequence number of the last output line recorded.
    pub last_seq: u64,
    /// Output lines after `?after=` (only on `GET /v1/tickets/{ticket}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Vec<OutputLine>>,
    /// The run's receipt, signed by its agent, once it came (only on `GET /v1/tickets/{ticket}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<super::receipts::ReceiptView>,
}

impl TicketView {
    pub(crate) fn from_record(record: &TicketRecord) -> Self {
        let s = &record.submission;
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        TicketView {
            ticket: s.ticket.to_string(),
            target: s.target.clone(),
            route: s.route.clone(),
            state: record.state.clone(),
            purpose: s.spec.purpose.clone(),
            approvals: record.approvals.iter().map(|a| a.key.clone()).collect(),
            outcome: record.finished.as_ref().map(|f| f.outcome.name().to_owned()),
            exit_code: record.finished.as_ref().and_then(|f| f.exit_code),
            error: record.finished.as_ref().and_then(|f| f.error.clone()),
            retries: record.retries,
            cancel_requested: record.cancel_requested,
            who: s.who.clone(),
            policy: s.policy.clone(),
            script_digest: s.script_digest.clone(),
            submitted_at: s.submitted_ms,
            started_at: record.planned.as_ref().map(|p| ms(p.issued_at)),
            finished_at: record.finished_ms,
            last_seq: record.last_seq,
            output: None,
            receipt: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct TicketList {
    pub tickets: Vec<TicketView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AgentList {
    /// Per target: `target`, `route`, `reachable`, `protocol`, `services`, `agent_version`,
    /// `error`, `seen_ms` (when the service last asked).
    pub agents: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `degraded` when the journal does not answer.
    pub status: String,
    pub journal: String,
    pub replica: String,
    /// Tickets this replica follows now.
    pub following: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct AfterQuery {
    /// Only output lines after this sequence number.
    after: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    /// Only tickets of this agent or pool.
    pub target: Option<String>,
    /// Only tickets that ended so: `completed`, `cancelled`, `unknown`, `failed`.
    pub outcome: Option<String>,
    /// Only tickets submitted since: a duration ago (`2h`) or unix milliseconds.
    pub since: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Why a request's files or time limits cannot be read.
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("file {name:?}: content_base64 is not base64: {source}")]
    Base64 { name: String, source: base64::DecodeError },
    #[error("{what} {raw:?} is not a duration like 90s or 5m: {source}")]
    Duration { what: &'static str, raw: String, source: humantime::DurationError },
}

fn parse_duration(what: &'static str, raw: &Option<String>) -> Result<Option<Duration>, InputError> {
    raw.as_deref()
        .map(|raw| {
            humantime::parse_duration(raw).map_err(|source| InputError::Duration { what, raw: raw.to_owned(), source })
        })
        .transpose()
}

impl From<PurposeName> for Purpose {
    fn from(purpose: PurposeName) -> Purpose {
        match purpose {
            PurposeName::Deployment => Purpose::Deployment,
            PurposeName::Runbook => Purpose::Runbook,
            PurposeName::HealthCheck => Purpose::HealthCheck,
        }
    }
}

/// The routes of a request that names exactly one of `target`, `targets` or `pool`.
pub(super) fn routes_of(request: &SubmitRequest) -> Result<Vec<Route>, ApiError> {
    let agents = |ids: Vec<String>| Targets::Agents { ids, given_as: "target" };
    let targets = match (&request.target, &request.targets, &request.pool) {
        (Some(agent), None, None) => agents(vec![agent.clone()]),
        (None, Some(ids), None) if !ids.is_empty() => agents(ids.clone()),
        (None, None, Some(pool)) => Targets::Pool(pool.clone()),
        _ => return Err(ApiError::bad_request("give exactly one of `target`, `targets` (not empty) or `pool`")),
    };
    plan::routes(targets).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The limits a request names, each read as the CLI reads it.
fn limits_of(request: &SubmitRequest) -> Result<ScriptLimits, ApiError> {
    use contracts::agent::limits::{parse_cores, parse_size};
    let bad = |field: &str, error: contracts::agent::limits::LimitValueError| {
        ApiError::bad_request(format!("`{field}`: {error}"))
    };
    let size =
        |field: &str, raw: &Option<String>| raw.as_deref().map(parse_size).transpose().map_err(|e| bad(field, e));
    Ok(ScriptLimits {
        memory_max: size("memory_max", &request.memory_max)?,
        cpu_max: request.cpu_max.as_deref().map(parse_cores).transpose().map_err(|e| bad("cpu_max", e))?,
        tasks_max: match request.tasks_max {
            Some(0) => return Err(ApiError::bad_request("`tasks_max` must be at least 1")),
            tasks => tasks,
        },
        file_size_max: size("file_size_max", &request.file_size_max)?,
    })
}

/// The script spec of a request: the script checked, then its files decoded and its time
/// limits read.
pub(super) fn spec_of(request: &SubmitRequest) -> Result<ScriptSpec, ApiError> {
    let draft = ScriptDraft {
        script: request.script.clone(),
        shell: match request.shell {
            ShellName::Sh => Shell::Sh,
            ShellName::Bash => Shell::Bash,
        },
        args: request.args.clone(),
        env: request.env.clone(),
        isolation: match request.isolation {
            IsolationName::None => Isolation::None,
            IsolationName::Full => Isolation::Full,
        },
        mutex: request.mutex.clone(),
        run_as: request.run_as.clone(),
        limits: limits_of(request)?,
    };
    let inputs = || {
        let mut files = Vec::with_capacity(request.files.len());
        for file in &request.files {
            use base64::Engine;
            let content = base64::engine::general_purpose::STANDARD
                .decode(&file.content_base64)
                .map_err(|source| InputError::Base64 { name: file.name.clone(), source })?;
            files.push(contracts::wire::messages::ScriptFile { name: file.name.clone(), content });
        }
        Ok::<_, InputError>(ScriptInputs {
            files,
            secret_env: request.secret_env.clone(),
            mutex_timeout: parse_duration("mutex_timeout", &request.mutex_timeout)?,
            timeout: parse_duration("timeout", &request.timeout)?,
        })
    };
    plan::script_spec(draft, inputs).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Runs a script: records one ticket per target, then starts them; answers once recorded.
#[utoipa::path(post, path = "/v1/scripts", request_body = SubmitRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeated request with the same key gets the same tickets instead of running again")),
    responses((status = 202, description = "Recorded and starting", body = Accepted),
              (status = 400, description = "Invalid request", body = ErrorBody),
              (status = 401, description = "No or unknown API token", body = ErrorBody),
              (status = 409, description = "Idempotency-Key used before for another script", body = ErrorBody),
              (status = 415, description = "The body is not `application/json`", body = ErrorBody),
              (status = 503, description = "The journal does not answer", body = ErrorBody)))]
pub(super) async fn submit(
    State(state): Shared,
    axum::Extension(who): axum::Extension<Who>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let request: SubmitRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let idempotency_key = idempotency_key(&headers)?;
    let routes = routes_of(&request)?;
    let spec = spec_of(&request)?;
    let choice = PolicyChoice {
        policy: request.policy.clone(),
        purpose: Some(request.purpose.into()),
        overrides: Overrides::default(),
    };
    let plan = Plan::new(routes, spec, &choice, &state.policies).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tickets = match &idempotency_key {
        Some(key) => Tickets::Idempotent { who: &who.0, key },
        None => Tickets::Fresh,
    };
    let planned = plan.submissions(tickets, &who.0);
    let followers = &state.followers;
    // Recorded before anything is sent: from here a restart (or another replica) resumes them.
    let mut new = Vec::with_capacity(planned.len());
    for submission in &planned {
        let recorded = edge::clock::observe(
            &followers.orchestrator.metrics().common.store,
            "submit",
            followers.journal.submit(submission),
        );
        new.push(match recorded.await? {
            Recorded::New => true,
            Recorded::Earlier(earlier) if earlier.script_digest == submission.script_digest => false,
            Recorded::Earlier(_) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "this Idempotency-Key was used before for a different script; use a new key for a new request",
                ))
            }
        });
    }
    let places = (planned.len() > 1).then(|| Arc::new(Semaphore::new(request.max_parallel.unwrap_or(10).max(1))));
    let mut tickets = Vec::new();
    for (submission, new) in planned.into_iter().zip(new) {
        let ticket = submission.ticket;
        if new {
            tracing::info!(ticket = %ticket, target = %submission.target, who = %who.0, "script submitted");
        }
        if new && followers.leases.acquire(&ticket).await? {
            let place: Option<PlaceWait> = places.clone().map(|places| -> PlaceWait {
                Box::pin(async move { places.acquire_owned().await.expect("never closed") })
            });
            followers.follow_new(ticket.clone(), place, plan.spec.secret_env.clone());
        }
        tickets.push(AcceptedTicket {
            url: format!("/v1/tickets/{ticket}"),
            ticket: ticket.to_string(),
            target: submission.target,
        });
    }
    Ok((StatusCode::ACCEPTED, Json(Accepted { tickets })))
}

/// The `Idempotency-Key` header, if given: a repeated request with the same key (and the same
/// script) gets the same tickets back instead of running the script again.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| (1..=200).contains(&k.len()) && k.chars().all(|c| c.is_ascii_graphic()));
    key.map(|k| Some(k.to_owned()))
        .ok_or_else(|| ApiError::bad_request("Idempotency-Key must be 1 to 200 visible ASCII characters"))
}

/// A ticket: target, state, outcome, exit code, retries, timings and output.
#[utoipa::path(get, path = "/v1/tickets/{ticket}", params(("ticket" = String, Path, description = "The ticket"), AfterQuery),
    security(("bearer" = [])),
    responses((status = 200, body = TicketView), (status = 404, description = "Unknown or expired ticket", body = ErrorBody)))]
pub(super) async fn ticket(
    State(state): Shared,
    Path(raw): Path<String>,
    Query(query): Query<AfterQuery>,
) -> Result<Json<TicketView>, ApiError> {
    let ticket = parse_ticket(&raw)?;
    let record = record_of(&state, &ticket).await?;
    let after = query.after.unwrap_or(0);
    let output = (state.followers.journal.all_events(&ticket).await?.into_iter())
        .filter_map(|event| match event.event {
            JsonEvent::Log { seq, stream, text, at, .. } if seq > after => Some(OutputLine { seq, stream, text, at }),
            _ => None,
        })
        .collect();
    let mut view = TicketView::from_record(&record);
    view.output = Some(output);
    view.receipt = receipt_of(&state, &record);
    Ok(Json(view))
}

/// The ticket's events, live, as server-sent events (`ticket`, `log`, `retry`, `notice`, `warning`, and
/// `result` last); `Last-Event-ID` resumes after an event.
#[utoipa::path(get, path = "/v1/tickets/{ticket}/events", params(("ticket" = String, Path, description = "The ticket")),
    security(("bearer" = [])),
    responses((status = 200, description = "text/event-stream of JSON events", content_type = "text/event-stream", body = String),
              (status = 404, description = "Unknown or expired ticket", body = ErrorBody)))]
pub(super) async fn events(
    State(state): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let ticket = parse_ticket(&raw)?;
    record_of(&state, &ticket).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| id.split_once('-').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()))
        .unwrap_or("0")
        .to_owned();
    let journal = state.followers.journal.clone();
    // A connection of its own: XREAD BLOCK holds it while waiting.
    let con = journal.blocking_connection().await?;
    struct Reading {
        con: deadpool_redis::Connection,
        after: String,
        pending: std::collections::VecDeque<JournalEvent>,
        done: bool,
    }
    let reading = Reading { con, after, pending: Default::default(), done: false };
    let stream = futures_util::stream::unfold(reading, move |mut r| {
        let (journal, ticket) = (journal.clone(), ticket.clone());
        async move {
            loop {
                if let Some(JournalEvent { id, event }) = r.pending.pop_front() {
                    r.done = matches!(event, JsonEvent::Result { .. });
                    let sse = SseEvent::default().id(id).event(event.name()).data(event.to_line());
                    return Some((Ok(sse), r));
                }
                if r.done {
                    return None;
                }
                match journal.wait_events(&mut r.con, &ticket, &r.after, Duration::from_secs(5)).await {
                    Ok(events) => {
                        if let Some(last) = events.last() {
                            r.after = last.id.clone();
                        }
                        r.pending.extend(events);
                    }
                    Err(error) => {
                        tracing::warn!(ticket = %ticket, %error, "event stream ends: the journal does not answer");
                        return None;
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Cancels a running script: whichever replica follows the ticket cancels it on the agent and
/// follows it until it has stopped.
#[utoipa::path(post, path = "/v1/tickets/{ticket}/cancel", params(("ticket" = String, Path, description = "The ticket")),
    security(("bearer" = [])),
    responses((status = 202, description = "Cancel requested", body = TicketView),
              (status = 404, description = "Unknown or expired ticket", body = ErrorBody),
              (status = 409, description = "Already finished", body = ErrorBody)))]
pub(super) async fn cancel(
    State(state): Shared,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<TicketView>), ApiError> {
    let ticket = parse_ticket(&raw)?;
    record_of(&state, &ticket).await?;
    let record = state
        .followers
        .journal
        .request_cancel(&ticket)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no ticket {ticket} in the journal")))?;
    if let Some(finished) = &record.finished {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("ticket {ticket} has already finished ({}); nothing to cancel", finished.outcome.name()),
        ));
    }
    let mut view = TicketView::from_record(&record);
    view.cancel_requested = true;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// History: tickets newest first.
#[utoipa::path(get, path = "/v1/tickets", params(HistoryParams), security(("bearer" = [])),
    responses((status = 200, body = TicketList), (status = 400, description = "Invalid filter", body = ErrorBody)))]
pub(super) async fn history(
    State(state): Shared,
    query: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TicketList>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let query = history_query(&params)?;
    let records = state.followers.journal.history(&query).await?;
    Ok(Json(TicketList { tickets: records.iter().map(TicketView::from_record).collect() }))
}

pub(crate) fn history_query(params: &HistoryParams) -> Result<HistoryQuery, ApiError> {
    let outcome = match params.outcome.as_deref() {
        None => None,
        Some("completed") => Some(OutcomeKind::Completed),
        Some("cancelled") => Some(OutcomeKind::Cancelled),
        Some("unknown") => Some(OutcomeKind::Unknown),
        Some("failed") => Some(OutcomeKind::Failed),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "outcome {other:?} is none of completed, cancelled, unknown, failed"
            )))
        }
    };
    let since_ms = match params.since.as_deref() {
        None => None,
        Some(raw) => Some(since_millis(raw).map_err(|e| ApiError::bad_request(e.to_string()))?),
    };
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_HISTORY_LIMIT}")));
    }
    if let Some(target) = &params.target {
        contracts::wire::topology::validate_name("target", target).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(HistoryQuery { target: params.target.clone(), outcome, since_ms, limit })
}

/// A `since` that is neither a duration ago nor unix milliseconds (`source`: why it is no duration).
#[derive(Debug, thiserror::Error)]
#[error("since {raw:?} is neither a duration ago (like 2h) nor unix milliseconds")]
pub(crate) struct SinceError {
    raw: String,
    source: humantime::DurationError,
}

/// `since` as unix milliseconds: a duration ago (`2h`) or unix milliseconds.
pub(crate) fn since_millis(raw: &str) -> Result<u64, SinceError> {
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    let ago = humantime::parse_duration(raw).map_err(|source| SinceError { raw: raw.to_owned(), source })?;
    Ok(contracts::time::unix_millis(SystemTime::now() - ago))
}

/// The last known capabilities and health of every target the service has run scripts on.
#[utoipa::path(get, path = "/v1/agents", security(("bearer" = [])), responses((status = 200, body = AgentList)))]
pub(super) async fn agents(State(state): Shared) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList { agents: state.followers.journal.agents().await? }))
}

/// The service's metrics in the Prometheus (OpenMetrics) text format; no token needed: they
/// hold counts by kind, outcome and reason, never a ticket, target or script.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text", content_type = "application/openmetrics-text", body = String)))]
pub(super) async fn metrics(State(state): Shared) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, contracts::metrics::CONTENT_TYPE)], state.followers.orchestrator.metrics().encode())
}

/// Liveness and whether the journal answers (503 when it does not).
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub(super) async fn healthz(State(state): Shared) -> (StatusCode, Json<Health>) {
    let followers = &state.followers;
    let (status, journal) = match followers.journal.ping().await {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
    };
    let health = Health {
        status: if status == StatusCode::OK { "ok" } else { "degraded" }.into(),
        journal,
        replica: followers.leases.replica.clone(),
        following: followers.following(),
    };
    (status, Json(health))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<SubmitRequest, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn a_request_names_exactly_one_kind_of_target() {
        let one = request(serde_json::json!({"target": "a", "script": "true"})).unwrap();
        assert_eq!(routes_of(&one).unwrap(), vec![Route::Agent("a".into())]);
        let both = request(serde_json::json!({"target": "a", "pool": "p", "script": "true"})).unwrap();
        assert!(routes_of(&both).unwrap_err().message.contains("exactly one"));
        let twice = request(serde_json::json!({"targets": ["a", "a"], "script": "true"})).unwrap();
        assert!(routes_of(&twice).unwrap_err().message.contains("twice"));
        let bad = request(serde_json::json!({"target": "a b", "script": "true"})).unwrap();
        assert_eq!(routes_of(&bad).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused_with_the_reason() {
        let typo = request(serde_json::json!({"target": "a", "script": "true", "timout": "5s"})).unwrap_err();
        assert!(typo.to_string().contains("unknown field `timout`"), "{typo}");
        let slow = request(serde_json::json!({"target": "a", "script": "true", "timeout": "soon"})).unwrap();
        assert!(spec_of(&slow).unwrap_err().message.contains("not a duration"));
        let ok =
            request(serde_json::json!({"target": "a", "script": "true", "timeout": "2s", "shell": "bash"})).unwrap();
        let spec = spec_of(&ok).unwrap();
        assert_eq!((spec.execution_timeout, spec.shell), (Some(2000), Shell::Bash));
    }

    #[test]
    fn history_filters_are_checked() {
        let params = |outcome: Option<&str>, since: Option<&str>, limit| HistoryParams {
            target: None,
            outcome: outcome.map(str::to_owned),
            since: since.map(str::to_owned),
            limit,
        };
        assert!(history_query(&params(Some("won"), None, None)).is_err());
        assert!(history_query(&params(None, Some("yesterday"), None)).is_err());
        assert!(history_query(&params(None, None, Some(0))).is_err());
        let ok = history_query(&params(Some("failed"), Some("1h"), Some(5))).unwrap();
        assert_eq!((ok.outcome, ok.limit), (Some(OutcomeKind::Failed), 5));
        let hour_ago = contracts::time::unix_millis(SystemTime::now()) - 3_600_000;
        assert!(ok.since_ms.unwrap().abs_diff(hour_ago) < 5_000);
    }
}
