//! Typed errors on the wire: what an agent answers instead of a result ([`ErrorReply`]), and
//! what the codec reports ([`CodecError`]).

use super::labels::LabelError;
use super::messages::SpecError;
use super::topology::NameError;
use super::transfer::ChunkError;
use crate::entropy::EntropyError;
use serde::{Deserialize, Serialize};

/// Why a request was not served. Transient kinds are worth repeating; permanent ones are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The agent does not know this kind of request (a legacy agent, or a newer dispatcher).
    Unsupported,
    /// The same ticket was already used for a different command.
    TicketConflict,
    /// The command arrived after its `not_after`; nothing ran.
    Expired,
    /// The message could not be decoded or failed validation.
    Invalid,
    NotAuthorized,
    /// The ticket store could not be reached; nothing ran and nothing was claimed.
    StoreUnavailable,
    /// The ticket store lost its data after the command was first issued: it may have run
    /// already, so it is refused rather than risk running it twice.
    StoreReset,
    /// The agent is stopping and takes no new work.
    ShuttingDown,
    /// The command was MAC'd in a session the agent does not hold (it restarted, or let the
    /// session expire): nothing ran; the dispatcher sends it again signed
    /// ([`crate::trust::session`]).
    UnknownSession,
    /// The agent failed in an unexpected way while serving the request.
    Internal,
    /// A kind from a newer peer.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// Whether repeating the same request may succeed.
    pub fn is_transient(self) -> bool {
        // UnknownSession: the dispatcher's RPC sends the request again signed at once; should the
        // refusal still reach a retry loop, repeating it goes signed too.
        matches!(
            self,
            ErrorKind::StoreUnavailable | ErrorKind::ShuttingDown | ErrorKind::Internal | ErrorKind::UnknownSession
        )
    }
}

/// The body of an `Error` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply { kind, message: message.into() }
    }
}

/// What can go wrong reading or writing a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message too complex to decode: {0}")]
    TooComplex(String),
    #[error("malformed message: {0}")]
    Malformed(#[source] Malformed),
    #[error("unsupported message kind {0:?}")]
    UnknownKind(String),
    #[error("invalid message: {0}")]
    Invalid(#[source] Invalid),
    #[error("could not encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// No message id: the random source gave no bytes.
    #[error("cannot get random bytes from the system: {0}")]
    Random(#[source] EntropyError),
}

/// How a message's bytes are not msgpack of the message.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error(transparent)]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message ends inside a value")]
    Truncated,
    #[error("reserved msgpack marker 0xc1 at byte {at}")]
    ReservedMarker { at: usize },
}

/// What a well-formed message holds that no peer may send.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error("heartbeat interval {0} ms")]
    HeartbeatInterval(u64),
    #[error("oversized version or services")]
    Oversized,
}

impl From<Invalid> for CodecError {
    fn from(invalid: Invalid) -> Self {
        CodecError::Invalid(invalid)
    }
}

impl CodecError {
    /// The error kind to answer the sender with.
    pub fn reply_kind(&self) -> ErrorKind {
        match self {
            CodecError::UnknownKind(_) => ErrorKind::Unsupported,
            CodecError::Encode(_) | CodecError::Random(_) => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }
}
