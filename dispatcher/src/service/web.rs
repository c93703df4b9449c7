//! The web view: server-rendered HTML (maud, which escapes every value it writes) and one small
//! script that keeps pages live through the API itself (`GET /v1/tickets` for the list, the
//! server-sent events of `GET /v1/tickets/{ticket}/events` for a ticket). No build step: the
//! script and the style sheet are compiled in.
//!
//! - `/`: recent tickets (filter by target and outcome), the schedules (next run, last runs and
//!   their outcomes), the agents and the machine policies.
//! - `/tickets/{ticket}`: one ticket, its output, each retry with its error and the time left,
//!   and the outcome.
//! - `/login`: with API tokens, a browser logs in with one and gets a session in an `HttpOnly`,
//!   `SameSite=Strict` cookie (not the token) that counts for reading only ([`super::sessions`]).
//!
//! Output, ticket ids, targets and errors may be hostile: the HTML escapes them, the script sets
//! only `textContent`, and the Content-Security-Policy allows no inline script or style at all.

use super::agents::{AgentAnswer, AgentSeen};
use super::api::{history_query, HistoryParams};
use super::journal::{JournalEvent, TicketRecord};
use super::receipts::ReceiptView;
use super::schedule_api::{self, ScheduleView};
use super::sessions;
use super::state::{parse_ticket, receipt_of, record_of, ApiError, ApiState, Shared};
use crate::event::JsonEvent;
use crate::policy::MachinePolicy;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use contracts::submission::outcome::OutcomeKind;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const SCRIPT: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/app.css");

/// Tickets the index shows.
const LIST_LIMIT: usize = 50;

/// No inline script or style, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The web view's routes.
pub(super) fn router(state: Arc<ApiState>) -> axum::Router<Arc<ApiState>> {
    let pages = axum::Router::new()
        .route("/", get(index))
        .route("/tickets/{ticket}", get(ticket_page))
        .route_layer(axum::middleware::from_fn_with_state(state, logged_in));
    axum::Router::new()
        .merge(pages)
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/static/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }))
        .route("/static/app.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }))
        .layer(axum::middleware::map_response(secure_headers))
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Nothing to other sites; and not `no-referrer`, under which the browser sends `Origin: null`
    // with the login form, which the service refuses as it refuses every page not its own.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// With API tokens, pages need an open login session; without one, they go to the login form.
async fn logged_in(State(state): Shared, request: Request, next: Next) -> Response {
    if let Some(known) = &state.tokens {
        match sessions::who(&state.followers.journal, known, request.headers()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let next = url_encode(path);
                return Redirect::to(&format!("/login?next={next}")).into_response();
            }
            Err(error) => return error_page(error.into()),
        }
    }
    next.run(request).await
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after logging in: a path of this site, never another site (`//host`, `/\host`).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path,
        _ => "/",
    }
}

fn page(title: &str, body: Markup) -> Html<String> {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Cuttle" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Cuttle" }
                    nav { a href="/" { "Tickets" } a href="/#schedules" { "Schedules" } a href="/#agents" { "Agents" } a href="/#policies" { "Policies" } }
                }
                main { (body) }
            }
        }
    };
    Html(markup.into_string())
}

