//! Secrets sealed to the key of the agent (or pool) they are for.
//!
//! A start's `secret_env` is signed but not hidden: whoever reads the command (a pool worker's
//! user that binds its queue to another agent's routing key, the broker's operator) would read
//! the values. So the dispatcher seals them to each key the target is pinned under, as age seals
//! to an `ssh-ed25519` recipient: the Ed25519 key as an X25519 key (the birational map), a fresh
//! X25519 share per copy, HKDF-SHA256 over the agreed secret and both shares, and
//! ChaCha20-Poly1305 over the secrets, with the ticket as associated data. Only the agents
//! holding the secret key open them; the command's signature (or MAC) still covers the sealed
//! bytes, so nobody can swap them. Sent only to agents that list [`crate::wire::messages::SERVICE_SEALED_SECRETS`].

use crate::entropy::{Entropy, EntropyError};
use crate::trust::keys::{KeyId, PublicKey, SecretKey};
use crate::trust::session::{agree, Ephemeral};
use crate::wire::envelope::Request;
use crate::wire::error::{ErrorKind, ErrorReply};
use crate::wire::messages::{SealedSecrets, Secrets, StartScriptV2};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Binds the derived key to this use (and version) of the agreed secret.
const KDF_INFO: &[u8] = b"cuttle sealed-secrets/v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the secrets are sealed to key(s) {sealed_to}, not to this agent's key {mine}")]
    NotForThisKey { sealed_to: String, mine: KeyId },
    #[error("the sealed secrets do not open: damaged, or not sealed for this ticket")]
    Damaged,
    #[error("key {0} cannot be sealed to (a key of low order)")]
    WeakKey(KeyId),
    #[error("cannot get random bytes from the system: {0}")]
    Random(#[source] EntropyError),
}

/// Seals `secrets` for `ticket` to each of `recipients`, each copy's share drawn from `entropy`.
pub fn seal(
    secrets: &Secrets,
    recipients: &[PublicKey],
    ticket: &str,
    entropy: &mut dyn Entropy,
) -> Result<Vec<SealedSecrets>, SealError> {
    debug_assert!(!recipients.is_empty(), "secrets are sealed to at least one key");
    let plain = Zeroizing::new(rmp_serde::to_vec(secrets).expect("secrets always encode"));
    recipients
        .iter()
        .map(|recipient| {
            let Ephemeral { secret, share } = Ephemeral::generate(entropy).map_err(SealError::Random)?;
            let theirs = recipient.x25519_point();
            let cipher = cipher(&secret, &theirs, &share, &theirs).ok_or(SealError::WeakKey(recipient.id()))?;
            let payload = Payload { msg: plain.as_slice(), aad: ticket.as_bytes() };
            let sealed = cipher.encrypt(&Nonce::default(), payload).expect("sealing in memory cannot fail");
            Ok(SealedSecrets { key: recipient.id().to_string(), share: share.to_vec(), sealed })
        })
        .collect()
}

/// `request` with its secrets sealed to `keys` (shares drawn from `entropy`), if it is a start
/// that carries secrets in clear.
pub fn seal_start(
    request: &Request,
    keys: &[PublicKey],
    entropy: &mut dyn Entropy,
) -> Result<Option<Request>, SealError> {
    let Request::StartScriptV2(start) = request else { return Ok(None) };
    if start.spec.secret_env.is_empty() {
        return Ok(None);
    }
    let mut start = start.clone();
    let secrets = std::mem::take(&mut start.spec.secret_env);
    start.spec.sealed_secret_env = seal(&secrets, keys, &start.ticket.to_string(), entropy)?;
    Ok(Some(Request::StartScriptV2(start)))
}

/// Opens, in place, the secrets of `start` sealed to `me`'s key, and checks them as if they had
/// come in clear.
pub fn open_start(start: &mut StartScriptV2, me: &SecretKey) -> Result<(), ErrorReply> {
    if start.spec.sealed_secret_env.is_empty() {
        return Ok(());
    }
    let sealed = std::mem::take(&mut start.spec.sealed_secret_env);
    let secrets = open(&sealed, me, &start.ticket.to_string())
        .map_err(|error| ErrorReply::new(ErrorKind::NotAuthorized, error.to_string()))?;
    start.spec.secret_env = secrets;
    start.spec.validate().map_err(|reason| ErrorReply::new(ErrorKind::Invalid, reason.to_string()))
}

