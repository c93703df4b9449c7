//! Run receipts: what an agent signs when a script ends, so that what ran can be proved later
//! without believing the broker, the service or whoever keeps the history (ARCHITECTURE.md,
//! Receipts).
//!
//! A [`Receipt`] names the ticket, the digest of the command that ran, the dispatcher key that
//! signed it, when the run started and ended, its exit code (the unknown-result code for a run
//! an agent restart found lost) and the SHA-256 of its output as delivered ([`OutputDigest`]).
//! Each agent id keeps one chain: every receipt carries its `sequence` (from 1) and the digest
//! of the one before ([`ChainHead`]), so a receipt dropped from the middle, two swapped, or one
//! edited is seen by [`verify`]. The agent signs the receipt's msgpack body with its own key
//! ([`RECEIPT_CONTEXT`] first, so no receipt signature is one of a command, an answer or an
//! announcement); a [`SignedReceipt`] travels as one line of text ([`SignedReceipt::to_text`]),
//! in the agent's store until the broker confirms it, on the receipts stream, and in the files
//! `dispatcher verify` reads.

pub mod verify;

use crate::trust::keys::{KeyId, PublicKey, SecretKey};
use crate::trust::seal::Seal;
use crate::wire::approvals::{check_name, check_submitter, MAX_APPROVALS};
use crate::wire::envelope::check_shape;
use crate::wire::error::{CodecError, Invalid, Malformed};
use crate::wire::status::{LogLine, LogStream};
use crate::wire::topology::validate_name;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a receipt's signature covers before its body.
pub const RECEIPT_CONTEXT: &[u8] = b"cuttle receipt v1\0";
/// Format version written by this code.
pub const RECEIPT_VERSION: u16 = 1;
/// Largest receipt body a reader decodes: a receipt is a few hundred bytes.
pub const MAX_RECEIPT_BYTES: usize = 4 * 1024;
/// How a receipt's line of text begins.
pub const RECEIPT_TEXT_PREFIX: &str = "cuttle-receipt-v1";

/// What an agent says of one run it ended (or found lost), signed with its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub version: u16,
    /// The agent whose chain this is (a pool's workers each have their own id, and chain).
    pub agent_id: String,
    #[serde(default)]
    pub pool: Option<String>,
    /// Its place in the agent's chain, from 1.
    pub sequence: u64,
    /// Hex SHA-256 of the body of the receipt before it in the chain; none for the first.
    #[serde(default)]
    pub previous: Option<String>,
    pub ticket: String,
    /// Hex SHA-256 of the command's script, files, arguments, environment (secrets apart),
    /// user and limits (`ScriptSpec::digest`): the same for every copy of one start.
    pub command_digest: String,
    /// The ids of the dispatcher keys that vouched for the start (the signing key, or the key
    /// that agreed the session it came in); empty for a run the agent found lost, or unsigned.
    #[serde(default)]
    pub signed_by: Vec<String>,
    /// Unix ms when the run began (its claim) and ended (or was found lost).
    pub started_at: u64,
    pub ended_at: u64,
    /// The run's exit code as the wire says it (negative for outcomes not the script's own;
    /// the unknown-result code for a lost run).
    pub exit_code: i32,
    /// Hex SHA-256 of the output as delivered ([`OutputDigest`]), and how many lines it has;
    /// none for a run found lost, whose output is not all known.
    #[serde(default)]
    pub output_sha256: Option<String>,
    #[serde(default)]
    pub lines: Option<u64>,
    /// The purpose and submitter the start was signed with (agents that list the approvals
    /// service); none for a run found lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
    /// The ids of the keys whose approvals of the command counted (`crate::trust::approval`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a receipt always encodes")
    }

    /// Decodes and checks a receipt body: size first, then its shape, names and digests.
    pub fn decode(bytes: &[u8]) -> Result<Receipt, CodecError> {
        if bytes.len() > MAX_RECEIPT_BYTES {
            return Err(CodecError::TooLarge { size: bytes.len(), limit: MAX_RECEIPT_BYTES });
        }
        check_shape(bytes)?;
        let receipt: Receipt = rmp_serde::from_slice(bytes).map_err(|e| CodecError::Malformed(Malformed::Decode(e)))?;
        validate_name("agent id", &receipt.agent_id).map_err(Invalid::from)?;
        if let Some(pool) = &receipt.pool {
            validate_name("pool name", pool).map_err(Invalid::from)?;
        }
        let hex_digest = |digest: &str| digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        let digests_ok = hex_digest(&receipt.command_digest)
            && receipt.previous.as_deref().is_none_or(hex_digest)
            && receipt.output_sha256.as_deref().is_none_or(hex_digest);
        let ticket_ok = crate::wire::ticket::Ticket::parse(&receipt.ticket).is_ok();
        let keys_ok =
            |ids: &[String], most: usize| ids.len() <= most && ids.iter().all(|id| KeyId::parse(id).is_some());
        let signers_ok = keys_ok(&receipt.signed_by, 8) && keys_ok(&receipt.approved_by, MAX_APPROVALS);
        // Shown on terminals and pages: names, on one line.
        let names_ok = receipt.purpose.as_deref().is_none_or(|p| check_name("purpose", p).is_ok())
            && receipt.submitter.as_deref().is_none_or(|s| check_submitter(s).is_ok());
        if !digests_ok || !ticket_ok || !signers_ok || !names_ok || receipt.sequence == 0 {
            return Err(Invalid::Oversized.into());
        }
        Ok(receipt)
    }

    /// Signs the receipt with the agent's key.
    pub fn sign(&self, key: &SecretKey) -> SignedReceipt {
        let body = self.encode();
        let signature = key.sign(&[RECEIPT_CONTEXT, &body].concat());
        SignedReceipt { body, key: key.id(), signature }
    }
}