fn error_page(error: ApiError) -> Response {
    let body = html! { h1 { "Cannot show this" } p.error { (error.message) } p { a href="/" { "All tickets" } } };
    (error.status, page("Error", body)).into_response()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix milliseconds.
fn when(ms: u64) -> String {
    let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

fn duration(ms: u64) -> String {
    contracts::time::short(Duration::from_millis(ms))
}

#[derive(Debug, Default, Deserialize)]
struct ListParams {
    target: Option<String>,
    outcome: Option<String>,
}

/// Recent tickets, live; the agents; the policies in force.
async fn index(State(state): Shared, Query(params): Query<ListParams>) -> Response {
    let target = params.target.filter(|t| !t.is_empty());
    let outcome = params.outcome.filter(|o| !o.is_empty());
    let history =
        HistoryParams { target: target.clone(), outcome: outcome.clone(), since: None, limit: Some(LIST_LIMIT) };
    let query = match history_query(&history) {
        Ok(query) => query,
        Err(error) => return error_page(error),
    };
    let journal = &state.followers.journal;
    let awaiting = journal.awaiting_records(LIST_LIMIT);
    let (records, agents, awaiting) = match tokio::try_join!(journal.history(&query), journal.agents(), awaiting) {
        Ok(found) => found,
        Err(error) => return error_page(error.into()),
    };
    let agents: Vec<AgentSeen> = agents.into_iter().filter_map(|agent| serde_json::from_value(agent).ok()).collect();
    let schedules = match schedule_views(&state).await {
        Ok(schedules) => schedules,
        Err(error) => return error_page(error),
    };
    let live_query = query_string(&[("target", target.as_deref()), ("outcome", outcome.as_deref())]);
    let body = html! {
        @if !awaiting.is_empty() {
            h2 #approvals { "Waiting for approval" }
            p.hint { "Sent once the approvals their target's rules require are in: " code { "dispatcher approve TICKET" } " shows one and adds yours." }
            div.scroll {
                table.approvals {
                    thead { tr { th { "Ticket" } th { "Target" } th { "Purpose" } th { "Submitter" } th { "Approvals" } th.wide { "Waiting since" } } }
                    tbody { @for record in &awaiting { (awaiting_row(record)) } }
                }
            }
        }
        h1 { "Tickets" }
        form.filters method="get" action="/" {
            label { "Target " input type="text" name="target" value=[target.as_deref()] placeholder="agent or pool"; }
            label { "Outcome "
                select name="outcome" {
                    option value="" { "any" }
                    @for name in ["completed", "cancelled", "unknown", "failed"] {
                        option value=(name) selected[outcome.as_deref() == Some(name)] { (name) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        div.scroll {
            table #tickets data-query=(format!("{live_query}&limit={LIST_LIMIT}")) {
                thead { tr { th { "Ticket" } th { "Target" } th { "State" } th { "Outcome" } th.wide { "Exit" } th.wide { "Retries" } th.wide { "Submitted" } } }
                tbody {
                    @for record in &records { (ticket_row(record)) }
                }
            }
        }
        @if records.is_empty() { p.empty { "No tickets" @if target.is_some() || outcome.is_some() { " match these filters" } "." } }
        h2 #schedules { "Schedules" }
        p.hint { "Each slot runs once, on whichever replica of the service records it first; times are in each schedule's zone." }
        @if schedules.is_empty() {
            p.empty { "No schedules: " code { "dispatcher schedule add" } " or " code { "POST /v1/schedules" } " adds one." }
        } @else {
            div.scroll {
                table.schedules {
                    thead { tr { th { "Schedule" } th { "When" } th.wide { "Targets" } th { "Next run" } th { "Last runs" } th.wide { "State" } } }
                    tbody { @for schedule in &schedules { (schedule_row(schedule)) } }
                }
            }
        }
        h2 #agents { "Agents" }
        p.hint { "What each target answered when the service last asked it (before each script), or why it could not be reached." }
        div.scroll {
            table.agents {
                thead { tr { th { "Target" } th { "Reachable" } th { "Protocol" } th.wide { "Services" } th.wide { "Version" } th.wide { "Last seen" } } }
                tbody {
                    @for agent in &agents { (agent_row(agent)) }
                }
            }
        }
        h2 #policies { "Machine policies" }
        p.hint { "How long a request that got no answer is repeated, per purpose" @if let Some(origin) = state.policies.origin() { ", from " code { (origin) } } "." }
        div.scroll {
            table.policies {
                thead { tr { @for heading in POLICY_COLUMNS { th { (heading) } } } }
                tbody {
                    @for policy in state.policies.policies() {
                        tr { @for (heading, cell) in POLICY_COLUMNS.iter().zip(policy_cells(&policy)) { td data-label=(heading) { (cell) } } }
                    }
                }
            }
        }
        @let mappings: Vec<_> = state.policies.mappings().collect();
        @if !mappings.is_empty() {
            table.mappings {
                thead { tr { th { "Target or pool" } th { "Policy" } } }
                tbody { @for (section, name, policy) in mappings { tr { td.long { (section) " " (name) } td { (policy) } } } }
            }
        }
    };
    page("Tickets", body).into_response()
}

/// A ticket waiting for approvals, as the index lists it.
fn awaiting_row(record: &TicketRecord) -> Markup {
    let submission = &record.submission;
    let ticket = submission.ticket.to_string();
    html! {
        tr {
            td.ticket data-label="Ticket" { a href=(format!("/tickets/{ticket}")) { code { (ticket) } } }
            td data-label="Target" { (submission.target) }
            td data-label="Purpose" { (submission.spec.purpose.as_deref().unwrap_or("-")) }
            td data-label="Submitter" { (submission.spec.submitter.as_deref().unwrap_or("-")) }
            td data-label="Approvals" { (record.approvals.len()) }
            td.wide data-label="Waiting since" { (record.awaiting_ms.map(when).unwrap_or_default()) }
        }
    }
}

/// Runs of a schedule the index shows.
const RUNS_SHOWN: usize = 5;

/// Every schedule as this service sees it (whether it runs it).
async fn schedule_views(state: &ApiState) -> Result<Vec<ScheduleView>, ApiError> {
    let now = contracts::time::unix_millis(std::time::SystemTime::now());
    let mut views = Vec::new();
    for schedule in state.scheduler.schedules.all().await? {
        let refused = state.scheduler.check(&schedule).err().map(|r| r.to_string());
        views.push(schedule_api::view(&state.followers.journal, &schedule, refused, now).await?);
    }
    Ok(views)
}

fn schedule_row(schedule: &ScheduleView) -> Markup {
    let targets = match (&schedule.pool, &schedule.select) {
        (Some(pool), _) => format!("pool {pool}"),
        (_, Some(selector)) => format!("select {selector}"),
        _ => schedule.targets.join(", "),
    };
    html! {
        tr {
            td.long { (schedule.name) }
            td.long { code { (schedule.cron) } " " (schedule.timezone) }
            td.wide.long { (targets) }
            td { (schedule.next_run.as_deref().unwrap_or("-")) }
            td.long {
                @for run in schedule.runs.iter().take(RUNS_SHOWN) {
                    div.run {
                        time { (run.slot_time) } " "
                        @if run.kind != crate::schedule::SlotKind::Cron { "(" (run.kind.name()) ") " }
                        @for ticket in &run.tickets {
                            a class=(format!("outcome-{}", ticket.outcome.as_deref().unwrap_or("none"))) href=(format!("/tickets/{}", ticket.ticket)) {
                                span.outcome { (ticket.outcome.as_deref().unwrap_or(&ticket.state)) }
                            } " "
                        }
                        @if let Some(note) = &run.note { span.error { (note) } }
                    }
                }
                @if schedule.runs.is_empty() { span.hint { "none yet" } }
            }
            td.wide.long {
                @match (&schedule.refused, schedule.paused) {
                    (Some(reason), _) => span.error { "refused: " (reason) },
                    (None, true) => "paused",
                    (None, false) => "active",
                }
            }
        }
    }
}

/// The machine policies table's headings; on a phone, each cell shows its own (`data-label`).
const POLICY_COLUMNS: [&str; 5] = ["Policy", "Deployment", "Runbook", "Health check", "Retries"];

/// A policy's cells, in the order of [`POLICY_COLUMNS`].
fn policy_cells(policy: &MachinePolicy) -> [String; 5] {
    let deadline = contracts::time::short;
    [
        policy.name.clone(),
        deadline(policy.deployment),
        deadline(policy.runbook),
        deadline(policy.health_check),
        (if policy.retries { "on" } else { "off" }).to_owned(),
    ]
}

/// `k=v&k2=v2` of the given values, percent-encoded.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", url_encode(v)))).collect::<Vec<_>>().join("&")
}

fn ticket_row(record: &TicketRecord) -> Markup {
    let s = &record.submission;
    let outcome = record.finished.as_ref().map(|f| f.outcome.name());
    let ticket = s.ticket.to_string();
    html! {
        tr class=(format!("state-{} outcome-{}", record.state, outcome.unwrap_or("none"))) {
            td { a href=(format!("/tickets/{ticket}")) { code { (ticket) } } }
            td.long { (s.target) }
            td.state { (record.state) }
            td.outcome { (outcome.unwrap_or("")) }
            td.wide { (record.finished.as_ref().and_then(|f| f.exit_code).map(|c| c.to_string()).unwrap_or_default()) }
            td.wide { (record.retries) }
            td.wide { (when(s.submitted_ms)) }
        }
    }
}

fn agent_row(agent: &AgentSeen) -> Markup {
    let (protocol, services, version, error) = match &agent.answer {
        AgentAnswer::Capabilities { protocol, services, agent_version } => {
            (protocol.as_str(), services.as_slice(), agent_version.as_deref().unwrap_or(""), "")
        }
        AgentAnswer::Unreachable { error } => ("", &[][..], "", error.as_str()),
    };
    html! {
        tr {
            td.long { (agent.target) @if agent.route == "pool" { " (pool)" } }
            td.long { @if agent.reachable { "yes" } @else { "no: " (error) } }
            td { (protocol) }
            td.wide.wraps { @for (i, service) in services.iter().enumerate() { @if i > 0 { ", " } span { (service) } } }
            td.wide { (version) }
            td.wide { (when(agent.seen_ms)) }
        }
    }
}

/// One ticket: what the journal has so far, then live through its event stream.
async fn ticket_page(State(state): Shared, Path(raw): Path<String>) -> Response {
    let shown = async {
        let ticket = parse_ticket(&raw)?;
        let record = record_of(&state, &ticket).await?;
        let events = state.followers.journal.all_events(&ticket).await?;
        let receipt = receipt_of(&state, &record);
        Ok::<_, ApiError>((record, events, receipt))
    };
    match shown.await {
        Ok((record, events, receipt)) => ticket_view(&record, &events, receipt.as_ref()).into_response(),
        Err(error) => error_page(error),
    }
}

fn ticket_view(record: &TicketRecord, events: &[JournalEvent], receipt: Option<&ReceiptView>) -> Html<String> {
    let s = &record.submission;
    let ticket = s.ticket.to_string();
    let last_id = events.last().map_or("0", |e| e.id.as_str());
    let result = events.iter().rev().find_map(|e| match &e.event {
        JsonEvent::Result { outcome, exit_code, error, .. } => Some((*outcome, *exit_code, error.as_deref())),
        _ => None,
    });
    let body = html! {
        section #ticket data-ticket=(ticket) data-last-event=(last_id) {
            h1 { "Ticket " code { (ticket) } }
            dl.facts {
                dt { "Target" } dd { (s.target) " (" (s.route) ")" }
                dt { "State" } dd #state { (record.state) }
                dt { "Submitted" } dd { (when(s.submitted_ms)) " by " (s.who) }
                dt { "Policy" } dd { (s.policy) ", retries for " (duration(s.script_retry_ms)) }
                dt { "Receipt" } dd #receipt { (receipt_text(receipt)) }
            }
            h2 { "Retries and notices" }
            ol #retries {
                @for event in events { (notice_item(event)) }
            }
            h2 { "Output" }
            pre #output {
                @for event in events {
                    @if let JsonEvent::Log { seq, stream, text, .. } = &event.event {
                        span class=(format!("line {}", stream_class(stream))) data-seq=(seq) { (text) } "\n"
                    }
                }
            }
            div #result class=(if result.is_some() { "result" } else { "result pending" }) {
                @match result {
                    Some((outcome, exit_code, error)) => (result_text(outcome, exit_code, error)),
                    None => "Running: output appears here as the agent sends it.",
                }
            }
        }
    };
    page(&format!("Ticket {ticket}"), body)
}

/// `stdout`, `stderr` or `agent`, as a class name (anything else is `agent`).
fn stream_class(stream: &str) -> &'static str {
    match stream {
        "stdout" => "stdout",
        "stderr" => "stderr",
        _ => "agent",
    }
}

