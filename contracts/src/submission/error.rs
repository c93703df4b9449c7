//! What a failed request's error says to the submission's decisions: the driver's transport
//! error, whatever it is, classified ([`CallError`], [`ErrorClass`]).

use crate::wire::error::{ErrorKind, ErrorReply};
use crate::wire::messages::Kind;
use std::fmt;

/// What a failed request's error says, as far as deciding goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The broker could not be reached, or refused us.
    Unreachable,
    /// No queue for the target.
    NoSuchAgent,
    /// The user cancelled.
    Cancelled,
    /// Bad configuration (no pin, no key).
    Usage,
    /// The agent answered with an error of this kind.
    Agent(ErrorKind),
    Other,
}

/// A reply the submission cannot go on with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unexpected {
    /// An answer of another kind than the request's.
    #[error("expected {expected}, got {got}")]
    Kind { expected: &'static str, got: Kind },
    /// The agent's capabilities list no script service this dispatcher speaks.
    #[error("{target} supports no script service this dispatcher knows")]
    NoScriptService { target: String },
}

/// The error of one attempt, as the driver's transport has it. Clone, since the submission keeps
/// the last one it got (a transport error keeps its source behind an `Arc` where that is not).
pub trait CallError: Clone + fmt::Debug + fmt::Display {
    fn class(&self) -> ErrorClass;
    /// Whether the same request may succeed if repeated.
    fn is_transient(&self) -> bool;
    /// A reply the submission cannot go on with.
    fn unexpected(reply: Unexpected) -> Self;
    /// An agent's refusal.
    fn agent(target: String, error: ErrorReply) -> Self;
    /// `error` ended a request that must not be repeated (a legacy agent's start) without an
    /// answer.
    fn unrepeatable(error: Self) -> Self;
    /// The user cancelled.
    fn cancelled() -> Self;

    /// The agent's error kind, if the agent answered with one.
    fn agent_error(&self) -> Option<ErrorKind> {
        match self.class() {
            ErrorClass::Agent(kind) => Some(kind),
            _ => None,
        }
    }
}