/// A receipt's body as its agent signed it, the id of the key, and the signature.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    pub body: Vec<u8>,
    pub key: KeyId,
    pub signature: [u8; 64],
}

impl std::fmt::Debug for SignedReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignedReceipt({} bytes, by {})", self.body.len(), self.key)
    }
}

/// Why a line is not a signed receipt.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptTextError {
    #[error("a receipt line is `{RECEIPT_TEXT_PREFIX} <body> <key id> <signature>`")]
    Shape,
    #[error("the receipt's {0} is not base64")]
    Base64(&'static str),
    #[error("the receipt's key id is not one")]
    KeyId,
    #[error("the receipt's signature is not 64 bytes")]
    SignatureLength,
    #[error("the receipt is {size} bytes, over {MAX_RECEIPT_BYTES}")]
    TooLarge { size: usize },
}

impl SignedReceipt {
    /// A receipt as it travels on the receipts stream: its body and the seal its AMQP headers
    /// carry. `None` unless the seal is a signature and the body no larger than any receipt.
    pub fn sealed(body: Vec<u8>, seal: Option<Seal>) -> Option<SignedReceipt> {
        match seal {
            Some(Seal::Signature { key, signature }) if body.len() <= MAX_RECEIPT_BYTES => {
                Some(SignedReceipt { body, key, signature })
            }
            _ => None,
        }
    }

    /// The seal that carries the signature in AMQP headers beside the body.
    pub fn seal(&self) -> Seal {
        Seal::Signature { key: self.key, signature: self.signature }
    }

    /// One line: [`RECEIPT_TEXT_PREFIX`], the body in base64, the key id, the signature in
    /// base64, separated by spaces.
    pub fn to_text(&self) -> String {
        format!("{RECEIPT_TEXT_PREFIX} {} {} {}", BASE64.encode(&self.body), self.key, BASE64.encode(self.signature))
    }

    /// Reads [`SignedReceipt::to_text`]'s line (blanks around it ignored); checks nothing signed.
    pub fn from_text(text: &str) -> Result<SignedReceipt, ReceiptTextError> {
        let mut words = text.split_ascii_whitespace();
        let (Some(RECEIPT_TEXT_PREFIX), Some(body), Some(key), Some(signature), None) =
            (words.next(), words.next(), words.next(), words.next(), words.next())
        else {
            return Err(ReceiptTextError::Shape);
        };
        // Base64 is 4/3 of the bytes: refuse a huge line before decoding it.
        if body.len() > MAX_RECEIPT_BYTES * 4 / 3 + 4 {
            return Err(ReceiptTextError::TooLarge { size: body.len() * 3 / 4 });
        }
        let body = BASE64.decode(body).map_err(|_| ReceiptTextError::Base64("body"))?;
        let key = KeyId::parse(key).ok_or(ReceiptTextError::KeyId)?;
        let signature = BASE64.decode(signature).map_err(|_| ReceiptTextError::Base64("signature"))?;
        let signature = signature.try_into().map_err(|_| ReceiptTextError::SignatureLength)?;
        Ok(SignedReceipt { body, key, signature })
    }