/// A retry or notice event as a list item (nothing for other events).
fn notice_item(event: &JournalEvent) -> Markup {
    let at = event.id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()).map(when).unwrap_or_default();
    html! {
        @match &event.event {
            JsonEvent::Retry { request, attempt, error, delay_ms, time_left_ms, .. } => li.retry {
                time { (at) } " "
                (request) " attempt " (attempt) " failed: "
                span.error { (error) }
                "; again in " (duration(*delay_ms)) ", " (duration(*time_left_ms)) " left"
            },
            JsonEvent::Notice { message, .. } => li.notice { time { (at) } " " (message) },
            _ => {},
        }
    }
}

/// What the run's receipt proves: verified (by which agent, its place in the chain, the exit
/// code it signed), not verified and why, or not come yet.
fn receipt_text(receipt: Option<&ReceiptView>) -> Markup {
    html! {
        @match receipt {
            Some(r) if r.verified => {
                span.verified { "verified" } ": signed by agent " (r.agent_id) ", receipt " (r.sequence) ", exit code " (r.exit_code)
            }
            Some(r) => { span.error { "NOT VERIFIED" } ": " (r.problem.as_deref().unwrap_or_default()) }
            None => { "none yet: the agent signs one when the run ends (reload to see it)" }
        }
    }
}

