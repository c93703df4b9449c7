//! File transfer through the service: `PUT /v1/files` streams the request body to an agent,
//! `GET /v1/files` streams a file from one, both through [`crate::transfer`] as the CLI's
//! `upload` and `download` do (chunks, retries to the policy's deadline, resume, SHA-256).
//! An upload's body is `application/octet-stream` or has no type: the types a browser's form
//! sends are refused before it is read (see [`super::router`]).
//!
//! The service spools the file in its temporary directory (`TMPDIR`): an upload must be whole to
//! be named by its size and SHA-256 before the first chunk goes (a repeated upload of the same
//! content resumes from what the agent holds, as the CLI's does), and a download is verified
//! before its first byte is answered.

use super::state::{ApiError, ApiState, ErrorBody, Shared};
use crate::orchestrator::Event;
use crate::plan::PolicyChoice;
use crate::policy::Purpose;
use crate::route::Route;
use crate::transfer::{Peer, TransferError, Transferred};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use contracts::submission::outcome::exit;
use contracts::submission::retry::RetryPolicy;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utoipa::{IntoParams, ToSchema};

/// Where the file is: one agent or a pool, and the path there.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQuery {
    /// The agent id (or give `pool`).
    pub target: Option<String>,
    /// A worker pool (see docs/guide.md, "Pools" and "File transfer").
    pub pool: Option<String>,
    /// The file on the agent: absolute, or relative to its first transfer root.
    pub path: String,
    /// Machine policy to use instead of the one the target maps to.
    pub policy: Option<String>,
    /// The user the agent writes or reads the file as (it must allow it, as for a script's
    /// `run_as`); default: the agent's `--default-run-as`, else the agent's own user.
    pub run_as: Option<String>,
}

/// A finished transfer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct FileTransferred {
    pub target: String,
    /// Who served it: `agent ID`, or `worker ID of pool P`.
    pub served_by: String,
    pub path: String,
    pub size: u64,
    /// Hex SHA-256 of the content, as checked end to end.
    pub sha256: String,
    /// Where it went on from an earlier, interrupted transfer of the same content (0: from the start).
    pub resumed_at: u64,
    pub elapsed_ms: u64,
}

impl FileQuery {
    fn route(&self) -> Result<Route, ApiError> {
        let route = match (&self.target, &self.pool) {
            (Some(agent), None) => Route::agent(agent),
            (None, Some(pool)) => Route::pool(pool),
            _ => return Err(ApiError::bad_request("give exactly one of `target` or `pool`")),
        };
        route.map_err(|e| ApiError::bad_request(e.to_string()))
    }

    fn transferred(&self, route: &Route, done: Transferred) -> FileTransferred {
        FileTransferred {
            target: route.name().to_owned(),
            served_by: done.route.to_string(),
            path: self.path.clone(),
            size: done.size,
            sha256: done.sha256,
            resumed_at: done.resumed_at,
            elapsed_ms: done.elapsed.as_millis() as u64,
        }
    }
}

/// The request's query, checked, and where it goes.
fn checked(query: Result<Query<FileQuery>, QueryRejection>) -> Result<(FileQuery, Route), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let route = query.route()?;
    contracts::wire::transfer::check_path(&query.path).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(user) = &query.run_as {
        contracts::wire::messages::check_user_name(user).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok((query, route))
}