    /// Hex SHA-256 of the body: what the next receipt of the chain names as its `previous`.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(&self.body))
    }

    /// Whether `key` made the signature over this body.
    pub fn verified_by(&self, key: &PublicKey) -> bool {
        key.id() == self.key && key.verifies(&[RECEIPT_CONTEXT, &self.body], &self.signature)
    }

    /// The receipt it signs.
    pub fn receipt(&self) -> Result<Receipt, CodecError> {
        Receipt::decode(&self.body)
    }
}

/// The newest receipt of an agent's chain, as its store keeps it: what the next one follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub sequence: u64,
    /// [`SignedReceipt::digest`] of that receipt.
    pub digest: String,
}

impl ChainHead {
    pub fn of(receipt: &SignedReceipt, sequence: u64) -> ChainHead {
        ChainHead { sequence, digest: receipt.digest() }
    }

    /// As the store keeps it: `<sequence>|<digest>`.
    pub fn to_text(&self) -> String {
        format!("{}|{}", self.sequence, self.digest)
    }

    pub fn parse(text: &str) -> Option<ChainHead> {
        let (sequence, digest) = text.split_once('|')?;
        let sequence = sequence.parse().ok()?;
        (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| ChainHead { sequence, digest: digest.to_owned() })
    }

    /// The sequence and `previous` of the receipt after `head` (the first of a chain after none).
    pub fn next(head: Option<&ChainHead>) -> (u64, Option<String>) {
        match head {
            Some(head) => (head.sequence + 1, Some(head.digest.clone())),
            None => (1, None),
        }
    }
}

/// The SHA-256 of a run's output as delivered: each line's sequence number, stream and text,
/// in order, each length-prefixed, so no two outputs hash alike by moving a byte between lines
/// or streams. Anyone holding the lines (a dispatcher that followed the run) can compute it.
#[derive(Clone, Default)]
pub struct OutputDigest {
    hash: Sha256,
    lines: u64,
}

impl OutputDigest {
    pub fn add(&mut self, line: &LogLine) {
        let stream: u8 = match line.stream {
            LogStream::Stdout => 1,
            LogStream::Stderr => 2,
            LogStream::Agent => 3,
            LogStream::Unknown => 0,
        };
        self.hash.update(line.seq.to_be_bytes());
        self.hash.update([stream]);
        self.hash.update((line.text.len() as u64).to_be_bytes());
        self.hash.update(line.text.as_bytes());
        self.lines += 1;
    }

    /// Hex SHA-256, and how many lines.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hash.finalize()), self.lines)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trust::keys::tests::key;

    pub(crate) fn receipt(agent: &str, sequence: u64, previous: Option<String>) -> Receipt {
        Receipt {
            version: RECEIPT_VERSION,
            agent_id: agent.into(),
            pool: None,
            sequence,
            previous,
            ticket: format!("t-{sequence}"),
            command_digest: "ab".repeat(32),
            signed_by: vec![key(9).id().to_string()],
            started_at: 1_000 * sequence,
            ended_at: 1_000 * sequence + 500,
            exit_code: 0,
            output_sha256: Some("cd".repeat(32)),
            lines: Some(2),
            purpose: Some("deployment".into()),
            submitter: Some("cli:ada".into()),
            approved_by: vec![key(8).id().to_string()],
        }
    }

