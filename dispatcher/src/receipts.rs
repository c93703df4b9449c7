//! Run receipts as the dispatcher reads them ([`contracts::receipt`]): from the receipts stream
//! ([`read`]), as JSON lines (`dispatcher receipts --json`, [`to_json`]), and back from such a
//! file for `dispatcher verify` ([`parse_lines`]), where what a line shows must be exactly what
//! its agent signed.

use crate::rpc::{self, RpcConfig};
use contracts::receipt::verify::Finding;
use contracts::receipt::{Receipt, SignedReceipt};
use contracts::wire::topology::{RECEIPTS_STREAM, RECEIPT_TYPE};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// Longest time reading the stream may take before giving up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReceiptsError {
    #[error("cannot reach the broker: {0}")]
    Connect(#[source] crate::error::RpcError),
    #[error(transparent)]
    Stream(#[from] crate::stream::StreamError),
    #[error("the receipts stream did not catch up within {}", contracts::time::short(*.0))]
    Timeout(Duration),
}

/// Which receipts to keep.
#[derive(Clone, Debug)]
pub enum Whose {
    Agent(String),
    Pool(String),
}

impl Whose {
    fn matches(&self, receipt: &Receipt) -> bool {
        match self {
            Whose::Agent(id) => receipt.agent_id == *id,
            Whose::Pool(pool) => receipt.pool.as_deref() == Some(pool.as_str()),
        }
    }
}

/// What was read from the stream: `whose` receipts, in the order appended, and how many messages
/// were not receipts at all (unsigned, MAC'd, too large or undecodable: anyone can append).
#[derive(Debug, Default)]
pub struct Read {
    pub receipts: Vec<SignedReceipt>,
    pub not_receipts: usize,
}

/// Reads the receipts stream from `since` ago up to now, keeping `whose` receipts, and tells
/// `progress` how many messages it has read and kept so far (a long read, of a busy fleet's
/// stream, reads every agent's). Whether they verify is [`contracts::receipt::verify`]'s to say.
pub async fn read(
    config: &RpcConfig,
    whose: &Whose,
    since: Duration,
    progress: &(dyn Fn(u64, usize) + Sync),
) -> Result<Read, ReceiptsError> {
    let connection = rpc::connect(config, "cuttle-dispatcher receipts").await.map_err(ReceiptsError::Connect)?;
    let from = SystemTime::now() - since;
    let mut read = Read::default();
    let mut messages = 0u64;
    let reading = crate::stream::read(&connection, RECEIPTS_STREAM, RECEIPT_TYPE, from, |body, seal| {
        messages += 1;
        match SignedReceipt::sealed(body, seal.ok().flatten()).map(|signed| (signed.receipt(), signed)) {
            Some((Ok(receipt), signed)) if whose.matches(&receipt) => read.receipts.push(signed),
            Some((Ok(_), _)) => {}
            Some((Err(_), _)) | None => read.not_receipts += 1,
        }
        progress(messages, read.receipts.len());
    });
    let result = tokio::time::timeout(READ_TIMEOUT, reading).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "receipts read".into())).await;
    result.map_err(|_| ReceiptsError::Timeout(READ_TIMEOUT))??;
    Ok(read)
}

/// A receipt as one JSON object: its fields, the id of the key that signed it, and under
/// `receipt` the signed line itself ([`SignedReceipt::to_text`]), which is what counts.
pub fn to_json(signed: &SignedReceipt, receipt: &Receipt) -> Value {
    let mut value = serde_json::to_value(receipt).expect("a receipt is JSON");
    value["key"] = json!(signed.key.to_string());
    value["receipt"] = json!(signed.to_text());
    value
}

/// Reads receipts, one per line: the JSON objects of [`to_json`], or bare signed lines. Blank
/// lines are skipped. A line that is not a receipt, or whose shown fields differ from what its
/// signed line says, is a finding; the signed receipts are given with their line numbers.
pub fn parse_lines(text: &str) -> (Vec<(usize, SignedReceipt)>, Vec<Finding>) {
    let mut receipts = Vec::new();
    let mut findings = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let (line_number, line) = (index + 1, line.trim());
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(signed) => receipts.push((line_number, signed)),
            Err(finding) => findings.push(finding(line_number)),
        }
    }
    (receipts, findings)
}

type LineFinding = Box<dyn FnOnce(usize) -> Finding>;

fn unreadable(reason: impl std::fmt::Display) -> LineFinding {
    let reason = reason.to_string();
    Box::new(move |line| Finding::Unreadable { line, reason })
}

fn parse_line(line: &str) -> Result<SignedReceipt, LineFinding> {
    if !line.starts_with('{') {
        return SignedReceipt::from_text(line).map_err(unreadable);
    }
    let shown: Value = serde_json::from_str(line).map_err(unreadable)?;
    let text = shown.get("receipt").and_then(Value::as_str).ok_or_else(|| unreadable("no `receipt` field"))?;
    let signed = SignedReceipt::from_text(text).map_err(unreadable)?;
    let receipt = signed.receipt().map_err(unreadable)?;
    let signed_fields = to_json(&signed, &receipt);
    if let Some(field) = first_difference(&shown, &signed_fields) {
        return Err(Box::new(move |line| Finding::Edited { line, field }));
    }
    Ok(signed)
}

/// The first field (in name order) whose value differs between the two objects, or that only
/// one of them has.
fn first_difference(shown: &Value, signed: &Value) -> Option<String> {
    let (Some(shown), Some(signed)) = (shown.as_object(), signed.as_object()) else {
        return Some("the whole line".into());
    };
    let mut names: Vec<&String> = shown.keys().chain(signed.keys()).collect();
    names.sort();
    names.dedup();
    names.into_iter().find(|name| shown.get(*name) != signed.get(*name)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::receipt::RECEIPT_VERSION;
    use contracts::trust::keys::SecretKey;

    fn signed(sequence: u64) -> (SecretKey, SignedReceipt) {
        let key = SecretKey::generate(&mut edge::entropy::OsEntropy).unwrap();
        let receipt = Receipt {
            version: RECEIPT_VERSION,
            agent_id: "web-01".into(),
            pool: None,
            sequence,
            previous: None,
            ticket: "t-1".into(),
            command_digest: "ab".repeat(32),
            signed_by: vec![],
            started_at: 1,
            ended_at: 2,
            exit_code: 0,
            output_sha256: Some("cd".repeat(32)),
            lines: Some(1),
            purpose: None,
            submitter: None,
            approved_by: Vec::new(),
        };
        let signed = receipt.sign(&key);
        (key, signed)
    }

    #[test]
    fn json_lines_read_back_only_as_signed() {
        let (_, signed) = signed(1);
        let line = to_json(&signed, &signed.receipt().unwrap()).to_string();
        let (read, findings) = parse_lines(&format!("\n{line}\n{}\n", signed.to_text()));
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(read, [(2, signed.clone()), (3, signed.clone())]);
        let edited = line.replace("\"exit_code\":0", "\"exit_code\":1");
        assert_ne!(edited, line);
        let added = line.replacen('{', "{\"approved\":true,", 1);
        let (read, findings) = parse_lines(&format!("{edited}\n{added}\nnot a receipt\n{{\"receipt\":7}}"));
        assert!(read.is_empty());
        assert_eq!(findings[0], Finding::Edited { line: 1, field: "exit_code".into() });
        assert_eq!(findings[1], Finding::Edited { line: 2, field: "approved".into() });
        assert!(matches!(findings[2], Finding::Unreadable { line: 3, .. }));
        assert!(matches!(findings[3], Finding::Unreadable { line: 4, .. }));
    }
}
