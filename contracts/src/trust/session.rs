//! Sessions: after one signed exchange, a MAC per message instead of a signature (docs/security.md,
//! "Trust"; an extension of the trust rules of ARCHITECTURE.md, Trust, that keeps them).
//!
//! Signing and verifying every command and answer with Ed25519 costs the agent and the
//! dispatcher about a tenth of a millisecond of CPU per script: more than the 5 % of throughput
//! trust may cost on a loaded agent (ARCHITECTURE.md, Trust). A dispatcher that talks to one
//! agent many times agrees a key with it once, under both pinned keys, and then authenticates
//! each message with HMAC-SHA256:
//!
//! - **Offer**: a signed command (any kind) to one agent (never a pool: the next command could
//!   reach another worker) whose envelope carries `key_share`, the dispatcher's fresh X25519
//!   public value ([`Offer`]).
//! - **Accept**: the agent, once the command passed every trust check (ARCHITECTURE.md, Trust),
//!   answers with its own fresh share in the envelope of its signed answer ([`accept`]). Both
//!   shares travel inside signed bodies (the offer under the dispatcher's key, the acceptance
//!   under the agent's, bound to the offer's message id), so whoever holds the broker cannot sit
//!   in the middle.
//! - **Key**: X25519 of the two shares, through HKDF-SHA256 (salt: the offer's message id; info:
//!   [`SESSION_CONTEXT`], both shares and both key ids) into a session id and a MAC key
//!   ([`Session`]). A share of low order (no secret agreed) is refused.
//! - **Use**: a message under the session carries the AMQP headers `cuttle-session` (its id) and
//!   `cuttle-mac` (the HMAC-SHA256 tag, [`super::seal`]) instead of `cuttle-key` and `cuttle-sig`; the tag covers
//!   exactly what the signature would (context, request id for an answer, whole body), so every
//!   other trust rule (target, `not_after`, replay) holds as it is.
//! - **Lifetime** and **replays**: how long each side keeps a session, and how an offer is
//!   accepted once however often it is replayed, are [`super::sessions`]' (the agent's table, the
//!   dispatcher's cache).
//!
//! Everything here is plain data and functions: the time comes in as Unix milliseconds, and the
//! fresh shares of both sides from the [`Entropy`] they are given.

use super::keys::KeyId;
use super::seal::{answer_parts, command_parts, Seal, SessionId};
use crate::entropy::{Entropy, EntropyError};
use crate::wire::envelope::KeyShare;
use curve25519_dalek::montgomery::MontgomeryPoint;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// What a session's key derivation covers before the shares and key ids.
pub const SESSION_CONTEXT: &[u8] = b"cuttle session v1\0";

/// Why no session could be agreed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("a key share is 32 bytes of a point of large order")]
    BadShare,
    #[error("cannot get random bytes from the system: {0}")]
    Random(#[source] EntropyError),
}

/// A key agreed by one dispatcher key and one agent key. Its `Debug` shows only the ids.
#[derive(Clone)]
pub struct Session {
    pub(crate) id: SessionId,
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) dispatcher: KeyId,
    pub(crate) agent: KeyId,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({} of dispatcher {} and agent {})", self.id, self.dispatcher, self.agent)
    }
}

impl Session {
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The dispatcher key whose signed offer began the session.
    pub fn dispatcher_key(&self) -> KeyId {
        self.dispatcher
    }

    /// The agent key whose signed answer accepted it.
    pub fn agent_key(&self) -> KeyId {
        self.agent
    }

    /// Seals a command whose encoded envelope is `body` (what its signature would cover).
    pub fn seal_command(&self, body: &[u8]) -> Seal {
        self.seal(&command_parts(body))
    }

    /// Seals an answer (`body`) to the request whose message id is `request_id`.
    pub fn seal_answer(&self, request_id: &str, body: &[u8]) -> Seal {
        self.seal(&answer_parts(request_id, body))
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.as_slice()).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    fn seal(&self, parts: &[&[u8]]) -> Seal {
        Seal::Mac { session: self.id, tag: self.mac(parts).finalize().into_bytes().into() }
    }

    /// Whether `tag` is this session's over `parts` (compared in constant time).
    pub(crate) fn verifies(&self, parts: &[&[u8]], tag: &[u8; 32]) -> bool {
        self.mac(parts).verify_slice(tag).is_ok()
    }
}

/// A fresh X25519 secret and its public share (here, and for [`super::sealed`]).
pub(crate) struct Ephemeral {
    pub(crate) secret: Zeroizing<[u8; 32]>,
    pub(crate) share: KeyShare,
}

impl Ephemeral {
    /// A secret drawn from `entropy`; fails only when it does.
    pub(crate) fn generate(entropy: &mut dyn Entropy) -> Result<Ephemeral, EntropyError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        entropy.fill(secret.as_mut())?;
        let share = MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        Ok(Ephemeral { secret, share })
    }
}

/// X25519 of `secret` with `peer`; `None` when `peer` is of low order, which gives the same
/// "secret" whatever the other side's is.
pub(crate) fn agree(secret: &[u8; 32], peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = Zeroizing::new(MontgomeryPoint(*peer).mul_clamped(*secret).to_bytes());
    (!shared.iter().all(|byte| *byte == 0)).then_some(shared)
}

/// The dispatcher's half of a session while its offer waits for an answer.
pub struct Offer(Ephemeral);

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Offer")
    }
}

impl Offer {
    /// An offer, its secret drawn from `entropy`.
    pub fn new(entropy: &mut dyn Entropy) -> Result<Offer, SessionError> {
        Ephemeral::generate(entropy).map(Offer).map_err(SessionError::Random)
    }

