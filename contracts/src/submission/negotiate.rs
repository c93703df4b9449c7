//! Negotiation: what an agent said of itself (its capabilities, or that it predates them), and
//! the script service to drive it with.

use super::error::{CallError, Unexpected};
use super::retry::{GaveUp, RetryPolicy, Timing};
use crate::time::short;
use crate::trust::approval::{check_approvals, Approvers, Unapproved};
use crate::wire::envelope::Reply;
use crate::wire::error::ErrorKind;
use crate::wire::labels::{Labels, Selectable};
use crate::wire::messages::{
    Capabilities, ScriptSpec, SERVICE_APPROVALS, SERVICE_COMPLETE_BATCH, SERVICE_LIMITS, SERVICE_RUN_AS,
    SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2, SERVICE_SEALED_SECRETS, SERVICE_SECRET_MASKING,
};

/// The script service to drive an agent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptProtocol {
    /// Dispatcher-made tickets, idempotent requests, retries.
    V2,
    /// The agent makes the ticket; a start must never be repeated; no retries.
    V1,
}

/// What an agent said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentKind {
    Current(Capabilities),
    /// Answered `Unsupported`: an agent from before the capabilities service.
    Legacy,
}

impl AgentKind {
    /// What the answer to a capabilities request says of the agent: an agent that refuses it
    /// as `Unsupported` predates it.
    pub fn from_answer<E: CallError>(answer: Result<Reply, GaveUp<E>>) -> Result<AgentKind, GaveUp<E>> {
        match answer {
            Ok(Reply::Capabilities(caps)) => Ok(AgentKind::Current(caps)),
            Ok(other) => {
                Err(GaveUp::at_once(E::unexpected(Unexpected::Kind { expected: "capabilities", got: other.kind() })))
            }
            Err(gave_up) if gave_up.error.agent_error() == Some(ErrorKind::Unsupported) => Ok(AgentKind::Legacy),
            Err(gave_up) => Err(gave_up),
        }
    }

    /// The newest script service both sides support, if any.
    pub fn script_protocol(&self) -> Option<ScriptProtocol> {
        match self {
            AgentKind::Legacy => Some(ScriptProtocol::V1),
            AgentKind::Current(caps) if caps.supports(SERVICE_SCRIPT_V2) => Some(ScriptProtocol::V2),
            AgentKind::Current(caps) if caps.supports(SERVICE_SCRIPT_V1) => Some(ScriptProtocol::V1),
            AgentKind::Current(_) => None,
        }
    }

    /// Whether the agent masks secrets in output; a legacy agent does not.
    pub fn masks_secrets(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_SECRET_MASKING))
    }

    /// Whether the agent opens secrets sealed to its key (`crate::trust::sealed`): secrets go to no
    /// other, since in clear whoever reads the command reads them.
    pub fn opens_sealed_secrets(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_SEALED_SECRETS))
    }

    /// Whether the agent runs a script as the user its command names, or refuses it: an agent
    /// that does not would run the script as itself.
    pub fn runs_as_named_user(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_RUN_AS))
    }

    /// Whether the agent runs a script within the limits its command names, or refuses it: an
    /// agent that does not would run it unbounded.
    pub fn enforces_limits(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_LIMITS))
    }

    /// The start `spec` for `target` as this agent takes it, or why it is not sent. An agent that
    /// enforces approvals ([`SERVICE_APPROVALS`]) gets its purpose, submitter and approvals, and
    /// the command must already have the approvals its reported rules require
    /// ([`check_approvals`], as the agent will check them at `now_ms`): sent without, it would
    /// only be refused. Any other agent has no rules: it gets the command without the three (it
    /// would ignore them), unless approvals were collected for it, which it could not enforce.
    pub fn fit_approvals(&self, spec: &mut ScriptSpec, target: &str, now_ms: u64) -> Result<(), NotSent> {
        let rules = match self {
            AgentKind::Current(caps) if caps.supports(SERVICE_APPROVALS) => caps.approvals.as_deref().unwrap_or(&[]),
            _ if !spec.approvals.is_empty() => return Err(NotSent::CannotEnforce),
            _ => {
                (spec.purpose, spec.submitter) = (None, None);
                return Ok(());
            }
        };
        let approvers = Approvers::reported(rules).ok_or(NotSent::BadReport)?;
        approvers.keep_countable(&mut spec.approvals);
        let anyone = Labels::new();
        let me = Selectable { id: target, pool: None, labels: &anyone };
        check_approvals(&approvers, spec, target, me, now_ms).map(drop).map_err(NotSent::Unapproved)
    }

    /// Whether the agent completes every ticket a complete lists: an agent that does not would
    /// complete the first alone.
    pub fn completes_in_batches(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_COMPLETE_BATCH))
    }
}

/// Why a start is not sent to an agent ([`AgentKind::fit_approvals`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotSent {
    #[error("it requires approvals: {0}")]
    Unapproved(Unapproved),
    #[error("it is too old to enforce approvals (it does not list {SERVICE_APPROVALS}) and would run the command unchecked: upgrade it")]
    CannotEnforce,
    #[error("its capabilities report approval rules no agent makes")]
    BadReport,
}

impl NotSent {
    /// What the user can do about it, after the message.
    pub fn hint(&self) -> &'static str {
        match self {
            NotSent::Unapproved(_) => {
                ": record it with `dispatcher submit --detach` and have it approved with `dispatcher approve TICKET`"
            }
            _ => "",
        }
    }
}

/// What the user is told when nobody consumes the queue a capabilities request goes to.
pub fn no_consumer_notice(queue: &str, policy: RetryPolicy, timing: Timing) -> String {
    let wait = if policy.enabled { policy.duration } else { timing.attempt_timeout };
    format!("no agent is consuming {queue}; waiting up to {}", short(wait))
}