fn result_text(outcome: OutcomeKind, exit_code: Option<i32>, error: Option<&str>) -> Markup {
    html! {
        "Finished: " strong { (outcome.name()) }
        @if let Some(code) = exit_code { ", exit code " (code) }
        @if let Some(error) = error { ": " span.error { (error) } }
    }
}

#[derive(Debug, Deserialize)]
struct NextParam {
    next: Option<String>,
}

async fn login_form(State(state): Shared, Query(params): Query<NextParam>) -> Response {
    if state.tokens.is_none() {
        return Redirect::to("/").into_response();
    }
    login_page(StatusCode::OK, local_path(params.next.as_deref()), None)
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Log in" }
        p { "This service needs one of its API tokens (the same as for " code { "Authorization: Bearer" } "). Your browser keeps a login session for 12 hours, in a cookie that no script can read, never the token." }
        @if let Some(error) = error { p.error { (error) } }
        form.login method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            label { "API token " input type="password" name="token" autocomplete="current-password" required; }
            button type="submit" { "Log in" }
        }
    };
    (status, page("Log in", body)).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(state): Shared, Form(form): Form<LoginForm>) -> Response {
    let next = local_path(form.next.as_deref());
    let Some(known) = &state.tokens else { return Redirect::to(next).into_response() };
    match sessions::open(&state.followers.journal, known, form.token.trim()).await {
        Ok(Some(session)) => {
            let cookie = sessions::login_cookie(&session, state.site.is_https());
            with_cookie(Redirect::to(next).into_response(), &cookie)
        }
        Ok(None) => login_page(StatusCode::UNAUTHORIZED, next, Some("That is not one of this service's API tokens.")),
        Err(error) => {
            let message = format!("Cannot log in now: {error}. Try again in a moment.");
            login_page(StatusCode::SERVICE_UNAVAILABLE, next, Some(&message))
        }
    }
}