    /// The share the offer's envelope carries.
    pub fn share(&self) -> &KeyShare {
        &self.0.share
    }

    /// The session, from the share of the agent's signed answer to the offer (message id
    /// `request_id`) and the two keys: `dispatcher`, which signed the offer, and `agent`, which
    /// signed the answer.
    pub fn complete(
        &self,
        request_id: &str,
        accepted: &[u8],
        dispatcher: KeyId,
        agent: KeyId,
    ) -> Result<Session, SessionError> {
        let accepted: KeyShare = accepted.try_into().map_err(|_| SessionError::BadShare)?;
        derive(&self.0.secret, &accepted, request_id, (&self.0.share, &accepted), dispatcher, agent)
    }
}

/// The agent's half: its share for the answer and the session, for an offer (`offered`) signed
/// by `dispatcher` in the command with message id `request_id`, answered under `agent`, its own
/// secret drawn from `entropy`.
pub fn accept(
    request_id: &str,
    offered: &[u8],
    dispatcher: KeyId,
    agent: KeyId,
    entropy: &mut dyn Entropy,
) -> Result<(KeyShare, Session), SessionError> {
    let offered: KeyShare = offered.try_into().map_err(|_| SessionError::BadShare)?;
    let own = Ephemeral::generate(entropy).map_err(SessionError::Random)?;
    let session = derive(&own.secret, &offered, request_id, (&offered, &own.share), dispatcher, agent)?;
    Ok((own.share, session))
}

fn derive(
    secret: &[u8; 32],
    peer: &KeyShare,
    request_id: &str,
    (offered, accepted): (&KeyShare, &KeyShare),
    dispatcher: KeyId,
    agent: KeyId,
) -> Result<Session, SessionError> {
    let shared = agree(secret, peer).ok_or(SessionError::BadShare)?;
    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(request_id.as_bytes()), shared.as_slice());
    let mut derived = Zeroizing::new([0u8; 48]);
    let info: [&[u8]; 5] = [SESSION_CONTEXT, offered, accepted, dispatcher.as_bytes(), agent.as_bytes()];
    hkdf.expand_multi_info(&info, derived.as_mut()).expect("48 bytes is within what HKDF-SHA256 can give");
    let mut id = [0u8; 16];
    id.copy_from_slice(&derived[..16]);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&derived[16..]);
    Ok(Session { id: SessionId(id), key, dispatcher, agent })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::entropy::fresh;
    use crate::trust::keys::SecretKey;
    use crate::trust::seal::{ANSWER_CONTEXT, COMMAND_CONTEXT};

    pub(crate) fn ids() -> (KeyId, KeyId) {
        (SecretKey::generate(&mut fresh()).unwrap().id(), SecretKey::generate(&mut fresh()).unwrap().id())
    }

    pub(crate) fn agreed() -> (Session, Session) {
        let (dispatcher, agent) = ids();
        let offer = Offer::new(&mut fresh()).unwrap();
        let (share, agents) = accept("req-1", offer.share(), dispatcher, agent, &mut fresh()).unwrap();
        let dispatchers = offer.complete("req-1", &share, dispatcher, agent).unwrap();
        (dispatchers, agents)
    }

    fn tag(seal: &Seal) -> [u8; 32] {
        match seal {
            Seal::Mac { tag, .. } => *tag,
            Seal::Signature { .. } => panic!("a session seals with a MAC"),
        }
    }

    #[test]
    fn both_sides_agree_the_same_session_and_only_they_do() {
        let (dispatchers, agents) = agreed();
        assert_eq!(dispatchers.id(), agents.id());
        assert_eq!(*dispatchers.key, *agents.key);
        let seal = dispatchers.seal_command(b"body");
        assert!(agents.verifies(&[COMMAND_CONTEXT, b"body"], &tag(&seal)));
        assert!(!agents.verifies(&[COMMAND_CONTEXT, b"bodY"], &tag(&seal)));
        assert!(!agents.verifies(&[ANSWER_CONTEXT, b"", b"body"], &tag(&seal)), "a command's MAC is no answer's");
        let (other, _) = agreed();
        assert_ne!(other.id(), agents.id());
        assert!(!other.verifies(&[COMMAND_CONTEXT, b"body"], &tag(&seal)));
        assert!(!format!("{agents:?}").contains(&hex::encode(*agents.key)), "debug hides the key");
    }

    #[test]
    fn the_session_depends_on_the_offer_id_and_both_keys() {
        let (dispatcher, agent) = ids();
        let offer = Offer::new(&mut fresh()).unwrap();
        let (share, agents) = accept("req-1", offer.share(), dispatcher, agent, &mut fresh()).unwrap();
        assert_ne!(offer.complete("req-2", &share, dispatcher, agent).unwrap().id(), agents.id());
        assert_ne!(offer.complete("req-1", &share, agent, dispatcher).unwrap().id(), agents.id());
        assert_eq!(offer.complete("req-1", &share, dispatcher, agent).unwrap().id(), agents.id());
    }

    #[test]
    fn shares_of_low_order_or_the_wrong_size_are_refused() {
        let (dispatcher, agent) = ids();
        let mut order_four = [0u8; 32];
        order_four[0] = 1;
        for bad in [&[0u8; 32][..], &order_four[..], &[9u8; 31][..]] {
            assert_eq!(accept("req", bad, dispatcher, agent, &mut fresh()).unwrap_err(), SessionError::BadShare);
            assert_eq!(
                Offer::new(&mut fresh()).unwrap().complete("req", bad, dispatcher, agent).unwrap_err(),
                SessionError::BadShare
            );
        }
    }
}