/// The retry policy of `route` (its machine policy for deployments, or the one asked for).
fn policy_of(state: &ApiState, query: &FileQuery, route: &Route) -> Result<RetryPolicy, ApiError> {
    let choice = PolicyChoice { policy: query.policy.clone(), ..Default::default() };
    choice.retry(&state.policies, route, Purpose::Deployment).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Retries of a transfer's requests go to the service's log.
fn log_retry(route: &Route, event: Event) {
    if let Event::Retry { request, notice } = event {
        tracing::info!(%route, %request, attempt = notice.attempt, error = %notice.error, "transfer request retried");
    }
}

/// The answer to a transfer that failed, by what the CLI would exit with.
fn transfer_error(route: &Route, error: &TransferError) -> ApiError {
    let status = match error {
        TransferError::Local { .. } | TransferError::NoFileName(_) | TransferError::Task(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => match error.exit_code(route) {
            exit::NO_SUCH_AGENT => StatusCode::NOT_FOUND,
            exit::REJECTED => StatusCode::UNPROCESSABLE_ENTITY,
            exit::NO_ANSWER => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        },
    };
    ApiError::new(status, error.to_string())
}

/// A spool file of the service's own, removed when dropped.
struct Spool(PathBuf);

impl Spool {
    fn new(what: &str) -> Self {
        Spool(std::env::temp_dir().join(format!(".cuttle-{what}-{}", uuid::Uuid::new_v4().simple())))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spool_error(error: std::io::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot spool the file on the service: {error}"))
}

/// Uploads the request body to an agent (or a pool's worker).
#[utoipa::path(put, path = "/v1/files", params(FileQuery), security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's content"),
    responses((status = 200, description = "In place and verified", body = FileTransferred),
              (status = 400, description = "Invalid request", body = ErrorBody),
              (status = 401, description = "No or unknown API token", body = ErrorBody),
              (status = 404, description = "No such agent", body = ErrorBody),
              (status = 415, description = "A Content-Type other than `application/octet-stream` (a form's)", body = ErrorBody),
              (status = 422, description = "Refused by the agent (outside its transfer roots, too old, ...)", body = ErrorBody),
              (status = 502, description = "The broker or the transfer failed", body = ErrorBody),
              (status = 504, description = "No answer from the agent before the policy's deadline", body = ErrorBody)))]
pub(super) async fn put_file(
    State(state): Shared,
    query: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<FileTransferred>, ApiError> {
    let (query, route) = checked(query)?;
    let spool = Spool::new("upload");
    let mut file = tokio::fs::File::create(&spool.0).await.map_err(spool_error)?;
    let mut stream = body.into_data_stream();
    while let Some(data) = stream.next().await {
        let data = data.map_err(|e| ApiError::bad_request(format!("the request body ended early: {e}")))?;
        file.write_all(&data).await.map_err(spool_error)?;
    }
    file.flush().await.map_err(spool_error)?;
    drop(file);
    let (policy, events) = (policy_of(&state, &query, &route)?, |event| log_retry(&route, event));
    let peer = Peer {
        orchestrator: &state.followers.orchestrator,
        route: &route,
        policy,
        events: &events,
        progress: &|_, _| {},
        run_as: query.run_as.as_deref(),
    };
    let done = crate::transfer::upload(&peer, &spool.0, &query.path).await.map_err(|e| transfer_error(&route, &e))?;
    tracing::info!(%route, path = %query.path, bytes = done.size, "file uploaded through the service");
    Ok(Json(query.transferred(&route, done)))
}

/// Downloads a file from an agent (or a pool's worker), verified before the first byte goes out.
#[utoipa::path(get, path = "/v1/files", params(FileQuery), security(("bearer" = [])),
    responses((status = 200, description = "The file's content; its SHA-256 in `x-cuttle-sha256`", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 400, description = "Invalid request", body = ErrorBody),
              (status = 401, description = "No or unknown API token", body = ErrorBody),
              (status = 404, description = "No such agent", body = ErrorBody),
              (status = 422, description = "Refused by the agent (outside its transfer roots, no such file, too old, ...)", body = ErrorBody),
              (status = 502, description = "The broker or the transfer failed", body = ErrorBody),
              (status = 504, description = "No answer from the agent before the policy's deadline", body = ErrorBody)))]
pub(super) async fn get_file(
    State(state): Shared,
    query: Result<Query<FileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (query, route) = checked(query)?;
    let spool = Spool::new("download");
    let (policy, events) = (policy_of(&state, &query, &route)?, |event| log_retry(&route, event));
    let peer = Peer {
        orchestrator: &state.followers.orchestrator,
        route: &route,
        policy,
        events: &events,
        progress: &|_, _| {},
        run_as: query.run_as.as_deref(),
    };
    let done = crate::transfer::download(&peer, &query.path, &spool.0).await.map_err(|e| transfer_error(&route, &e))?;
    let file = tokio::fs::File::open(&spool.0).await.map_err(spool_error)?;
    // Open, it can go: the body reads it to the end.
    drop(spool);
    tracing::info!(%route, path = %query.path, bytes = done.size, "file downloaded through the service");
    let body = tokio_util::io::ReaderStream::with_capacity(file.take(done.size), 256 * 1024);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, done.size.to_string()),
            (header::HeaderName::from_static("x-cuttle-sha256"), done.sha256),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
