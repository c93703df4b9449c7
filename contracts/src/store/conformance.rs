//! The conformance suite of [`TicketStore`]: the atomicity contract of [`crate::store`] as
//! checks any backend must pass. Run against [`super::memory::MemoryStore`] (unit tests), and against
//! Redis and the agent's redb store (`tests/tests/store_conformance.rs`). It panics, like a
//! test, on the first broken rule.

use super::record::{cancel_tombstone, claim_record, TicketRecord};
use super::{Cancel, Claim, ClaimReplication, Release, TicketStore};
use crate::receipt::ChainHead;
use crate::wire::exit_code;
use crate::wire::status::{LogLine, LogStream};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn line(seq: u64) -> LogLine {
    LogLine { seq, stream: LogStream::Stdout, text: format!("line {seq}"), at: 1 }
}

/// Runs every check on `store`, whose tickets are new (`<prefix>-a`, `-b`, ...). `owner` is the
/// process the store counts as live (the agent's owner id), `agent_id` its agent id, and
/// `now_ms` the store's time for a new epoch.
pub async fn check_all<S: TicketStore>(store: &S, prefix: &str, owner: &str, agent_id: &str, now_ms: u64) {
    let epoch = store.epoch(now_ms).await.expect("epoch");
    assert_eq!(store.epoch(now_ms + 5).await.expect("epoch"), epoch, "an epoch stays until the data is lost");
    store.ping().await.expect("ping");
    let record = |digest: &str| claim_record(owner, agent_id, digest.to_owned(), false, Some(now_ms + 60_000), now_ms);

    // A claim under another epoch creates nothing.
    let keys = store.keys(&format!("{prefix}-a"));
    let stale = super::Epoch { value: format!("{}-stale", now_ms - 1), created_ms: now_ms - 1 };
    assert!(matches!(store.claim(&keys, &record("d1"), HOUR, HOUR, &stale).await.unwrap(), Claim::EpochChanged));
    let view = store.read(&keys, 0).await.unwrap();
    assert!(view.record.is_none() && !view.lease_alive && view.logs.is_empty() && view.last_stored == 0);
    assert_eq!(view.lines_written, None);

    // Exactly one claim wins; the others see its record, as written.
    let first = record("d1");
    assert!(matches!(store.claim(&keys, &first, HOUR, HOUR, &epoch).await.unwrap(), Claim::Won));
    match store.claim(&keys, &record("d2"), HOUR, HOUR, &epoch).await.unwrap() {
        Claim::Existing { record, raw, lease_alive } => {
            assert_eq!((record, raw.as_str(), lease_alive), (first.clone(), first.encode().as_str(), true));
        }
        other => panic!("a second claim must find the first: {other:?}"),
    }
    assert!(store.running_tickets(agent_id).await.unwrap().contains(&keys.ticket));
    let view = store.read(&keys, 0).await.unwrap();
    assert_eq!(view.record, Some((first.clone(), first.encode())));
    assert!(view.lease_alive);

    // A cancel after the claim flags the run; only the owner holds the lease.
    let tombstone = cancel_tombstone(owner, agent_id, now_ms);
    assert_eq!(store.cancel(&keys, &tombstone, HOUR, HOUR).await.unwrap(), Cancel::Flagged);
    let renewal = store.renew_lease(&keys, owner, HOUR).await.unwrap();
    assert!(renewal.held && renewal.cancel_requested, "{renewal:?}");
    assert!(!store.renew_lease(&keys, "someone-else/0", HOUR).await.unwrap().held);

    // Compare-and-set replaces only the exact value read.
    let running = first.encode();
    assert!(!store
        .compare_and_set(&keys, "2|r|||1|other|x|y", &first.completed(9), None, Release::Nothing)
        .await
        .unwrap());
    assert_eq!(store.read(&keys, 0).await.unwrap().record.map(|(_, raw)| raw), Some(running.clone()));

    // Output: appended in order, read after a position, counted.
    store.append_logs(&keys, &[line(1), line(2)], HOUR).await.unwrap();
    store.append_logs(&keys, &[line(3)], HOUR).await.unwrap();
    let view = store.read(&keys, 0).await.unwrap();
    assert_eq!((view.logs.iter().map(|l| l.seq).collect::<Vec<_>>(), view.last_stored), (vec![1, 2, 3], 3));
    assert_eq!(view.lines_written, None, "a running ticket");
    assert_eq!(store.read(&keys, 2).await.unwrap().logs, vec![line(3)]);
    assert!(store.read(&keys, 3).await.unwrap().logs.is_empty());

    // The run ends by itself: record complete, lease and running entry released, output kept,
    // and how many lines it wrote kept with the record.
    let done = first.completed(0);
    let ended = Release::Ended { lines_written: 5 };
    assert!(store.compare_and_set(&keys, &running, &done, None, ended).await.unwrap());
    assert!(!store.compare_and_set(&keys, &running, &first.completed(1), None, Release::Lease).await.unwrap());
    let view = store.read(&keys, 0).await.unwrap();
    assert_eq!(view.record.as_ref().map(|(r, _)| r), Some(&done));
    assert!(!view.lease_alive);
    assert_eq!((view.last_stored, view.lines_written), (3, Some(5)));
    assert!(!store.running_tickets(agent_id).await.unwrap().contains(&keys.ticket));

    // Completed: a tombstone, output and cancel flag dropped.
    let buried = TicketRecord { tombstone: true, ..done.clone() };
    let ttl = Some(HOUR);
    assert!(store.compare_and_set(&keys, &done.encode(), &buried, ttl, Release::LeaseAndOutput).await.unwrap());
    let view = store.read(&keys, 0).await.unwrap();
    let (read, raw) = view.record.expect("the tombstone stays");
    assert!(read.tombstone && raw == buried.encode());
    assert!(view.logs.is_empty() && view.last_stored == 0 && view.lines_written.is_none());
    assert!(!store.renew_lease(&keys, owner, HOUR).await.unwrap().cancel_requested);
    assert!(matches!(store.claim(&keys, &first, HOUR, HOUR, &epoch).await.unwrap(), Claim::Existing { .. }));

    // A cancel before any claim leaves a tombstone the claim then finds.
    let keys = store.keys(&format!("{prefix}-b"));
    assert_eq!(store.cancel(&keys, &tombstone, HOUR, HOUR).await.unwrap(), Cancel::Tombstoned);
    match store.claim(&keys, &record("d1"), HOUR, HOUR, &epoch).await.unwrap() {
        Claim::Existing { record, .. } => assert!(record.cancelled_before_start(), "{record:?}"),
        other => panic!("a claim after a cancel must find its tombstone: {other:?}"),
    }
    assert_eq!(store.cancel(&keys, &tombstone, HOUR, HOUR).await.unwrap(), Cancel::Flagged);
    // A record is confirmed only while it stands as read (no replicas asked for here).
    let stands = store.confirm_record(&keys, &tombstone.encode(), 0, Duration::from_millis(100)).await.unwrap();
    assert!(matches!(stands, ClaimReplication::Acked(_)), "{stands:?}");
    let changed = store.confirm_record(&keys, &first.encode(), 0, Duration::from_millis(100)).await.unwrap();
    assert_eq!(changed, ClaimReplication::Lost);

    // Lines the store lost (here never stored: 3 and 4, and the tail after 6) leave gaps: lines
    // are read by their sequence numbers, wherever they sit, and a run lost with its process
    // (Release::Lease) records no count.
    let keys = store.keys(&format!("{prefix}-d"));
    assert!(matches!(store.claim(&keys, &record("d4"), HOUR, HOUR, &epoch).await.unwrap(), Claim::Won));
    store.append_logs(&keys, &[line(1), line(2)], HOUR).await.unwrap();
    store.append_logs(&keys, &[line(5), line(6)], HOUR).await.unwrap();
    let seqs = |view: super::TicketView| (view.logs.iter().map(|l| l.seq).collect::<Vec<_>>(), view.last_stored);
    assert_eq!(seqs(store.read(&keys, 0).await.unwrap()), (vec![1, 2, 5, 6], 6));
    for after in [2, 3, 4] {
        assert_eq!(seqs(store.read(&keys, after).await.unwrap()), (vec![5, 6], 6), "after {after}");
    }
    assert_eq!(seqs(store.read(&keys, 5).await.unwrap()), (vec![6], 6), "line 6 sits at position 3");
    assert_eq!(seqs(store.read(&keys, 6).await.unwrap()), (vec![], 6));
    assert_eq!(seqs(store.read(&keys, 9).await.unwrap()), (vec![], 6));
    let raw = record("d4").encode();
    let lost = record("d4").completed(exit_code::UNKNOWN_RESULT);
    assert!(store.compare_and_set(&keys, &raw, &lost, None, Release::Lease).await.unwrap());
    assert_eq!(store.read(&keys, 6).await.unwrap().lines_written, None);

    // A run's end with its last lines: the lines, the record and the count together, and only
    // against the record as it stands; a cancel flag is read alone.
    let keys = store.keys(&format!("{prefix}-e"));
    let claimed = record("d5");
    assert!(matches!(store.claim(&keys, &claimed, HOUR, HOUR, &epoch).await.unwrap(), Claim::Won));
    assert!(!store.cancel_requested(&keys).await.unwrap());
    store.append_logs(&keys, &[line(1)], HOUR).await.unwrap();
    let done = claimed.completed(0);
    let wrong = record("other").encode();
    assert!(!store.end_run(&keys, &wrong, &done, &[line(2)], 2, Some(HOUR)).await.unwrap());
    assert!(store.end_run(&keys, &claimed.encode(), &done, &[line(2), line(3)], 3, Some(HOUR)).await.unwrap());
    let view = store.read(&keys, 0).await.unwrap();
    assert_eq!(view.record.as_ref().map(|(r, _)| r), Some(&done));
    assert!(!view.lease_alive && !store.running_tickets(agent_id).await.unwrap().contains(&keys.ticket));
    let seqs: Vec<u64> = view.logs.iter().map(|l| l.seq).collect();
    assert!(seqs.ends_with(&[2, 3]) && seqs[0] == 1, "{seqs:?}");
    assert_eq!((view.last_stored, view.lines_written), (3, Some(3)));
    assert_eq!(store.read(&keys, 2).await.unwrap().logs, vec![line(3)], "read after a position");
    assert_eq!(store.cancel(&keys, &tombstone, HOUR, HOUR).await.unwrap(), Cancel::Flagged);
    assert!(store.cancel_requested(&keys).await.unwrap());

    // The running set forgets on request.
    let keys = store.keys(&format!("{prefix}-c"));
    assert!(matches!(store.claim(&keys, &record("d3"), HOUR, HOUR, &epoch).await.unwrap(), Claim::Won));
    assert!(store.running_tickets(agent_id).await.unwrap().contains(&keys.ticket));
    store.forget_running(agent_id, &keys.ticket).await.unwrap();
    assert!(!store.running_tickets(agent_id).await.unwrap().contains(&keys.ticket));

    check_receipts(store, agent_id).await;
}

