//! The `/v1/schedules` routes ([`crate::schedule`]): add (signed with the service's key), list,
//! remove, pause, resume and run now; and the view of a schedule that the API, `dispatcher
//! schedule list` and the web view show.

use super::api::{routes_of, spec_of, SubmitRequest};
use super::journal::{Finished, Journal, JournalResult};
use super::scheduler::{Fired, Refused};
use super::schedules::{RunRecord, RunRequest, StoredSchedule};
use super::state::{ApiError, ErrorBody, Shared, Who};
use crate::budget::Share;
use crate::policy::purpose_name;
use crate::schedule::{Cadence, Missed, ScheduleError, ScheduleSpec, ScheduleTargets, SlotKind};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use contracts::wire::labels::Selector;
use edge::clock::now_ms;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A schedule to add: when, where, what, and what to do with slots missed while every replica
/// was down.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleRequest {
    /// The schedule's name (letters, digits, `.`, `_`, `-`), unique in the journal.
    name: String,
    /// A cron expression: `MIN HOUR DOM MON DOW`, or six fields with a second first
    /// (`*/30 * * * * *`), or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    cron: String,
    /// The IANA time zone the expression is read in (default `UTC`).
    timezone: Option<String>,
    /// Instead of `run`'s `target`, `targets` or `pool`: the live agents matching this selector
    /// (`key=value,key!=value`) at each slot, a ticket each.
    select: Option<String>,
    /// `skip` (default) or `once`.
    #[serde(default)]
    missed: Missed,
    /// The script and where it runs, as `POST /v1/scripts` takes them, without `secret_env`.
    run: SubmitRequest,
}

/// A schedule: when, where, whether this service runs it, the next slot and the last runs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ScheduleView {
    pub name: String,
    /// Made when it was added: a schedule added again under the same name has another.
    pub id: String,
    pub cron: String,
    pub timezone: String,
    /// Its agents (or none, with `pool` or `select`).
    pub targets: Vec<String>,
    pub pool: Option<String>,
    /// The selector evaluated at each slot.
    pub select: Option<String>,
    pub missed: Missed,
    pub paused: bool,
    /// The id of the key that signed it.
    pub signed_by: Option<String>,
    /// Why it does not run, if so: not signed by the service's key (or, as `dispatcher schedule
    /// list` sees it, no running replica has its key), or an expression or zone no longer valid.
    pub refused: Option<String>,
    /// The next slot, RFC 3339 in the schedule's zone (none while paused or refused).
    pub next_run: Option<String>,
    pub next_run_ms: Option<u64>,
    pub who: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub script_digest: String,
    /// The last runs, newest first.
    pub runs: Vec<RunView>,
}

/// One run of a schedule's slot.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RunView {
    /// The slot's identity: its time in unix ms, or `now-<id>` for a run-now. It names the
    /// slot's tickets.
    pub slot: String,
    pub kind: SlotKind,
    /// The slot's time, RFC 3339 in the schedule's zone (what the script sees in
    /// `CUTTLE_SCHEDULE_SLOT`).
    pub slot_time: String,
    pub slot_ms: u64,
    /// When it was recorded (and its tickets submitted), unix ms.
    pub fired_ms: u64,
    /// Why nothing (or less) ran.
    pub note: Option<String>,
    pub tickets: Vec<RunTicket>,
}

/// A ticket of a run.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RunTicket {
    pub ticket: String,
    pub target: String,
    /// `queued`, `running`, `finished`, or `expired` once past the history retention.
    pub state: String,
    /// `completed`, `cancelled`, `unknown` or `failed`, once finished.
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
}

/// A run asked for now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct RunNow {
    pub schedule: String,
    /// The run's slot identity (`now-<id>`).
    pub slot: String,
    /// Its tickets, if it fired here at once (else the next pass of a replica fires it).
    pub run: Option<RunView>,
}

/// What a schedule's view shows of the tickets it ran: state, outcome and exit code of each
/// (`None` once past the retention).
async fn ends(journal: &Journal, runs: &[RunRecord]) -> JournalResult<Vec<Vec<Option<(String, Option<Finished>)>>>> {
    let mut ends = Vec::with_capacity(runs.len());
    for run in runs {
        let tickets: Vec<contracts::wire::ticket::Ticket> =
            run.tickets.iter().filter_map(|t| contracts::wire::ticket::Ticket::parse(t).ok()).collect();
        let mut of_run = Vec::with_capacity(tickets.len());
        for ticket in &tickets {
            of_run.push(journal.ticket(ticket).await?.map(|record| (record.state, record.finished)));
        }
        ends.push(of_run);
    }
    Ok(ends)
}

