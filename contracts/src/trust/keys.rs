//! Ed25519 keys: [`SecretKey`] (the agent's and the dispatcher's own), [`PublicKey`] (written
//! `ed25519:<base64 of its 32 bytes>`), named in headers and logs by its [`KeyId`] (the first 8
//! bytes of its SHA-256, in hex). A secret key file holds [`SecretKey::to_text`]; the files are
//! read and written by `edge::keys`. Secret keys never appear in `Debug` output or messages;
//! only key ids do.

use crate::entropy::{Entropy, EntropyError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::fmt;
use zeroize::Zeroizing;

/// How a public key is written.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";
/// How a secret key file begins.
pub const SECRET_KEY_PREFIX: &str = "cuttle-ed25519-secret:";

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

/// Why a text is not a public key.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    #[error("a public key starts with `{PUBLIC_KEY_PREFIX}`")]
    Prefix,
    #[error("public key is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("a public key is 32 bytes")]
    Length,
    #[error("not a valid Ed25519 public key")]
    NotEd25519(#[source] ed25519_dalek::SignatureError),
}

impl PublicKey {
    fn new(key: VerifyingKey) -> PublicKey {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        PublicKey { key, id: KeyId(id) }
    }

    pub fn parse(text: &str) -> Result<PublicKey, PublicKeyError> {
        let encoded = text.strip_prefix(PUBLIC_KEY_PREFIX).ok_or(PublicKeyError::Prefix)?;
        let bytes = BASE64.decode(encoded)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| PublicKeyError::Length)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(PublicKeyError::NotEd25519)?;
        Ok(PublicKey::new(key))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The same key as an X25519 public key ([`super::sealed`]).
    pub(crate) fn x25519_point(&self) -> [u8; 32] {
        self.key.to_montgomery().to_bytes()
    }

    /// Whether `signature` is this key's over `parts` one after the other, exactly as
    /// [`VerifyingKey::verify_strict`] over their concatenation would say, without making it: a
    /// command's body may be 16 MiB, and a copy of it for each delivery being checked would
    /// double what the agent holds. Strict as `verify_strict` is: a key of small order (weak, for
    /// which a signature can verify for almost any message) or an `R` that is not on the curve or
    /// of small order is refused here, and a non-canonical `s` by the stream verifier.
    pub(crate) fn verifies(&self, parts: &[&[u8]], signature: &[u8; 64]) -> bool {
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
    pub(crate) fn from_seed(seed: &[u8; 32]) -> SecretKey {
        let key = SigningKey::from_bytes(seed);
        let public = PublicKey::new(key.verifying_key());
        SecretKey { key, public }
    }

    /// A new key drawn from `entropy`; fails only when it does.
    pub fn generate(entropy: &mut dyn Entropy) -> Result<SecretKey, EntropyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        entropy.fill(seed.as_mut())?;
        Ok(SecretKey::from_seed(&seed))
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> KeyId {
        self.public.id
    }

    /// The same key as an X25519 secret, for [`PublicKey::x25519_point`] ([`super::sealed`]).
    pub(crate) fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_scalar_bytes())
    }

    /// The key as a key file holds it: one line, `cuttle-ed25519-secret:<base64 of its seed>`.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_KEY_PREFIX}{}\n", BASE64.encode(self.key.to_bytes())))
    }

    /// Reads a key in the form [`SecretKey::to_text`] writes (blanks around it ignored); `None`
    /// for anything else.
    pub fn from_text(text: &str) -> Option<SecretKey> {
        let encoded = text.trim().strip_prefix(SECRET_KEY_PREFIX)?;
        let bytes = Zeroizing::new(BASE64.decode(encoded).ok()?);
        let seed: &[u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(SecretKey::from_seed(seed))
    }

    /// This key's Ed25519 signature over `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed(&[seed; 32])
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
}
