//! The envelope and its codec. Bodies are msgpack maps (`to_vec_named`), so a reader ignores
//! fields it does not know and defaults fields it lacks; the size is checked before decoding.

use crate::entropy::{draw, Entropy};
use crate::wire::error::{CodecError, ErrorReply, Invalid, Malformed};
use crate::wire::messages::{
    CancelScriptV1, CancelScriptV2, Capabilities, CompleteScriptV1, CompleteScriptV2, GetCapabilities, GetStatusV1,
    GetStatusV2, Kind, StartScriptV1, StartScriptV2,
};
use crate::wire::status::ScriptStatus;
use crate::wire::ticket::Ticket;
use crate::wire::topology::MAX_MESSAGE_BYTES;
use crate::wire::transfer::{DownloadChunk, FileChunk, TransferStatus, UploadChunk};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// The protocol version written by this code. Readers accept any version and rely on the kind.
pub const PROTOCOL_VERSION: u16 = 2;

/// An X25519 public value, as carried in an envelope's `key_share` (a session's offer or
/// acceptance: `crate::trust::session`).
pub type KeyShare = [u8; 32];

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
    /// The sender's X25519 share for a session ([`crate::trust::session`]): in a signed command, the
    /// dispatcher's offer; in the signed answer to it, the agent's acceptance. Absent otherwise
    /// (and then not written, so such messages are byte for byte as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_share: Option<serde_bytes::ByteBuf>,
    /// On an answer: the request it answers ([`InReplyTo`]), inside what the answer's signature
    /// or MAC covers. Absent on requests (and then not written), and on the answers of agents
    /// that predate [`crate::wire::messages::SERVICE_ANSWER_BINDING`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<InReplyTo>,
    pub body: B,
}

/// What an answer says of the request it answers: the SHA-256 of that request's bytes exactly as
/// the agent received them (its whole envelope, body included), and the ticket it named, if the
/// agent got as far as reading it. The answer's seal covers both, so an answer counts only for
/// the very message its dispatcher sent: a message made to look like it (the same `message_id`
/// or correlation id, another body) or an old command replayed under its ids has another digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InReplyTo {
    pub request_sha256: serde_bytes::ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
}

impl InReplyTo {
    /// The answer to the request whose [`request_digest`] is `digest`, about `ticket`.
    pub fn new(digest: [u8; 32], ticket: Option<Ticket>) -> InReplyTo {
        InReplyTo { request_sha256: serde_bytes::ByteBuf::from(digest.to_vec()), ticket }
    }

    /// Whether it answers the request whose digest is `digest`.
    pub fn answers(&self, digest: &[u8; 32]) -> bool {
        self.request_sha256.as_slice() == digest
    }
}

/// The SHA-256 of a request's bytes, as an answer names it ([`InReplyTo`]).
pub fn request_digest(request: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(request).into()
}

