//! What the service's handlers share: its state, the error every route answers with, who made a
//! request, and the ticket a path names. The router ([`super::router`]) and the handlers
//! ([`super::api`], [`super::files`], [`super::web`]) import from here, never from each other's
//! files in a circle.

use super::journal::{JournalError, TicketRecord};
use super::resume::Followers;
use super::scheduler::Scheduler;
use super::site::Site;
use super::tokens::ApiTokens;
use crate::policy::PolicyConfig;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use contracts::wire::ticket::Ticket;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// What the handlers share.
pub(super) struct ApiState {
    pub followers: Arc<Followers>,
    pub scheduler: Arc<Scheduler>,
    pub policies: PolicyConfig,
    pub tokens: Option<ApiTokens>,
    pub site: Site,
}

/// The state, as handlers take it.
pub(super) type Shared = State<Arc<ApiState>>;

/// An error as the API answers it.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    /// What went wrong and what to do about it.
    error: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<JournalError> for ApiError {
    fn from(error: JournalError) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{error}; try again once Redis answers"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}

/// Who made a request: the API token's name, or `local` on a loopback service without tokens.
#[derive(Clone, Debug)]
pub(super) struct Who(pub String);

/// The ticket a path names, or why it is none.
pub(super) fn parse_ticket(raw: &str) -> Result<Ticket, ApiError> {
    Ticket::parse(raw).map_err(|e| ApiError::bad_request(format!("not a ticket: {e}")))
}

/// The journal's record of a ticket, or 404.
pub(super) async fn record_of(state: &ApiState, ticket: &Ticket) -> Result<TicketRecord, ApiError> {
    let retention = contracts::time::short(state.followers.journal.retention());
    let metrics = state.followers.orchestrator.metrics();
    edge::clock::observe(&metrics.common.store, "ticket", state.followers.journal.ticket(ticket)).await?.ok_or_else(
        || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no ticket {ticket} in the journal (finished tickets are kept for {retention})"),
            )
        },
    )
}

/// A ticket's receipt as the journal keeps it, checked against the known agents as they are now.
pub(super) fn receipt_of(state: &ApiState, record: &TicketRecord) -> Option<super::receipts::ReceiptView> {
    let trust = state.followers.orchestrator.rpc().config().trust.clone()?;
    super::receipts::ReceiptView::of(record, &trust.known_agents())
}
