//! The envelope and its codec. Bodies are msgpack maps (`to_vec_named`), so a reader ignores
//! fields it does not know and defaults fields it lacks; the size is checked before decoding.

use crate::error::{CodecError, ErrorReply};
use crate::messages::*;
use crate::status::ScriptStatus;
use crate::topology::MAX_MESSAGE_BYTES;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// The protocol version written by this code. Readers accept any version and rely on the kind.
pub const PROTOCOL_VERSION: u16 = 2;

/// Every message on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<B> {
    pub version: u16,
    pub kind: String,
    pub message_id: String,
    /// The agent id or pool the request is for (on replies, the agent that answered).
    pub target: String,
    /// Unix ms when the sender made the message.
    pub issued_at: u64,
    /// Unix ms after which the receiver must not act on it (commands only).
    #[serde(default)]
    pub not_after: Option<u64>,
    pub body: B,
}

impl<B> Envelope<B> {
    pub fn new(kind: Kind, target: &str, issued_at: u64, not_after: Option<u64>, body: B) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            kind: kind.as_str().to_owned(),
            message_id: uuid::Uuid::new_v4().to_string(),
            target: target.to_owned(),
            issued_at,
            not_after,
            body,
        }
    }

    /// The same header around another body.
    pub fn with_body<C>(&self, body: C) -> Envelope<C> {
        Envelope {
            version: self.version,
            kind: self.kind.clone(),
            message_id: self.message_id.clone(),
            target: self.target.clone(),
            issued_at: self.issued_at,
            not_after: self.not_after,
            body,
        }
    }
}

impl<B: Serialize> Envelope<B> {
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(rmp_serde::to_vec_named(self)?)
    }
}

/// A request as an agent receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    GetCapabilities(GetCapabilities),
    StartScriptV2(StartScriptV2),
    GetStatusV2(GetStatusV2),
    CancelScriptV2(CancelScriptV2),
    CompleteScriptV2(CompleteScriptV2),
    StartScriptV1(StartScriptV1),
    GetStatusV1(GetStatusV1),
    CompleteScriptV1(CompleteScriptV1),
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::GetCapabilities(_) => Kind::GetCapabilities,
            Request::StartScriptV2(_) => Kind::StartScriptV2,
            Request::GetStatusV2(_) => Kind::GetStatusV2,
            Request::CancelScriptV2(_) => Kind::CancelScriptV2,
            Request::CompleteScriptV2(_) => Kind::CompleteScriptV2,
            Request::StartScriptV1(_) => Kind::StartScriptV1,
            Request::GetStatusV1(_) => Kind::GetStatusV1,
            Request::CompleteScriptV1(_) => Kind::CompleteScriptV1,
        }
    }

    /// The ticket the request is about, if it names one.
    pub fn ticket(&self) -> Option<&crate::Ticket> {
        match self {
            Request::StartScriptV2(b) => Some(&b.ticket),
            Request::GetStatusV2(b) => Some(&b.ticket),
            Request::CancelScriptV2(b) => Some(&b.ticket),
            Request::CompleteScriptV2(b) => Some(&b.ticket),
            Request::GetStatusV1(b) => Some(&b.ticket),
            Request::CompleteScriptV1(b) => Some(&b.ticket),
            Request::GetCapabilities(_) | Request::StartScriptV1(_) => None,
        }
    }

    /// Encodes the request in a fresh envelope.
    pub fn encode(
        &self,
        target: &str,
        issued_at: u64,
        not_after: Option<u64>,
    ) -> Result<(Envelope<()>, Vec<u8>), CodecError> {
        let header = Envelope::new(self.kind(), target, issued_at, not_after, ());
        let bytes = match self {
            Request::GetCapabilities(b) => header.with_body(b).encode(),
            Request::StartScriptV2(b) => header.with_body(b).encode(),
            Request::GetStatusV2(b) => header.with_body(b).encode(),
            Request::CancelScriptV2(b) => header.with_body(b).encode(),
            Request::CompleteScriptV2(b) => header.with_body(b).encode(),
            Request::StartScriptV1(b) => header.with_body(b).encode(),
            Request::GetStatusV1(b) => header.with_body(b).encode(),
            Request::CompleteScriptV1(b) => header.with_body(b).encode(),
        }?;
        Ok((header, bytes))
    }

    /// Decodes a request: size first, then the header, then the body its kind names.
    pub fn decode(bytes: &[u8]) -> Result<(Envelope<()>, Request), CodecError> {
        let header = decode_header(bytes)?;
        let kind = Kind::parse(&header.kind);
        let request = match kind {
            Some(Kind::GetCapabilities) => Request::GetCapabilities(body(bytes)?),
            Some(Kind::StartScriptV2) => {
                let start: StartScriptV2 = body(bytes)?;
                start.ticket.validate().map_err(CodecError::Invalid)?;
                start.spec.validate().map_err(CodecError::Invalid)?;
                Request::StartScriptV2(start)
            }
            Some(Kind::GetStatusV2) => Request::GetStatusV2(ticketed(bytes, |b: &GetStatusV2| &b.ticket)?),
            Some(Kind::CancelScriptV2) => Request::CancelScriptV2(ticketed(bytes, |b: &CancelScriptV2| &b.ticket)?),
            Some(Kind::CompleteScriptV2) => {
                Request::CompleteScriptV2(ticketed(bytes, |b: &CompleteScriptV2| &b.ticket)?)
            }
            Some(Kind::StartScriptV1) => {
                let start: StartScriptV1 = body(bytes)?;
                start.spec.validate().map_err(CodecError::Invalid)?;
                Request::StartScriptV1(start)
            }
            Some(Kind::GetStatusV1) => Request::GetStatusV1(ticketed(bytes, |b: &GetStatusV1| &b.ticket)?),
            Some(Kind::CompleteScriptV1) => {
                Request::CompleteScriptV1(ticketed(bytes, |b: &CompleteScriptV1| &b.ticket)?)
            }
            _ => return Err(CodecError::UnknownKind(header.kind)),
        };
        Ok((header, request))
    }
}

