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
