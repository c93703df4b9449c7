//! Checking receipts offline: each signature against the key pinned for its agent, then each
//! agent's chain, so a receipt forged, edited, signed by another agent's key, dropped from the
//! middle, moved, or replaced by another with its sequence number is reported. What no chain can
//! show is a tail cut off after the last receipt read: the report gives each chain's last
//! sequence, to compare with what the agent says it has made.

use super::{Receipt, SignedReceipt};
use crate::trust::files::{KnownAgents, Pin};
use crate::trust::keys::KeyId;
use std::collections::BTreeMap;

/// One thing wrong with what was read. `line` is where it was read (1-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("line {line}: not a receipt: {reason}")]
    Unreadable { line: usize, reason: String },
    #[error("line {line}: what the line shows of the receipt is not what its agent signed: {field} was edited")]
    Edited { line: usize, field: String },
    #[error("line {line}: receipt of agent {agent}, which has no key pinned in the known agents: cannot be checked")]
    Unpinned { line: usize, agent: String },
    #[error("line {line}: receipt of agent {agent} signed by key {key}, which is not pinned for it")]
    Foreign { line: usize, agent: String, key: KeyId },
    #[error("line {line}: receipt of agent {agent} does not verify under its key {key}: forged or altered")]
    Forged { line: usize, agent: String, key: KeyId },
    #[error("agent {agent}: receipts {} missing between {after} and {next}", missing(*after, *next))]
    Gap { agent: String, after: u64, next: u64 },
    #[error(
        "line {line}: agent {agent}'s receipt {sequence} comes after its receipt {after}: the receipts were reordered"
    )]
    OutOfOrder { line: usize, agent: String, sequence: u64, after: u64 },
    #[error(
        "agent {agent}: two different receipts numbered {sequence} (lines {first_line} and {line}): its chain forked"
    )]
    Forked { agent: String, sequence: u64, first_line: usize, line: usize },
    #[error("line {line}: agent {agent}'s receipt {sequence} does not follow its receipt {}: the chain is broken", sequence - 1)]
    BrokenLink { line: usize, agent: String, sequence: u64 },
}

fn missing(after: u64, next: u64) -> String {
    match next - after {
        2 => format!("{}", after + 1),
        _ => format!("{}-{}", after + 1, next - 1),
    }
}

/// One agent's chain as read: its receipts that verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// The lowest and highest sequence read.
    pub first: u64,
    pub last: u64,
    pub receipts: usize,
}

/// What checking found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Receipts read that verified (duplicates counted once).
    pub verified: usize,
    /// Exact copies of a receipt already read (the stream may carry one twice): not a problem.
    pub duplicates: usize,
    pub chains: BTreeMap<String, Chain>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Why one receipt is not believed, whatever its place in a chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unbelieved {
    #[error("not a receipt: {0}")]
    Unreadable(String),
    #[error("agent {0} has no key pinned in the known agents")]
    Unpinned(String),
    #[error("signed by key {key}, which is not pinned for agent {agent}")]
    Foreign { agent: String, key: KeyId },
    #[error("does not verify under agent {agent}'s key {key}: forged or altered")]
    Forged { agent: String, key: KeyId },
}

impl Unbelieved {
    /// The finding of a receipt read on `line`.
    fn at(self, line: usize) -> Finding {
        match self {
            Unbelieved::Unreadable(reason) => Finding::Unreadable { line, reason },
            Unbelieved::Unpinned(agent) => Finding::Unpinned { line, agent },
            Unbelieved::Foreign { agent, key } => Finding::Foreign { line, agent, key },
            Unbelieved::Forged { agent, key } => Finding::Forged { line, agent, key },
        }
    }
}

/// The receipt `signed` says, if its signature verifies under a key `known` pins for its agent
/// (or, for an agent pinned by none, for the pool it names).
pub fn believe(signed: &SignedReceipt, known: &KnownAgents) -> Result<Receipt, Unbelieved> {
    let receipt = signed.receipt().map_err(|error| Unbelieved::Unreadable(error.to_string()))?;
    let agent = receipt.agent_id.clone();
    let keys = match known.pin_of_agent(&agent, receipt.pool.as_deref()) {
        Some(Pin::Keys(keys)) => keys,
        Some(Pin::Legacy) | None => return Err(Unbelieved::Unpinned(agent)),
    };
    let Some(key) = keys.iter().find(|key| key.id() == signed.key) else {
        return Err(Unbelieved::Foreign { agent, key: signed.key });
    };
    if !signed.verified_by(key) {
        return Err(Unbelieved::Forged { agent, key: signed.key });
    }
    Ok(receipt)
}