/// Ends the session for every replica, and makes the browser forget it.
async fn logout(State(state): Shared, headers: HeaderMap) -> Response {
    let forget = sessions::logout_cookie(state.site.is_https());
    match sessions::close(&state.followers.journal, &headers).await {
        Ok(()) => with_cookie(Redirect::to("/login").into_response(), &forget),
        Err(error) => {
            let message = format!("{error}: this browser has forgotten its login, but the session stays open until it expires; log out again once the journal answers");
            with_cookie(error_page(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)), &forget)
        }
    }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    let cookie = HeaderValue::from_str(cookie).expect("a session cookie is a valid header value");
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_followed_after_login() {
        assert_eq!(local_path(Some("/tickets/abc?x=1")), "/tickets/abc?x=1");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn hostile_text_is_escaped() {
        let event = |e: JsonEvent| JournalEvent { id: "1700000000000-0".into(), event: e };
        let hostile = "<script>alert(1)</script>&\"'";
        let markup = notice_item(&event(JsonEvent::Notice { message: hostile.into(), target: None })).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;"), "{markup}");
        let result = result_text(OutcomeKind::Failed, None, Some(hostile)).into_string();
        assert!(!result.contains("<script>"), "{result}");
        assert_eq!(url_encode("a b&c=/d"), "a%20b%26c%3D/d");
    }
}