/// The view of a schedule: `refused` says why it does not run (as whoever shows it can tell),
/// and the next slot is computed from `now_ms`.
pub(crate) async fn view(
    journal: &Journal,
    schedule: &StoredSchedule,
    refused: Option<String>,
    now_ms: u64,
) -> JournalResult<ScheduleView> {
    let spec = &schedule.spec;
    let cadence = Cadence::parse(&spec.cron, &spec.timezone, now_ms);
    let (targets, pool, select) = match &spec.targets {
        ScheduleTargets::Agents(ids) => (ids.clone(), None, None),
        ScheduleTargets::Pool(pool) => (Vec::new(), Some(pool.clone()), None),
        ScheduleTargets::Select(selector) => (Vec::new(), None, Some(selector.clone())),
    };
    let next = match (&cadence, schedule.paused || refused.is_some()) {
        (Ok(cadence), false) => cadence.next_after(now_ms.max(schedule.cursor_ms)),
        _ => None,
    };
    let shown = |ms: u64| match &cadence {
        Ok(cadence) => cadence.rfc3339(ms),
        Err(_) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        }
    };
    let ends = ends(journal, &schedule.runs).await?;
    let runs = schedule
        .runs
        .iter()
        .zip(ends)
        .map(|(run, ends)| RunView {
            slot: run.slot.clone(),
            kind: run.kind,
            slot_time: shown(run.at_ms),
            slot_ms: run.at_ms,
            fired_ms: run.fired_ms,
            note: run.note.clone(),
            tickets: run
                .tickets
                .iter()
                .zip(&run.targets)
                .zip(ends.into_iter().chain(std::iter::repeat(None)))
                .map(|((ticket, target), end)| RunTicket {
                    ticket: ticket.clone(),
                    target: target.name.clone(),
                    state: end.as_ref().map_or_else(|| "expired".to_owned(), |(state, _)| state.clone()),
                    outcome: end.as_ref().and_then(|(_, f)| f.as_ref()).map(|f| f.outcome.name().to_owned()),
                    exit_code: end.as_ref().and_then(|(_, f)| f.as_ref()).and_then(|f| f.exit_code),
                })
                .collect(),
        })
        .collect();
    let refused = match (refused, &cadence) {
        (Some(refused), _) => Some(refused),
        (None, Err(error)) => Some(error.to_string()),
        (None, Ok(_)) => None,
    };
    Ok(ScheduleView {
        name: spec.name.clone(),
        id: spec.id.clone(),
        cron: spec.cron.clone(),
        timezone: spec.timezone.clone(),
        targets,
        pool,
        select,
        missed: spec.missed,
        paused: schedule.paused,
        signed_by: schedule.signer(),
        refused,
        next_run: next.map(shown),
        next_run_ms: next,
        who: spec.who.clone(),
        created_ms: spec.created_ms,
        script_digest: spec.spec.digest(),
        runs,
    })
}

/// The view as this service sees it: whether it runs the schedule.
async fn service_view(state: &super::state::ApiState, schedule: &StoredSchedule) -> Result<ScheduleView, ApiError> {
    let refused = state.scheduler.check(schedule).err().map(|r| r.to_string());
    Ok(view(&state.followers.journal, schedule, refused, now_ms()).await?)
}

/// The schedule a request describes, as `who` adds it now (refused with the reason).
fn spec_of_request(request: ScheduleRequest, who: &str) -> Result<ScheduleSpec, ApiError> {
    let run = &request.run;
    if !run.secret_env.is_empty() {
        return Err(ApiError::bad_request(ScheduleError::Secrets.to_string()));
    }
    let targets = match &request.select {
        Some(selector) => {
            if run.target.is_some() || run.targets.is_some() || run.pool.is_some() {
                return Err(ApiError::bad_request("give `select`, or `run`'s `target`, `targets` or `pool`, not both"));
            }
            let selector = Selector::parse(selector).map_err(|e| ApiError::bad_request(format!("select: {e}")))?;
            ScheduleTargets::Select(selector.to_string())
        }
        None => {
            routes_of(run)?;
            match (&run.target, &run.targets, &run.pool) {
                (_, _, Some(pool)) => ScheduleTargets::Pool(pool.clone()),
                (Some(agent), _, _) => ScheduleTargets::Agents(vec![agent.clone()]),
                (_, Some(agents), _) => ScheduleTargets::Agents(agents.clone()),
                _ => unreachable!("routes_of checked exactly one"),
            }
        }
    };
    let spec = spec_of(run)?;
    Ok(ScheduleSpec {
        id: uuid::Uuid::new_v4().to_string(),
        name: request.name,
        cron: request.cron,
        timezone: request.timezone.unwrap_or_else(|| "UTC".into()),
        targets,
        spec,
        policy: run.policy.clone(),
        purpose: Some(purpose_name(run.purpose.into())),
        retry_duration_ms: None,
        no_retries: false,
        max_parallel: Share::Count(run.max_parallel.unwrap_or(10)),
        missed: request.missed,
        who: who.to_owned(),
        created_ms: now_ms(),
    })
}