/// A receipt that verified, where it was read.
struct Verified {
    line: usize,
    receipt: Receipt,
    digest: String,
}

/// Checks `receipts` (each with the line it was read on) against the keys `known` pins: an
/// agent's receipts count only under a key pinned for its id (or, for an agent pinned by
/// none, for the pool it names). `findings` already made by the reader come first.
pub fn verify(receipts: &[(usize, SignedReceipt)], known: &KnownAgents, findings: Vec<Finding>) -> Report {
    let mut report = Report { findings, ..Report::default() };
    let mut by_agent: BTreeMap<String, Vec<Verified>> = BTreeMap::new();
    for (line, signed) in receipts {
        match believe(signed, known) {
            Ok(receipt) => {
                let verified = Verified { line: *line, digest: signed.digest(), receipt };
                by_agent.entry(verified.receipt.agent_id.clone()).or_default().push(verified);
            }
            Err(unbelieved) => report.findings.push(unbelieved.at(*line)),
        }
    }
    for (agent, receipts) in by_agent {
        check_chain(&agent, receipts, &mut report);
    }
    report
}

/// One agent's verified receipts, in the order read: moved ones first, then, in sequence order,
/// gaps, forks and broken links.
fn check_chain(agent: &str, mut receipts: Vec<Verified>, report: &mut Report) {
    let mut highest = 0;
    let mut seen = std::collections::HashSet::new();
    for verified in &receipts {
        let sequence = verified.receipt.sequence;
        let copy = !seen.insert((sequence, verified.digest.clone()));
        if !copy && sequence < highest {
            let line = verified.line;
            report.findings.push(Finding::OutOfOrder { line, agent: agent.to_owned(), sequence, after: highest });
        }
        highest = highest.max(sequence);
    }
    receipts.sort_by_key(|v| (v.receipt.sequence, v.line));
    let before = receipts.len();
    receipts.dedup_by(|later, earlier| {
        later.receipt.sequence == earlier.receipt.sequence && later.digest == earlier.digest
    });
    report.duplicates += before - receipts.len();
    report.verified += receipts.len();
    let agent = agent.to_owned();
    for pair in receipts.windows(2) {
        let (earlier, later) = (&pair[0], &pair[1]);
        let (after, next) = (earlier.receipt.sequence, later.receipt.sequence);
        if next == after {
            let (first_line, line) = (earlier.line, later.line);
            report.findings.push(Finding::Forked { agent: agent.clone(), sequence: next, first_line, line });
        } else if next > after + 1 {
            report.findings.push(Finding::Gap { agent: agent.clone(), after, next });
        } else if later.receipt.previous.as_deref() != Some(earlier.digest.as_str()) {
            report.findings.push(Finding::BrokenLink { line: later.line, agent: agent.clone(), sequence: next });
        }
    }
    let chain = Chain {
        first: receipts.first().map_or(0, |v| v.receipt.sequence),
        last: receipts.last().map_or(0, |v| v.receipt.sequence),
        receipts: receipts.len(),
    };
    report.chains.insert(agent, chain);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipt::tests::receipt;
    use crate::receipt::ChainHead;
    use crate::trust::keys::tests::key;
    use crate::trust::keys::SecretKey;

    /// A chain of `count` receipts of `agent`, signed with `signer`.
    fn chain(agent: &str, signer: &SecretKey, count: u64) -> Vec<SignedReceipt> {
        let mut head: Option<ChainHead> = None;
        (0..count)
            .map(|_| {
                let (sequence, previous) = ChainHead::next(head.as_ref());
                let signed = receipt(agent, sequence, previous).sign(signer);
                head = Some(ChainHead::of(&signed, sequence));
                signed
            })
            .collect()
    }

    fn lines(receipts: Vec<SignedReceipt>) -> Vec<(usize, SignedReceipt)> {
        receipts.into_iter().enumerate().map(|(i, r)| (i + 1, r)).collect()
    }

    fn known(pins: &[(&str, &SecretKey)]) -> KnownAgents {
        KnownAgents::parse(&pins.iter().map(|(id, key)| format!("{id} {}\n", key.public())).collect::<String>())
            .unwrap()
    }

    #[test]
    fn a_whole_chain_verifies_and_copies_are_not_findings() {
        let (a, b) = (key(1), key(2));
        let mut receipts = chain("web-01", &a, 4);
        receipts.extend(chain("web-02", &b, 2));
        receipts.push(receipts[1].clone());
        let report = verify(&lines(receipts), &known(&[("web-01", &a), ("web-02", &b)]), Vec::new());
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!((report.verified, report.duplicates), (6, 1));
        assert_eq!(report.chains["web-01"], Chain { first: 1, last: 4, receipts: 4 });
        // A chain read from its middle (older receipts past the stream's retention) is whole too.
        let report = verify(&lines(chain("web-01", &a, 5).split_off(2)), &known(&[("web-01", &a)]), Vec::new());
        assert!(report.is_clean());
        assert_eq!(report.chains["web-01"].first, 3);
    }

    #[test]
    fn a_dropped_receipt_is_a_gap_and_a_moved_one_is_out_of_order() {
        let a = key(1);
        let pins = known(&[("web-01", &a)]);
        let mut dropped = chain("web-01", &a, 5);
        dropped.remove(2);
        let report = verify(&lines(dropped), &pins, Vec::new());
        assert_eq!(report.findings, [Finding::Gap { agent: "web-01".into(), after: 2, next: 4 }]);
        assert!(report.findings[0].to_string().contains("receipts 3 missing between 2 and 4"));
        let mut swapped = chain("web-01", &a, 4);
        swapped.swap(1, 2);
        let report = verify(&lines(swapped), &pins, Vec::new());
        assert_eq!(
            report.findings,
            [Finding::OutOfOrder { line: 3, agent: "web-01".into(), sequence: 2, after: 3 }],
            "reordered, and nothing missing"
        );
    }

    #[test]
    fn forged_foreign_and_unpinned_receipts_do_not_count() {
        let (a, b) = (key(1), key(2));
        let pins = known(&[("web-01", &a), ("web-02", &b)]);
        let mut receipts = chain("web-01", &a, 3);
        // One byte of the second's body changed: its line count, the last value.
        let last = receipts[1].body.len() - 1;
        receipts[1].body[last] ^= 1;
        let report = verify(&lines(receipts.clone()), &pins, Vec::new());
        assert_eq!(
            report.findings,
            [
                Finding::Forged { line: 2, agent: "web-01".into(), key: a.id() },
                Finding::Gap { agent: "web-01".into(), after: 1, next: 3 }
            ]
        );
        // web-02's key signing a receipt in web-01's name.
        let foreign = receipt("web-01", 4, Some(receipts[2].digest())).sign(&b);
        let unpinned = receipt("db-01", 1, None).sign(&a);
        let report = verify(&lines(vec![foreign, unpinned]), &pins, Vec::new());
        assert_eq!(
            report.findings,
            [
                Finding::Foreign { line: 1, agent: "web-01".into(), key: b.id() },
                Finding::Unpinned { line: 2, agent: "db-01".into() }
            ]
        );
        assert_eq!(report.verified, 0);
    }

    #[test]
    fn two_receipts_with_one_number_fork_the_chain_and_a_wrong_previous_breaks_it() {
        let a = key(1);
        let pins = known(&[("web-01", &a)]);
        let mut receipts = chain("web-01", &a, 3);
        let other = Receipt { ticket: "another".into(), ..receipts[1].receipt().unwrap() }.sign(&a);
        receipts.push(other);
        let report = verify(&lines(receipts), &pins, Vec::new());
        assert!(report.findings.contains(&Finding::Forked {
            agent: "web-01".into(),
            sequence: 2,
            first_line: 2,
            line: 4
        }));
        let mut receipts = chain("web-01", &a, 2);
        receipts.push(receipt("web-01", 3, Some("00".repeat(32))).sign(&a));
        let report = verify(&lines(receipts), &pins, Vec::new());
        assert_eq!(report.findings, [Finding::BrokenLink { line: 3, agent: "web-01".into(), sequence: 3 }]);
    }
}
