//! Negotiation: what an agent said of itself (its capabilities, or that it predates them), and
//! the script service to drive it with.

use super::error::{CallError, Unexpected};
use super::retry::{GaveUp, RetryPolicy, Timing};
use crate::time::short;
use crate::wire::envelope::Reply;
use crate::wire::error::ErrorKind;
use crate::wire::messages::{
    Capabilities, SERVICE_COMPLETE_BATCH, SERVICE_LIMITS, SERVICE_RUN_AS, SERVICE_SCRIPT_V1, SERVICE_SCRIPT_V2,
    SERVICE_SEALED_SECRETS, SERVICE_SECRET_MASKING,
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

    /// Whether the agent completes every ticket a complete lists: an agent that does not would
    /// complete the first alone.
    pub fn completes_in_batches(&self) -> bool {
        matches!(self, AgentKind::Current(caps) if caps.supports(SERVICE_COMPLETE_BATCH))
    }
}

/// What the user is told when nobody consumes the queue a capabilities request goes to.
pub fn no_consumer_notice(queue: &str, policy: RetryPolicy, timing: Timing) -> String {
    let wait = if policy.enabled { policy.duration } else { timing.attempt_timeout };
    format!("no agent is consuming {queue}; waiting up to {}", short(wait))
}