/// Adds a schedule, signed with the service's key: from its next slot, one replica runs each slot
/// once.
#[utoipa::path(post, path = "/v1/schedules", request_body = ScheduleRequest, security(("bearer" = [])),
    responses((status = 201, description = "Added", body = ScheduleView),
              (status = 400, description = "Invalid request: a bad expression or zone, secrets, no target", body = ErrorBody),
              (status = 401, description = "No or unknown API token", body = ErrorBody),
              (status = 409, description = "A schedule of that name exists", body = ErrorBody),
              (status = 415, description = "The body is not `application/json`", body = ErrorBody),
              (status = 503, description = "The journal does not answer", body = ErrorBody)))]
pub(super) async fn add_schedule(
    State(state): Shared,
    axum::Extension(who): axum::Extension<Who>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let request: ScheduleRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    let spec = spec_of_request(request, &who.0)?;
    spec.check(spec.created_ms).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = spec.to_record();
    let seal = state
        .scheduler
        .sign(&record)
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Refused::NoKey.to_string()))?;
    if let Some(existing) = state.scheduler.schedules.add(&spec, &record, &seal).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a schedule named {} exists (id {existing}); remove it first to replace it", spec.name),
        ));
    }
    tracing::info!(schedule = %spec.name, id = %spec.id, cron = %spec.cron, timezone = %spec.timezone, who = %who.0, "schedule added");
    let added = stored(&state, &spec.name).await?;
    Ok((StatusCode::CREATED, Json(service_view(&state, &added).await?)))
}

/// The schedule of `name`, or 404.
async fn stored(state: &super::state::ApiState, name: &str) -> Result<StoredSchedule, ApiError> {
    state.scheduler.schedules.get(name).await?.ok_or_else(|| not_found(name))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no schedule named {name}; GET /v1/schedules lists them"))
}

/// Every schedule: next run, last runs and their outcomes, and whether this service runs it.
#[utoipa::path(get, path = "/v1/schedules", security(("bearer" = [])), responses((status = 200, body = ScheduleList)))]
pub(super) async fn list_schedules(State(state): Shared) -> Result<Json<ScheduleList>, ApiError> {
    let mut schedules = Vec::new();
    for schedule in state.scheduler.schedules.all().await? {
        schedules.push(service_view(&state, &schedule).await?);
    }
    Ok(Json(ScheduleList { schedules }))
}

/// Removes a schedule: no slot of it fires from now on; runs already started go on (cancel them
/// by ticket).
#[utoipa::path(delete, path = "/v1/schedules/{name}", params(("name" = String, Path, description = "The schedule")),
    security(("bearer" = [])),
    responses((status = 200, description = "Removed; the schedule as it was", body = ScheduleView),
              (status = 404, description = "No such schedule", body = ErrorBody)))]
pub(super) async fn remove_schedule(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let removed = state.scheduler.schedules.remove(&name).await?.ok_or_else(|| not_found(&name))?;
    tracing::info!(schedule = %name, id = %removed.spec.id, "schedule removed");
    Ok(Json(service_view(&state, &removed).await?))
}

/// Pauses a schedule: no slot fires until it is resumed (a run-now still does).
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", params(("name" = String, Path, description = "The schedule")),
    security(("bearer" = [])),
    responses((status = 200, body = ScheduleView), (status = 404, description = "No such schedule", body = ErrorBody)))]
pub(super) async fn pause_schedule(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(&state, &name, true).await
}

/// Resumes a paused schedule from now: the slots that came while it was paused never run.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", params(("name" = String, Path, description = "The schedule")),
    security(("bearer" = [])),
    responses((status = 200, body = ScheduleView), (status = 404, description = "No such schedule", body = ErrorBody)))]
