//! Seals: what vouches for a message (ARCHITECTURE.md, Trust), carried in AMQP headers beside
//! its msgpack body, which is unchanged, so old readers keep working. [`KEY_HEADER`] and
//! [`SIGNATURE_HEADER`] carry a signature and the id of the key that made it; between a
//! dispatcher and an agent that agreed a session ([`super::session`]), [`SESSION_HEADER`] and
//! [`MAC_HEADER`] carry the session's id and an HMAC over the same bytes.
//!
//! A command's seal covers [`COMMAND_CONTEXT`] and the whole body (every envelope field: kind,
//! message id, target, `issued_at`, `not_after`, and the kind's body with its ticket); an
//! answer's covers [`ANSWER_CONTEXT`], the message id of the request it answers, and its body,
//! so an old answer replayed to another request does not verify. A presence announcement's
//! covers [`ANNOUNCEMENT_CONTEXT`] and its body, which holds the agent's id and the time it
//! announced, so a copy replayed later still says that old time (and drops out with it). A
//! schedule's (`dispatcher schedule`) covers [`SCHEDULE_CONTEXT`] and its record as the journal
//! keeps it, so no signature of a command, answer or announcement is one of a schedule, nor the
//! reverse. Signatures never appear in `Debug` output or messages.

use super::keys::{KeyId, SecretKey};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::fmt;

/// What a command's signature covers before its body.
pub const COMMAND_CONTEXT: &[u8] = b"cuttle command v1\0";
/// What an answer's signature covers before the request's message id and its own body.
pub const ANSWER_CONTEXT: &[u8] = b"cuttle answer v1\0";
/// What a presence announcement's signature covers before its body.
pub const ANNOUNCEMENT_CONTEXT: &[u8] = b"cuttle announcement v1\0";
/// What a schedule's signature covers before its record (the service's journal keeps both).
pub const SCHEDULE_CONTEXT: &[u8] = b"cuttle schedule v1\0";
/// AMQP header carrying the signing key's id (hex).
pub const KEY_HEADER: &str = "cuttle-key";
/// AMQP header carrying the signature (base64 of 64 bytes).
pub const SIGNATURE_HEADER: &str = "cuttle-sig";
/// AMQP header carrying the session id (hex) of a MAC'd message.
pub const SESSION_HEADER: &str = "cuttle-session";
/// AMQP header carrying the HMAC-SHA256 tag (base64 of 32 bytes) of a MAC'd message.
pub const MAC_HEADER: &str = "cuttle-mac";

/// A session's id: 16 bytes derived with its key, shown in hex. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub(crate) [u8; 16]);

impl SessionId {
    pub fn parse(hex_id: &str) -> Option<SessionId> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(hex_id, &mut id).ok()?;
        Some(SessionId(id))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl SecretKey {
    /// Seals a command whose encoded envelope is `body`.
    pub fn seal_command(&self, body: &[u8]) -> Seal {
        self.seal(&command_parts(body).concat())
    }

    /// Seals an answer (`body`) to the request whose message id is `request_id`.
    pub fn seal_answer(&self, request_id: &str, body: &[u8]) -> Seal {
        self.seal(&answer_parts(request_id, body).concat())
    }

    /// Seals a presence announcement whose encoded body is `body`.
    pub fn seal_announcement(&self, body: &[u8]) -> Seal {
        self.seal(&announcement_parts(body).concat())
    }

    /// Seals a schedule whose record, as the journal keeps it, is `record`.
    pub fn seal_schedule(&self, record: &[u8]) -> Seal {
        self.seal(&schedule_parts(record).concat())
    }

    fn seal(&self, message: &[u8]) -> Seal {
        Seal::Signature { key: self.id(), signature: self.sign(message) }
    }
}

/// What a command's seal (signature or MAC) covers, in order: verified part by part, never
/// copied into one message.
pub(crate) fn command_parts(body: &[u8]) -> [&[u8]; 2] {
    [COMMAND_CONTEXT, body]
}

/// What the seal of an answer to the request `request_id` covers, in order.
pub(crate) fn answer_parts<'a>(request_id: &'a str, body: &'a [u8]) -> [&'a [u8]; 3] {
    [ANSWER_CONTEXT, request_id.as_bytes(), body]
}

