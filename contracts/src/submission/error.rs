//! What a failed request's error says to the submission's decisions: the driver's transport
//! error, whatever it is, classified ([`CallError`], [`ErrorClass`]).

use crate::wire::error::{ErrorKind, ErrorReply};
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

/// The error of one attempt, as the driver's transport has it.
pub trait CallError: Clone + fmt::Debug + fmt::Display {
    fn class(&self) -> ErrorClass;
    /// Whether the same request may succeed if repeated.
    fn is_transient(&self) -> bool;
    /// A reply that could not be understood.
    fn codec(message: String) -> Self;
    /// An agent's refusal.
    fn agent(target: String, error: ErrorReply) -> Self;
    /// A request that must not be repeated (a legacy agent's start) got no answer.
    fn unrepeatable(message: String) -> Self;
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