pub(super) async fn resume_schedule(
    State(state): Shared,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(&state, &name, false).await
}

async fn set_paused(state: &super::state::ApiState, name: &str, paused: bool) -> Result<Json<ScheduleView>, ApiError> {
    let schedule =
        state.scheduler.schedules.set_paused(name, paused, now_ms()).await?.ok_or_else(|| not_found(name))?;
    tracing::info!(schedule = %name, paused, "schedule {}", if paused { "paused" } else { "resumed" });
    Ok(Json(service_view(state, &schedule).await?))
}

/// Runs a schedule now, under a slot identity of its own (paused or not); answers with its
/// tickets once recorded.
#[utoipa::path(post, path = "/v1/schedules/{name}/run", params(("name" = String, Path, description = "The schedule")),
    security(("bearer" = [])),
    responses((status = 202, description = "Recorded and starting", body = RunNow),
              (status = 404, description = "No such schedule", body = ErrorBody),
              (status = 409, description = "This service does not run the schedule (its signature is not the service's)", body = ErrorBody)))]
pub(super) async fn run_schedule(
    State(state): Shared,
    axum::Extension(who): axum::Extension<Who>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RunNow>), ApiError> {
    let schedule = stored(&state, &name).await?;
    if let Err(refused) = state.scheduler.check(&schedule) {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("schedule {name} does not run: {refused}")));
    }
    let request = RunRequest::new(&who.0, now_ms());
    let schedule = state.scheduler.schedules.request_run(&name, &request).await?.ok_or_else(|| not_found(&name))?;
    let slot = request.slot().id;
    let schedules = &state.scheduler.schedules;
    let run = match state.scheduler.run_now(&schedule, &request).await? {
        Fired::New(run) => Some(run),
        // A replica's pass fired it first.
        Fired::Earlier => schedules.slot_run(&schedule.spec.id, &slot).await?,
        Fired::Not | Fired::Later(_) => None,
    };
    let run = match run {
        Some(run) => {
            let raw = serde_json::to_string(&request).map_err(|e| ApiError::bad_request(e.to_string()))?;
            schedules.request_done(&schedule.spec.id, &raw).await?;
            let fired = StoredSchedule { runs: vec![run], ..schedule };
            service_view(&state, &fired).await?.runs.into_iter().next()
        }
        None => None,
    };
    Ok((StatusCode::ACCEPTED, Json(RunNow { schedule: name, slot, run })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<ScheduleSpec, ApiError> {
        let request: ScheduleRequest =
            serde_json::from_value(json).map_err(|e| ApiError::bad_request(e.to_string()))?;
        spec_of_request(request, "ci")
    }

    #[test]
    fn a_schedule_request_is_a_script_request_with_when_and_no_secrets() {
        let spec = request(serde_json::json!({
            "name": "rotate", "cron": "0 2 * * *", "timezone": "Europe/Berlin", "missed": "once",
            "run": {"targets": ["a", "b"], "script": "logrotate", "max_parallel": 1}
        }))
        .unwrap();
        assert_eq!(spec.targets, ScheduleTargets::Agents(vec!["a".into(), "b".into()]));
        assert_eq!((spec.missed, spec.max_parallel, spec.who.as_str()), (Missed::Once, Share::Count(1), "ci"));
        assert!(spec.check(spec.created_ms).is_ok());
        let selected = request(
            serde_json::json!({"name": "s", "cron": "@hourly", "select": "role=web", "run": {"script": "true"}}),
        )
        .unwrap();
        assert_eq!(selected.targets, ScheduleTargets::Select("role=web".into()));
        let secret = request(serde_json::json!({
            "name": "s", "cron": "@hourly", "run": {"target": "a", "script": "true", "secret_env": {"T": "x"}}
        }));
        assert!(secret.unwrap_err().message.contains("cannot hold secrets"));
        let both = request(serde_json::json!({
            "name": "s", "cron": "@hourly", "select": "role=web", "run": {"target": "a", "script": "true"}
        }));
        assert!(both.unwrap_err().message.contains("not both"));
        let none = request(serde_json::json!({"name": "s", "cron": "@hourly", "run": {"script": "true"}}));
        assert!(none.unwrap_err().message.contains("exactly one"));
        let typo = request(
            serde_json::json!({"name": "s", "cron": "@hourly", "zone": "UTC", "run": {"target": "a", "script": "true"}}),
        );
        assert!(typo.unwrap_err().message.contains("unknown field `zone`"));
    }
}
