//! What can go wrong talking to an agent, and whether trying again may help.

use contracts::submission::error::{CallError, ErrorClass};
use contracts::wire::error::{CodecError, ErrorKind, ErrorReply};
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The broker could not be reached or refused the connection.
    #[error("cannot reach the broker: {0}")]
    Connect(String),
    /// The broker refused us for good: wrong credentials, a missing vhost, no permission.
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    /// The connection or channel failed during the call.
    #[error("lost the broker connection: {0}")]
    ConnectionLost(String),
    /// The broker did not confirm the publish (nack or no confirm in time).
    #[error("the broker did not confirm the request: {0}")]
    NotConfirmed(String),
    /// No queue is bound for the target: the agent never started, or the name is wrong.
    #[error("no agent queue for {target}: is an agent with this id running?")]
    Unroutable { target: String },
    /// The request was published but no reply came in time.
    #[error("no reply from {target} within {}", contracts::time::short(*after))]
    NoReply { target: String, after: Duration },
    /// The agent answered with an error.
    #[error("{target} refused the request: {} ({:?})", error.message, error.kind)]
    Agent { target: String, error: ErrorReply },
    /// A message could not be encoded or decoded.
    #[error("{0}")]
    Codec(String),
    /// A request that must not be repeated (a legacy agent's start) got no answer.
    #[error("{0}; not retried: repeating a legacy agent's start could run the script twice")]
    Unrepeatable(String),
    /// Only forged answers came (not signed by the target's pinned key, or for another request)
    /// before the reply timeout.
    #[error("no genuine answer from {target} within {}; ignored forged answer(s): {reason}", contracts::time::short(*after))]
    Forged { target: String, after: Duration, reason: String },
    /// The target has no pin, so no answer of its could be believed: nothing was sent.
    #[error("{target} is not pinned in {file}, so its answers cannot be believed; nothing was sent. Pin its public key (the agent logs it at start; `worker-agent keygen` prints it): echo '{target} ed25519:<its public key>' >> {file}")]
    NotPinned { target: String, file: String },
    /// No dispatcher key to sign with.
    #[error("no dispatcher key to sign requests with (give --key or CUTTLE_DISPATCHER_KEY)")]
    NoKey,
    /// The user cancelled while waiting.
    #[error("cancelled by the user")]
    Cancelled,
}

impl RpcError {
    /// Whether the same request may succeed if repeated.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Connect(_)
            | RpcError::ConnectionLost(_)
            | RpcError::NotConfirmed(_)
            | RpcError::NoReply { .. }
            | RpcError::Forged { .. } => true,
            RpcError::Agent { error, .. } => error.kind.is_transient(),
            RpcError::Refused(_)
            | RpcError::Unroutable { .. }
            | RpcError::Codec(_)
            | RpcError::Unrepeatable(_)
            | RpcError::Cancelled
            | RpcError::NotPinned { .. }
            | RpcError::NoKey => false,
        }
    }

    /// The agent's error kind, if the agent answered with one.
    pub fn agent_error(&self) -> Option<ErrorKind> {
        match self {
            RpcError::Agent { error, .. } => Some(error.kind),
            _ => None,
        }
    }
}

impl From<CodecError> for RpcError {
    fn from(error: CodecError) -> Self {
        RpcError::Codec(error.to_string())
    }
}

impl CallError for RpcError {
    fn class(&self) -> ErrorClass {
        match self {
            RpcError::Connect(_) | RpcError::Refused(_) => ErrorClass::Unreachable,
            RpcError::Unroutable { .. } => ErrorClass::NoSuchAgent,
            RpcError::Cancelled => ErrorClass::Cancelled,
            RpcError::NotPinned { .. } | RpcError::NoKey => ErrorClass::Usage,
            RpcError::Agent { error, .. } => ErrorClass::Agent(error.kind),
            _ => ErrorClass::Other,
        }
    }

    fn is_transient(&self) -> bool {
        RpcError::is_transient(self)
    }

    fn codec(message: String) -> Self {
        RpcError::Codec(message)
    }

    fn agent(target: String, error: ErrorReply) -> Self {
        RpcError::Agent { target, error }
    }

    fn unrepeatable(message: String) -> Self {
        RpcError::Unrepeatable(message)
    }

    fn cancelled() -> Self {
        RpcError::Cancelled
    }
}

#[cfg(test)]
mod tests {
    //! How the dispatcher's errors end a submission (`contracts::submission::outcome`).
    use super::*;
    use contracts::submission::outcome::{exit, Outcome, OutcomeKind};
    use contracts::wire::exit_code;

    #[test]
    fn script_codes_pass_through_and_agent_codes_map_to_distinct_exits() {
        let t = edge::entropy::ticket();
        assert_eq!(Outcome::from_exit_code(t.clone(), "a", 3).process_exit, 3);
        assert_eq!(Outcome::from_exit_code(t.clone(), "a", 3).outcome, OutcomeKind::Completed);
        let codes = [
            exit_code::CANCELLED,
            exit_code::UNKNOWN_RESULT,
            exit_code::UNKNOWN_TICKET,
            exit_code::EXECUTION_TIMEOUT,
            exit_code::MUTEX_TIMEOUT,
            exit_code::FATAL,
        ];
        let exits: std::collections::HashSet<u8> =
            codes.iter().map(|&c| Outcome::from_exit_code(t.clone(), "a", c).process_exit).collect();
        assert_eq!(exits.len(), codes.len());
        assert!(exits.iter().all(|e| (101..=110).contains(e)));
    }

    #[test]
    fn errors_after_the_start_leave_the_outcome_unknown() {
        let lost = RpcError::ConnectionLost("reset".into());
        assert_eq!(Outcome::from_error(None, "a", &lost, String::new(), true).outcome, OutcomeKind::Unknown);
        assert_eq!(Outcome::from_error(None, "a", &lost, String::new(), false).process_exit, exit::NO_ANSWER);
        let unroutable = RpcError::Unroutable { target: "a".into() };
        assert_eq!(Outcome::from_error(None, "a", &unroutable, String::new(), false).process_exit, exit::NO_SUCH_AGENT);
    }

    #[test]
    fn an_unknown_ticket_after_a_cancel_is_cancelled_only_when_its_start_was_sent() {
        let unknown = Outcome::from_exit_code(edge::entropy::ticket(), "a", exit_code::UNKNOWN_TICKET);
        assert_eq!(unknown.clone().after_cancel(false).process_exit, exit::UNKNOWN_TICKET);
        let cancelled = unknown.after_cancel(true);
        assert_eq!((cancelled.outcome, cancelled.process_exit), (OutcomeKind::Cancelled, exit::CANCELLED));
        let ran = Outcome::from_exit_code(edge::entropy::ticket(), "a", 0);
        assert_eq!(ran.clone().after_cancel(true), ran);
        assert_eq!(Outcome::not_sent(None, "a").process_exit, exit::NOT_SENT);
    }
}