/// A reply as the dispatcher receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Capabilities(Capabilities),
    ScriptStatus(ScriptStatus),
    Error(ErrorReply),
}

impl Reply {
    pub fn kind(&self) -> Kind {
        match self {
            Reply::Capabilities(_) => Kind::Capabilities,
            Reply::ScriptStatus(_) => Kind::ScriptStatus,
            Reply::Error(_) => Kind::Error,
        }
    }

    /// Encodes the reply to a request with the given header.
    pub fn encode(&self, target: &str, issued_at: u64) -> Result<Vec<u8>, CodecError> {
        let header = Envelope::new(self.kind(), target, issued_at, None, ());
        match self {
            Reply::Capabilities(b) => header.with_body(b).encode(),
            Reply::ScriptStatus(b) => header.with_body(b).encode(),
            Reply::Error(b) => header.with_body(b).encode(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, CodecError> {
        let header = decode_header(bytes)?;
        match Kind::parse(&header.kind) {
            Some(Kind::Capabilities) => Ok(Reply::Capabilities(body(bytes)?)),
            Some(Kind::ScriptStatus) => Ok(Reply::ScriptStatus(body(bytes)?)),
            Some(Kind::Error) => Ok(Reply::Error(body(bytes)?)),
            _ => Err(CodecError::UnknownKind(header.kind)),
        }
    }
}

fn decode_header(bytes: &[u8]) -> Result<Envelope<()>, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge { size: bytes.len(), limit: MAX_MESSAGE_BYTES });
    }
    let header: Envelope<IgnoredAny> = decode(bytes)?;
    Ok(header.with_body(()))
}

fn body<B: DeserializeOwned>(bytes: &[u8]) -> Result<B, CodecError> {
    Ok(decode::<Envelope<B>>(bytes)?.body)
}

fn ticketed<B: DeserializeOwned>(bytes: &[u8], ticket: impl Fn(&B) -> &crate::Ticket) -> Result<B, CodecError> {
    let body: B = body(bytes)?;
    ticket(&body).validate().map_err(CodecError::Invalid)?;
    Ok(body)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}