impl<B> Envelope<B> {
    /// A new message of `kind` to (or, on an answer, from) `target`, its id a UUID v4 drawn from
    /// `entropy`.
    pub fn new(
        kind: Kind,
        target: &str,
        issued_at: u64,
        not_after: Option<u64>,
        body: B,
        entropy: &mut dyn Entropy,
    ) -> Result<Self, CodecError> {
        let id = draw::<16>(entropy).map_err(CodecError::Random)?;
        Ok(Envelope {
            version: PROTOCOL_VERSION,
            kind: kind.as_str().to_owned(),
            message_id: uuid::Builder::from_random_bytes(id).into_uuid().to_string(),
            target: target.to_owned(),
            issued_at,
            not_after,
            key_share: None,
            in_reply_to: None,
            body,
        })
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
            key_share: self.key_share.clone(),
            in_reply_to: self.in_reply_to.clone(),
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
    CancelScriptV1(CancelScriptV1),
    CompleteScriptV1(CompleteScriptV1),
    UploadChunk(UploadChunk),
    DownloadChunk(DownloadChunk),
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
            Request::CancelScriptV1(_) => Kind::CancelScriptV1,
            Request::CompleteScriptV1(_) => Kind::CompleteScriptV1,
            Request::UploadChunk(_) => Kind::UploadChunk,
            Request::DownloadChunk(_) => Kind::DownloadChunk,
        }
    }

    /// The ticket the request is about, if it names one.
    pub fn ticket(&self) -> Option<&Ticket> {
        match self {
            Request::StartScriptV2(b) => Some(&b.ticket),
            Request::GetStatusV2(b) => Some(&b.ticket),
            Request::CancelScriptV2(b) => Some(&b.ticket),
            Request::CompleteScriptV2(b) => Some(&b.ticket),
            Request::GetStatusV1(b) => Some(&b.ticket),
            Request::CancelScriptV1(b) => Some(&b.ticket),
            Request::CompleteScriptV1(b) => Some(&b.ticket),
            Request::GetCapabilities(_)
            | Request::StartScriptV1(_)
            | Request::UploadChunk(_)
            | Request::DownloadChunk(_) => None,
        }
    }

    /// Encodes the request in a fresh envelope, its message id drawn from `entropy`.
    pub fn encode(
        &self,
        target: &str,
        issued_at: u64,
        not_after: Option<u64>,
        entropy: &mut dyn Entropy,
    ) -> Result<(Envelope<()>, Vec<u8>), CodecError> {
        self.encode_offering(target, issued_at, not_after, None, entropy)
    }

    /// [`Request::encode`], offering a session with `key_share` ([`crate::trust::session::Offer`]).
    pub fn encode_offering(
        &self,
        target: &str,
        issued_at: u64,
        not_after: Option<u64>,
        key_share: Option<&KeyShare>,
        entropy: &mut dyn Entropy,
    ) -> Result<(Envelope<()>, Vec<u8>), CodecError> {
        let mut header = Envelope::new(self.kind(), target, issued_at, not_after, (), entropy)?;
        header.key_share = key_share.map(|share| serde_bytes::ByteBuf::from(share.to_vec()));
        let bytes = match self {
            Request::GetCapabilities(b) => header.with_body(b).encode(),
            Request::StartScriptV2(b) => header.with_body(b).encode(),
            Request::GetStatusV2(b) => header.with_body(b).encode(),
            Request::CancelScriptV2(b) => header.with_body(b).encode(),
            Request::CompleteScriptV2(b) => header.with_body(b).encode(),
            Request::StartScriptV1(b) => header.with_body(b).encode(),
            Request::GetStatusV1(b) => header.with_body(b).encode(),
            Request::CancelScriptV1(b) => header.with_body(b).encode(),
            Request::CompleteScriptV1(b) => header.with_body(b).encode(),
            Request::UploadChunk(b) => header.with_body(b).encode(),
            Request::DownloadChunk(b) => header.with_body(b).encode(),
        }?;
        Ok((header, bytes))
    }

    /// Decodes a request: size and shape first (see [`check_shape`]), then the header, then the
    /// body its kind names. Tickets are checked as they are decoded ([`Ticket`]).
    pub fn decode(bytes: &[u8]) -> Result<(Envelope<()>, Request), CodecError> {
        let header = decode_header(bytes)?;
        let kind = Kind::parse(&header.kind);
        let request = match kind {
            Some(Kind::GetCapabilities) => Request::GetCapabilities(body(bytes)?),
            Some(Kind::StartScriptV2) => {
                let start: StartScriptV2 = body(bytes)?;
                start.spec.validate().map_err(Invalid::from)?;
                Request::StartScriptV2(start)
            }
            Some(Kind::GetStatusV2) => Request::GetStatusV2(body(bytes)?),
            Some(Kind::CancelScriptV2) => Request::CancelScriptV2(body(bytes)?),
            Some(Kind::CompleteScriptV2) => Request::CompleteScriptV2(body(bytes)?),
            Some(Kind::StartScriptV1) => {
                let start: StartScriptV1 = body(bytes)?;
                start.spec.validate().map_err(Invalid::from)?;
                Request::StartScriptV1(start)
            }
            Some(Kind::GetStatusV1) => Request::GetStatusV1(body(bytes)?),
            Some(Kind::CancelScriptV1) => Request::CancelScriptV1(body(bytes)?),
            Some(Kind::CompleteScriptV1) => Request::CompleteScriptV1(body(bytes)?),
            Some(Kind::UploadChunk) => {
                let chunk: UploadChunk = body(bytes)?;
                chunk.validate().map_err(Invalid::from)?;
                Request::UploadChunk(chunk)
            }
            Some(Kind::DownloadChunk) => {
                let chunk: DownloadChunk = body(bytes)?;
                chunk.validate().map_err(Invalid::from)?;
                Request::DownloadChunk(chunk)
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
    TransferStatus(TransferStatus),
    FileChunk(FileChunk),
}

impl Reply {
    pub fn kind(&self) -> Kind {
        match self {
            Reply::Capabilities(_) => Kind::Capabilities,
            Reply::ScriptStatus(_) => Kind::ScriptStatus,
            Reply::Error(_) => Kind::Error,
            Reply::TransferStatus(_) => Kind::TransferStatus,
            Reply::FileChunk(_) => Kind::FileChunk,
        }
    }

    /// Encodes the reply of agent `target`, as agents that predate answer binding did (it names
    /// no request: [`Reply::encode_answering`]), its message id drawn from `entropy`.
    pub fn encode(&self, target: &str, issued_at: u64, entropy: &mut dyn Entropy) -> Result<Vec<u8>, CodecError> {
        self.encode_answering(target, issued_at, None, None, entropy)
    }

    /// Encodes the reply of agent `target` to the request `in_reply_to` names, accepting the
    /// session that request offered with `key_share` ([`crate::trust::session::accept`]).
    pub fn encode_answering(
        &self,
        target: &str,
        issued_at: u64,
        in_reply_to: Option<InReplyTo>,
        key_share: Option<&KeyShare>,
        entropy: &mut dyn Entropy,
    ) -> Result<Vec<u8>, CodecError> {
        let mut header = Envelope::new(self.kind(), target, issued_at, None, (), entropy)?;
        header.key_share = key_share.map(|share| serde_bytes::ByteBuf::from(share.to_vec()));
        header.in_reply_to = in_reply_to;
        match self {
            Reply::Capabilities(b) => header.with_body(b).encode(),
            Reply::ScriptStatus(b) => header.with_body(b).encode(),
            Reply::Error(b) => header.with_body(b).encode(),
            Reply::TransferStatus(b) => header.with_body(b).encode(),
            Reply::FileChunk(b) => header.with_body(b).encode(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, CodecError> {
        Self::decode_with_sender(bytes).map(|(_, reply)| reply)
    }

    /// Decodes a reply and the agent id it names as its sender (its envelope's `target`).
    pub fn decode_with_sender(bytes: &[u8]) -> Result<(String, Reply), CodecError> {
        Self::decode_with_header(bytes).map(|(header, reply)| (header.target, reply))
    }

    /// Decodes a reply and its envelope (the sender's id, a session's share).
    pub fn decode_with_header(bytes: &[u8]) -> Result<(Envelope<()>, Reply), CodecError> {
        let header = decode_header(bytes)?;
        let reply = Self::decode_body(&header, bytes)?;
        Ok((header, reply))
    }

    fn decode_body(header: &Envelope<()>, bytes: &[u8]) -> Result<Reply, CodecError> {
        match Kind::parse(&header.kind) {
            Some(Kind::Capabilities) => Ok(Reply::Capabilities(body(bytes)?)),
            Some(Kind::ScriptStatus) => Ok(Reply::ScriptStatus(body(bytes)?)),
            Some(Kind::Error) => Ok(Reply::Error(body(bytes)?)),
            Some(Kind::TransferStatus) => Ok(Reply::TransferStatus(body(bytes)?)),
            Some(Kind::FileChunk) => Ok(Reply::FileChunk(body(bytes)?)),
            _ => Err(CodecError::UnknownKind(header.kind.clone())),
        }
    }
}

/// Refuses a message over [`MAX_MESSAGE_BYTES`]: checked first, before its seal is verified or
/// anything of it decoded or copied.
pub fn check_size(size: usize) -> Result<(), CodecError> {
    if size > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge { size, limit: MAX_MESSAGE_BYTES });
    }
    Ok(())
}

fn decode_header(bytes: &[u8]) -> Result<Envelope<()>, CodecError> {
    check_size(bytes.len())?;
    check_shape(bytes)?;
    let header: Envelope<IgnoredAny> = decode(bytes)?;
    Ok(header.with_body(()))
}

fn body<B: DeserializeOwned>(bytes: &[u8]) -> Result<B, CodecError> {
    Ok(decode::<Envelope<B>>(bytes)?.body)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError::Malformed(Malformed::Decode(e)))
}

/// Most msgpack values (strings, numbers, array and map entries...) in one message.
/// A value can take one byte on the wire and several dozen once decoded (an empty string in a
/// `Vec<String>` is 24 bytes): this bound keeps decoding to the message's size plus a few MiB,
/// while the largest real message (a status reply of 2,000 lines, 9 values each) stays far
/// below it.
pub const MAX_VALUES: usize = 65_536;
/// Deepest nesting of arrays and maps; real messages nest four deep.
pub const MAX_DEPTH: usize = 16;

/// Walks the msgpack structure without decoding it (no allocation beyond a stack of
/// [`MAX_DEPTH`]) and refuses a message with more than [`MAX_VALUES`] values or nested deeper
/// than [`MAX_DEPTH`], or one that claims more entries or bytes than it has.
pub fn check_shape(bytes: &[u8]) -> Result<(), CodecError> {
    let mut at = 0usize;
    let mut values = 0usize;
    // Values still expected at each open level; one top-level value.
    let mut open: Vec<u64> = vec![1];
    let truncated = || CodecError::Malformed(Malformed::Truncated);
    let read_len = |at: &mut usize, width: usize| -> Result<u64, CodecError> {
        let end = at.checked_add(width).filter(|end| *end <= bytes.len()).ok_or_else(truncated)?;
        let len = bytes[*at..end].iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
        *at = end;
        Ok(len)
    };
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        values += 1;
        if values > MAX_VALUES {
            return Err(CodecError::TooComplex(format!("more than {MAX_VALUES} values")));
        }
        let marker = *bytes.get(at).ok_or_else(truncated)?;
        at += 1;
        // (payload bytes, entries of a container)
        let (skip, entries): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (read_len(&mut at, 1)?, 0),
            0xc5 | 0xda => (read_len(&mut at, 2)?, 0),
            0xc6 | 0xdb => (read_len(&mut at, 4)?, 0),
            0xc7 => (read_len(&mut at, 1)? + 1, 0),
            0xc8 => (read_len(&mut at, 2)? + 1, 0),
            0xc9 => (read_len(&mut at, 4)? + 1, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, read_len(&mut at, 2)?),
            0xdd => (0, read_len(&mut at, 4)?),
            0xde => (0, 2 * read_len(&mut at, 2)?),
            0xdf => (0, 2 * read_len(&mut at, 4)?),
            0xc1 => return Err(CodecError::Malformed(Malformed::ReservedMarker { at: at - 1 })),
        };
        let remaining = (bytes.len() - at) as u64;
        if skip > remaining || entries > remaining {
            return Err(truncated());
        }
        at += skip as usize;
        if entries > 0 {
            if open.len() >= MAX_DEPTH {
                return Err(CodecError::TooComplex(format!("nested deeper than {MAX_DEPTH}")));
            }
            open.push(entries);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::ScriptSpec;
    use crate::wire::status::{LogLine, LogStream, ScriptState};

    #[test]
    fn real_messages_pass_the_shape_check() {
        let entropy = &mut crate::entropy::Seeded::new(1);
        let start = StartScriptV2 {
            ticket: Ticket::generate(entropy).unwrap(),
            spec: ScriptSpec { script: "echo hi".into(), args: vec!["a".into(); 100], ..Default::default() },
            wait_for_output: Some(1),
            first_issued_at: None,
        };
        let (_, bytes) = Request::StartScriptV2(start.clone()).encode("a", 1, Some(2), entropy).unwrap();
        assert_eq!(Request::decode(&bytes).unwrap().1, Request::StartScriptV2(start));
        let logs =
            (1..=2_000).map(|seq| LogLine { seq, stream: LogStream::Stdout, text: String::new(), at: 1 }).collect();
        let status = ScriptStatus {
            ticket: Ticket::generate(entropy).unwrap(),
            state: ScriptState::Running,
            exit_code: None,
            logs,
            next_log_sequence: 2_001,
            lines_written: None,
        };
        let bytes = Reply::ScriptStatus(status.clone()).encode("a", 1, entropy).unwrap();
        assert_eq!(Reply::decode(&bytes).unwrap(), Reply::ScriptStatus(status));
    }

    /// One byte per empty string: 16 MiB of them once decoded into 512 MiB.
    #[test]
    fn many_tiny_values_are_refused_before_decoding() {
        let mut value = serde_json::json!({
            "version": 2, "kind": "StartScriptV2", "message_id": "m", "target": "a", "issued_at": 1,
            "body": {"ticket": "t", "script": "true"},
        });
        value["body"]["args"] = serde_json::json!(vec![""; MAX_VALUES]);
        let bytes = rmp_serde::to_vec_named(&value).unwrap();
        let error = Request::decode(&bytes).unwrap_err();
        assert!(matches!(error, CodecError::TooComplex(_)), "{error}");
    }

    #[test]
    fn deep_nesting_and_lying_lengths_are_refused() {
        let mut deep = vec![0x91u8; MAX_DEPTH + 1];
        deep.push(0xc0);
        assert!(matches!(check_shape(&deep), Err(CodecError::TooComplex(_))));
        // An array32 claiming four billion entries in a few bytes.
        assert!(matches!(check_shape(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]), Err(CodecError::Malformed(_))));
        // A str32 claiming more bytes than there are.
        assert!(matches!(check_shape(&[0xdb, 0, 0, 1, 0, b'a']), Err(CodecError::Malformed(_))));
    }
}