/// Opens the copy of `sealed` made for `me`'s key, for `ticket`.
pub fn open(sealed: &[SealedSecrets], me: &SecretKey, ticket: &str) -> Result<Secrets, SealError> {
    let mine = me.id();
    let Some(copy) = sealed.iter().find(|copy| KeyId::parse(&copy.key) == Some(mine)) else {
        let sealed_to = sealed.iter().map(|copy| copy.key.as_str()).collect::<Vec<_>>().join(", ");
        return Err(SealError::NotForThisKey { sealed_to, mine });
    };
    let share: [u8; 32] = copy.share.as_slice().try_into().map_err(|_| SealError::Damaged)?;
    let cipher = cipher(&me.x25519_secret(), &share, &share, &me.public().x25519_point()).ok_or(SealError::Damaged)?;
    let payload = Payload { msg: copy.sealed.as_slice(), aad: ticket.as_bytes() };
    let plain = Zeroizing::new(cipher.decrypt(&Nonce::default(), payload).map_err(|_| SealError::Damaged)?);
    rmp_serde::from_slice(&plain).map_err(|_| SealError::Damaged)
}

/// The cipher both sides agree: X25519 of `secret` with `peer`, through HKDF-SHA256 salted with
/// the sealer's share and the recipient's key. `None` when `peer` is of low order (no secret
/// agreed). Each key seals one message, so the nonce is zero.
fn cipher(secret: &[u8; 32], peer: &[u8; 32], share: &[u8; 32], recipient: &[u8; 32]) -> Option<ChaCha20Poly1305> {
    let shared = agree(secret, peer)?;
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(share);
    salt[32..].copy_from_slice(recipient);
    let hkdf = hkdf::Hkdf::<Sha256>::new(Some(&salt), shared.as_slice());
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(KDF_INFO, key.as_mut()).expect("32 bytes is a valid HKDF-SHA256 length");
    Some(ChaCha20Poly1305::new(&(*key).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::fresh;
    use std::collections::BTreeMap;

    fn secrets() -> Secrets {
        Secrets::new(BTreeMap::from([("TOKEN".into(), "hunter2".into()), ("PASS".into(), "s3cret".into())]))
    }

    #[test]
    fn only_the_keys_sealed_to_open_the_secrets_and_only_for_their_ticket() {
        let (agent, other, rotated) = (
            SecretKey::generate(&mut fresh()).unwrap(),
            SecretKey::generate(&mut fresh()).unwrap(),
            SecretKey::generate(&mut fresh()).unwrap(),
        );
        let sealed = seal(&secrets(), &[*agent.public(), *rotated.public()], "t-1", &mut fresh()).unwrap();
        assert_eq!(sealed.len(), 2, "one copy per key");
        assert_eq!(open(&sealed, &agent, "t-1").unwrap(), secrets());
        assert_eq!(open(&sealed, &rotated, "t-1").unwrap(), secrets());
        assert!(matches!(open(&sealed, &other, "t-1"), Err(SealError::NotForThisKey { .. })));
        assert_eq!(open(&sealed, &agent, "t-2"), Err(SealError::Damaged), "moved to another ticket");
        let bytes = rmp_serde::to_vec_named(&sealed).unwrap();
        for value in ["hunter2", "s3cret"] {
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{value} is readable in the message");
        }
    }

    #[test]
    fn a_copy_altered_in_any_byte_or_under_another_key_id_does_not_open() {
        let agent = SecretKey::generate(&mut fresh()).unwrap();
        let sealed = seal(&secrets(), &[*agent.public()], "t", &mut fresh()).unwrap();
        for i in 0..sealed[0].sealed.len() {
            let mut altered = sealed.clone();
            altered[0].sealed[i] ^= 1;
            assert_eq!(open(&altered, &agent, "t"), Err(SealError::Damaged), "byte {i} of the sealed secrets");
        }
        for i in 0..32 {
            let mut altered = sealed.clone();
            altered[0].share[i] ^= 1;
            assert_eq!(open(&altered, &agent, "t"), Err(SealError::Damaged), "byte {i} of the share");
        }
        let mut short = sealed.clone();
        short[0].share.pop();
        assert_eq!(open(&short, &agent, "t"), Err(SealError::Damaged));
    }

    #[test]
    fn each_sealing_differs_and_a_share_of_low_order_is_refused() {
        let agent = SecretKey::generate(&mut fresh()).unwrap();
        let (a, b) = (
            seal(&secrets(), &[*agent.public()], "t", &mut fresh()).unwrap(),
            seal(&secrets(), &[*agent.public()], "t", &mut fresh()).unwrap(),
        );
        assert_ne!(a[0].share, b[0].share);
        assert_ne!(a[0].sealed, b[0].sealed);
        let mut low_order = a.clone();
        low_order[0].share = vec![0; 32];
        assert_eq!(open(&low_order, &agent, "t"), Err(SealError::Damaged));
    }
}