/// A receipt chain's head moves only from the head it was read as, in one step with its
/// pending receipt; pending receipts come oldest first and go once published.
async fn check_receipts<S: TicketStore>(store: &S, agent_id: &str) {
    let chain = format!("{agent_id}-receipts");
    assert_eq!(store.receipt_head(&chain).await.unwrap(), None, "a new chain has no head");
    let head = |sequence: u64| ChainHead { sequence, digest: format!("{sequence:064x}") };
    assert!(store.append_receipt(&chain, None, &head(1), "r1").await.unwrap());
    assert!(!store.append_receipt(&chain, None, &head(1), "again").await.unwrap(), "the head moved");
    assert!(store.append_receipt(&chain, Some(&head(1)), &head(2), "r2").await.unwrap());
    assert!(!store.append_receipt(&chain, Some(&head(1)), &head(2), "fork").await.unwrap());
    assert!(store.append_receipt(&chain, Some(&head(2)), &head(3), "r3").await.unwrap());
    assert_eq!(store.receipt_head(&chain).await.unwrap(), Some(head(3)));
    let pending = store.pending_receipts(&chain, 2).await.unwrap();
    assert_eq!(pending, [(1, "r1".to_owned()), (2, "r2".to_owned())]);
    store.receipts_published(&chain, 2).await.unwrap();
    assert_eq!(store.pending_receipts(&chain, 10).await.unwrap(), [(3, "r3".to_owned())]);
    assert_eq!(store.pending_receipts(&format!("{chain}-other"), 10).await.unwrap(), []);
    store.receipts_published(&chain, 3).await.unwrap();
    assert_eq!(store.pending_receipts(&chain, 10).await.unwrap(), []);
    assert_eq!(store.receipt_head(&chain).await.unwrap(), Some(head(3)), "the head stays once published");
}