    #[test]
    fn a_signed_receipt_round_trips_through_its_line_and_verifies_only_under_its_key() {
        let signed = receipt("web-01", 1, None).sign(&key(1));
        let read = SignedReceipt::from_text(&signed.to_text()).unwrap();
        assert_eq!(read, signed);
        assert_eq!(SignedReceipt::sealed(signed.body.clone(), Some(signed.seal())), Some(signed.clone()));
        assert_eq!(SignedReceipt::sealed(signed.body.clone(), None), None, "unsigned");
        assert_eq!(SignedReceipt::sealed(vec![0; MAX_RECEIPT_BYTES + 1], Some(signed.seal())), None, "too large");
        assert_eq!(read.receipt().unwrap(), receipt("web-01", 1, None));
        assert!(read.verified_by(key(1).public()));
        assert!(!read.verified_by(key(2).public()), "another key");
        let mut edited = read.clone();
        edited.body[10] ^= 1;
        assert!(!edited.verified_by(key(1).public()), "one byte changed");
        // A signature over the same bytes in another context (an announcement) is not a receipt's.
        let announcement = key(1).seal_announcement(&signed.body);
        let crate::trust::seal::Seal::Signature { signature, .. } = announcement else { unreachable!() };
        assert!(!SignedReceipt { signature, ..signed.clone() }.verified_by(key(1).public()));
        for bad in ["", "cuttle-receipt-v1 a b", "other x y z", &format!("{} extra", signed.to_text())] {
            assert!(SignedReceipt::from_text(bad).is_err(), "{bad:?}");
        }
        let huge = format!("{RECEIPT_TEXT_PREFIX} {} {} AA==", "A".repeat(1 << 20), key(1).id());
        assert!(matches!(SignedReceipt::from_text(&huge), Err(ReceiptTextError::TooLarge { .. })));
    }

    #[test]
    fn receipts_are_checked_as_they_are_decoded() {
        let good = receipt("web-01", 1, None);
        for bad in [
            Receipt { agent_id: "web 01".into(), ..good.clone() },
            Receipt { sequence: 0, ..good.clone() },
            Receipt { command_digest: "xyz".into(), ..good.clone() },
            Receipt { previous: Some("00".into()), ..good.clone() },
            Receipt { ticket: "t\u{1b}[2J".into(), ..good.clone() },
            Receipt { signed_by: vec!["not a key id".into()], ..good.clone() },
            Receipt { approved_by: vec!["not a key id".into()], ..good.clone() },
            Receipt { submitter: Some("ada\u{1b}[2J".into()), ..good.clone() },
            Receipt { purpose: Some("deploy ment".into()), ..good.clone() },
        ] {
            assert!(Receipt::decode(&bad.encode()).is_err(), "{bad:?}");
        }
        assert!(matches!(Receipt::decode(&vec![0x90; 5_000]), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn a_chain_head_says_what_follows_it() {
        let signed = receipt("a", 4, None).sign(&key(1));
        let head = ChainHead::of(&signed, 4);
        assert_eq!(ChainHead::parse(&head.to_text()), Some(head.clone()));
        assert_eq!(ChainHead::next(Some(&head)), (5, Some(signed.digest())));
        assert_eq!(ChainHead::next(None), (1, None));
        assert_eq!(ChainHead::parse("4|zz"), None);
    }

    #[test]
    fn output_digests_tell_lines_streams_and_order_apart() {
        let line = |seq, stream, text: &str| LogLine { seq, stream, text: text.into(), at: 7 };
        let digest = |lines: &[LogLine]| {
            let mut d = OutputDigest::default();
            lines.iter().for_each(|l| d.add(l));
            d.finish()
        };
        let base = digest(&[line(1, LogStream::Stdout, "ab"), line(2, LogStream::Stdout, "c")]);
        assert_eq!(base.1, 2);
        assert_ne!(base, digest(&[line(1, LogStream::Stdout, "a"), line(2, LogStream::Stdout, "bc")]));
        assert_ne!(base, digest(&[line(1, LogStream::Stderr, "ab"), line(2, LogStream::Stdout, "c")]));
        assert_ne!(base, digest(&[line(2, LogStream::Stdout, "c"), line(1, LogStream::Stdout, "ab")]));
        assert_eq!(
            base,
            digest(&[LogLine { at: 9, ..line(1, LogStream::Stdout, "ab") }, line(2, LogStream::Stdout, "c")]),
            "times are not output"
        );
    }
}
