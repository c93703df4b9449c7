//! What can go wrong talking to an agent, and whether trying again may help. Every error keeps
//! what caused it (lapin's error, the codec's, the trust check's); it is `Clone`, as the
//! submission keeps the last one, so a cause that is not is shared behind an `Arc`.

use contracts::submission::error::{CallError, ErrorClass, Unexpected};
use contracts::time::short;
use contracts::trust::sealed::SealError;
use contracts::trust::verify::Forged;
use contracts::wire::endpoints::EndpointsError;
use contracts::wire::error::{CodecError, ErrorKind, ErrorReply};
use edge::connect::broker::SILENT_BROKER;
use edge::connect::proxy::ProxyError;
use edge::connect::tls::TlsFailure;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The broker could not be reached or refused the connection.
    #[error("cannot reach the broker: {0}")]
    Connect(#[source] Unreachable),
    /// The broker refused us for good: wrong credentials, a missing vhost, no permission.
    #[error("the broker refused the connection: {0}")]
    Refused(#[source] Refusal),
    /// The connection or channel failed during the call.
    #[error("lost the broker connection: {0}")]
    ConnectionLost(#[source] LinkLost),
    /// The broker did not confirm the publish (nack or no confirm in time).
    #[error("the broker did not confirm the request: {0}")]
    NotConfirmed(Unconfirmed),
    /// No queue is bound for the target: the agent never started, or the name is wrong.
    #[error("no agent queue for {target}: is an agent with this id running?")]
    Unroutable { target: String },
    /// The request was published but no reply came in time.
    #[error("no reply from {target} within {}", short(*after))]
    NoReply { target: String, after: Duration },
    /// The agent answered with an error.
    #[error("{target} refused the request: {} ({:?})", error.message, error.kind)]
    Agent { target: String, error: ErrorReply },
    /// A message could not be encoded or decoded.
    #[error("{0}")]
    Codec(#[source] Arc<CodecError>),
    /// A reply the submission could not go on with.
    #[error("{0}")]
    Unexpected(#[source] Unexpected),
    /// A pool's worker answered under a name no agent can have.
    #[error("a worker of {route} answered as {source}")]
    WorkerName { route: String, source: contracts::wire::topology::NameError },
    /// The start's secrets could not be sealed to the target's keys.
    #[error("cannot seal the secrets to {target}: {source}")]
    Seal { target: String, source: SealError },
    /// A request that must not be repeated (a legacy agent's start) got no answer.
    #[error("{0}; not retried: repeating a legacy agent's start could run the script twice")]
    Unrepeatable(#[source] Box<RpcError>),
    /// Only forged answers came (not signed by the target's pinned key, or for another request)
    /// before the reply timeout.
    #[error("no genuine answer from {target} within {}; ignored forged answer(s): {reason}", short(*after))]
    Forged { target: String, after: Duration, reason: Forged },
    /// The target has no pin, so no answer of its could be believed: nothing was sent.
    #[error("{target} is not pinned in {file}, so its answers cannot be believed; nothing was sent. Pin its public key (the agent logs it at start; `worker-agent keygen` prints it): echo '{target} ed25519:<its public key>' >> {file}")]
    NotPinned { target: String, file: String },
    /// No dispatcher key to sign with.
    #[error("no dispatcher key to sign requests with (give --key or CUTTLE_DISPATCHER_KEY)")]
    NoKey,
    /// The user cancelled while waiting.
    #[error("cancelled by the user")]
    Cancelled,
    /// The dispatcher itself failed while running a target (a panic, whose message this is: a
    /// panic carries no error).
    #[error("{0}")]
    Panicked(String),
}

/// Why the broker could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unreachable {
    /// The URL list cannot be used.
    #[error(transparent)]
    Endpoints(#[from] EndpointsError),
    /// Nothing answered within the connect timeout.
    #[error("no answer within {}", short(*after))]
    NoAnswer { after: Duration },
    /// Nothing answered through the proxy within the connect timeout, not even the proxy.
    #[error("no answer through the proxy {proxy} within {}: is the proxy up, and does it answer CONNECT?", short(*after))]
    NoAnswerThrough { proxy: String, after: Duration },
    /// The proxy failed to open the tunnel, for now (down, or unable to reach the broker):
    /// its error ([`ProxyError`]) is the message.
    #[error("{0}")]
    Proxy(Arc<std::io::Error>),
    /// The broker took the TCP connection and never spoke AMQP.
    #[error("{SILENT_BROKER} (no AMQP answer within {})", short(*after))]
    Silent { after: Duration },
    /// Connecting failed otherwise, told in one short line ([`short_cause`]).
    #[error("{}", short_cause(.0))]
    Failed(#[source] lapin::Error),
}

/// How the broker refused us, which no retry mends.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The broker closed the connection with a refusal's reply code ([`refusal_hint`]).
    #[error("{} ({})", .0.get_message(), refusal_hint(.0.get_id()).unwrap_or_default())]
    Login(#[source] lapin::protocol::AMQPError),
    /// The TLS handshake failed: the broker's certificate is not trusted, or ours was refused.
    #[error("TLS handshake failed: {source} ({})", failure.hint())]
    Tls { failure: TlsFailure, source: Arc<std::io::Error> },
    /// The proxy refuses us ([`ProxyError::is_setting`]: credentials, a forbidden destination).
    #[error("{0}")]
    Proxy(Arc<std::io::Error>),
}

/// How a live link was lost.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkLost {
    /// A broker call failed on it.
    #[error("{0}")]
    Broker(#[source] lapin::Error),
    /// A broker call of `dispatcher setup-broker` failed.
    #[error("{call}: {source}")]
    Setup { call: &'static str, source: lapin::Error },
    /// The link's replies stopped coming (its consumer ended).
    #[error("the reply channel closed")]
    RepliesClosed,
    /// The request's call was dropped (only a machine fed out of order asks for it).
    #[error("the request was dropped")]
    Dropped,
}

/// How a publish went unconfirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unconfirmed {
    #[error("no confirm within 10s")]
    NoConfirm,
    #[error("the broker nacked the publish")]
    Nacked,
    #[error("publish did not go out within 10s")]
    NotOut,
}

/// What failed to connect, in one short line: the broker's message when it closed the
/// connection, the kind of an I/O error ("connection refused"), else lapin's words.
fn short_cause(error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        lapin::ErrorKind::IOError(io) => io.kind().to_string(),
        _ => error.to_string(),
    }
}

/// What to check when the broker closes the connection with `code` while we connect; `None`
/// for codes that are not a refusal.
fn refusal_hint(code: u16) -> Option<&'static str> {
    match code {
        403 => Some("check the user and password of the broker URL"),
        530 => Some("check the vhost of the broker URL, and that the user may use it"),
        402 => Some("check the broker URL's vhost"),
        _ => None,
    }
}

/// What failed to connect. The broker refusing us (credentials, vhost, permissions, a TLS
/// handshake it refused or whose certificate we do not trust) or the proxy refusing us
/// (credentials, a forbidden destination) is permanent: repeating cannot help, so it is not
/// retried. Told by the AMQP reply code, the TLS error's type and the proxy error's.
pub(crate) fn connect_error(error: lapin::Error) -> RpcError {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if refusal_hint(amqp.get_id()).is_some() => {
            RpcError::Refused(Refusal::Login(amqp.clone()))
        }
        lapin::ErrorKind::IOError(io) => match (TlsFailure::of(&**io), ProxyError::of(&**io)) {
            (Some(failure), _) => RpcError::Refused(Refusal::Tls { failure, source: io.clone() }),
            (None, Some(proxy)) if proxy.is_setting() => RpcError::Refused(Refusal::Proxy(io.clone())),
            (None, Some(_)) => RpcError::Connect(Unreachable::Proxy(io.clone())),
            (None, None) => RpcError::Connect(Unreachable::Failed(error)),
        },
        _ => RpcError::Connect(Unreachable::Failed(error)),
    }
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
            | RpcError::Unexpected(_)
            | RpcError::WorkerName { .. }
            | RpcError::Seal { .. }
            | RpcError::Panicked(_)
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
        RpcError::Codec(Arc::new(error))
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

    fn unexpected(reply: Unexpected) -> Self {
        RpcError::Unexpected(reply)
    }

    fn agent(target: String, error: ErrorReply) -> Self {
        RpcError::Agent { target, error }
    }

    fn unrepeatable(error: Self) -> Self {
        RpcError::Unrepeatable(Box::new(error))
    }

    fn cancelled() -> Self {
        RpcError::Cancelled
    }
}

/// A link lost with lapin's error for `what` (a reset, say), for tests.
#[cfg(test)]
pub(crate) fn lost_link(what: &str) -> RpcError {
    let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, what.to_owned());
    RpcError::ConnectionLost(LinkLost::Broker(lapin::Error::from(reset)))
}

/// A broker that refused the TCP connection, for tests.
#[cfg(test)]
pub(crate) fn unreachable() -> RpcError {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    RpcError::Connect(Unreachable::Failed(lapin::Error::from(refused)))
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
            exit_code::MEMORY_LIMIT,
        ];
        let exits: std::collections::HashSet<u8> =
            codes.iter().map(|&c| Outcome::from_exit_code(t.clone(), "a", c).process_exit).collect();
        assert_eq!(exits.len(), codes.len());
        assert!(exits.iter().all(|e| (101..=113).contains(e)));
    }

    #[test]
    fn errors_after_the_start_leave_the_outcome_unknown() {
        let lost = RpcError::ConnectionLost(LinkLost::RepliesClosed);
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