/// What a presence announcement's signature covers, in order.
pub(crate) fn announcement_parts(body: &[u8]) -> [&[u8]; 2] {
    [ANNOUNCEMENT_CONTEXT, body]
}

/// What a schedule's signature covers, in order.
pub(crate) fn schedule_parts(record: &[u8]) -> [&[u8]; 2] {
    [SCHEDULE_CONTEXT, record]
}

/// What vouches for a message, as carried in the AMQP headers: a signature and the id of the key
/// that made it, or a MAC under a session ([`super::session::Session`]) and the session's id.
#[derive(Clone, PartialEq, Eq)]
pub enum Seal {
    Signature { key: KeyId, signature: [u8; 64] },
    Mac { session: SessionId, tag: [u8; 32] },
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seal::Signature { key, .. } => write!(f, "Seal(by {key})"),
            Seal::Mac { session, .. } => write!(f, "Seal(in session {session})"),
        }
    }
}

/// The seal headers of a message, as read: [`KEY_HEADER`], [`SIGNATURE_HEADER`],
/// [`SESSION_HEADER`], [`MAC_HEADER`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SealHeaders<'a> {
    pub key: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub session: Option<&'a str>,
    pub mac: Option<&'a str>,
}

/// Why a message's seal headers cannot be read. Clone (and compared), as a delivery's seal is
/// passed on before it is checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealHeaderError {
    #[error("{name} is not base64")]
    NotBase64 { name: &'static str, source: base64::DecodeError },
    #[error("{KEY_HEADER} is not a key id")]
    KeyId,
    #[error("{SESSION_HEADER} is not a session id")]
    SessionId,
    #[error("{name} is not {bytes} bytes")]
    Length { name: &'static str, bytes: usize },
    #[error("expected {KEY_HEADER} with {SIGNATURE_HEADER}, or {SESSION_HEADER} with {MAC_HEADER}, and nothing else")]
    Combination,
}

impl Seal {
    /// The key that signed, for a signature.
    pub fn signer(&self) -> Option<KeyId> {
        match self {
            Seal::Signature { key, .. } => Some(*key),
            Seal::Mac { .. } => None,
        }
    }

    /// The headers that carry it: names and values.
    pub fn to_headers(&self) -> [(&'static str, String); 2] {
        match self {
            Seal::Signature { key, signature } => {
                [(KEY_HEADER, key.to_string()), (SIGNATURE_HEADER, BASE64.encode(signature))]
            }
            Seal::Mac { session, tag } => [(SESSION_HEADER, session.to_string()), (MAC_HEADER, BASE64.encode(tag))],
        }
    }

    /// Reads the headers; `Ok(None)` when none is there (an unsigned message).
    pub fn from_headers(headers: SealHeaders<'_>) -> Result<Option<Seal>, SealHeaderError> {
        let decode = |name: &'static str, value: &str| {
            BASE64.decode(value).map_err(|source| SealHeaderError::NotBase64 { name, source })
        };
        match headers {
            SealHeaders { key: None, signature: None, session: None, mac: None } => Ok(None),
            SealHeaders { key: Some(key), signature: Some(signature), session: None, mac: None } => {
                let key = KeyId::parse(key).ok_or(SealHeaderError::KeyId)?;
                let signature = decode(SIGNATURE_HEADER, signature)?
                    .try_into()
                    .map_err(|_| SealHeaderError::Length { name: SIGNATURE_HEADER, bytes: 64 })?;
                Ok(Some(Seal::Signature { key, signature }))
            }
            SealHeaders { key: None, signature: None, session: Some(session), mac: Some(mac) } => {
                let session = SessionId::parse(session).ok_or(SealHeaderError::SessionId)?;
                let tag = decode(MAC_HEADER, mac)?
                    .try_into()
                    .map_err(|_| SealHeaderError::Length { name: MAC_HEADER, bytes: 32 })?;
                Ok(Some(Seal::Mac { session, tag }))
            }
            _ => Err(SealHeaderError::Combination),
        }
    }
}
