//! The requests a submission sends, built from what it knows: the start it plans, the cancel,
//! the complete; and the status a reply must carry.

use super::error::{CallError, Unexpected};
use super::negotiate::ScriptProtocol;
use super::outcome::Outcome;
use super::retry::{GaveUp, RetryPolicy, Timing};
use crate::wire::envelope::{Reply, Request};
use crate::wire::messages::{CancelScriptV1, CancelScriptV2, CompleteScriptV1, CompleteScriptV2};
use crate::wire::status::ScriptStatus;
use crate::wire::ticket::Ticket;
use std::time::{Duration, SystemTime};

/// How often a legacy (v1) agent is asked for status: it cannot hold the request.
pub const V1_POLL: Duration = Duration::from_millis(250);

/// A start planned under a ticket chosen (and recorded, by the service) before anything is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStart {
    pub ticket: Ticket,
    /// When the first start was issued (`first_issued_at` on the wire).
    pub issued_at: SystemTime,
    /// The agent refuses the start after this, and the dispatcher stops repeating it.
    pub not_after: SystemTime,
}

impl PlannedStart {
    /// A start of `ticket` under `policy`, issued `now`. The agent must not start the script
    /// after we stop trying: a copy stuck in a queue expires there, and the agent refuses one
    /// past this deadline.
    pub fn new(ticket: Ticket, policy: RetryPolicy, timing: Timing, now: SystemTime) -> Self {
        PlannedStart { ticket, issued_at: now, not_after: now + policy.duration.max(timing.attempt_timeout) }
    }
}

/// The request that tells the agent a ticket's output is no longer needed, once its end was seen.
pub fn complete_request(protocol: ScriptProtocol, ticket: &Ticket, outcome: &Outcome) -> Option<Request> {
    outcome.exit_code?;
    let ticket = ticket.clone();
    Some(match protocol {
        ScriptProtocol::V2 => Request::CompleteScriptV2(CompleteScriptV2::new(ticket)),
        ScriptProtocol::V1 => Request::CompleteScriptV1(CompleteScriptV1 { ticket }),
    })
}

/// The cancel of `ticket` in the script service `protocol`; `first_issued_at` that of the start
/// it stops when that start was sent and not answered yet (see [`CancelScriptV2`]).
pub fn cancel_request(
    protocol: ScriptProtocol,
    ticket: &Ticket,
    last_log_sequence: u64,
    first_issued_at: Option<u64>,
) -> Request {
    let ticket = ticket.clone();
    match protocol {
        ScriptProtocol::V2 => Request::CancelScriptV2(CancelScriptV2 { ticket, last_log_sequence, first_issued_at }),
        ScriptProtocol::V1 => Request::CancelScriptV1(CancelScriptV1 { ticket, last_log_sequence }),
    }
}

/// The status a script-service reply must carry.
pub fn expect_status<E: CallError>(reply: Reply) -> Result<ScriptStatus, GaveUp<E>> {
    match reply {
        Reply::ScriptStatus(status) => Ok(status),
        other => {
            Err(GaveUp::at_once(E::unexpected(Unexpected::Kind { expected: "a script status", got: other.kind() })))
        }
    }
}
