//! The agent's decisions, with no I/O: given a command, what the ticket store holds and the
//! time, what to do. Whether a command is fresh, whether a start may run (claim, run, report,
//! refuse), what a cancel leaves behind, when a completed ticket becomes a tombstone, how a run
//! lost with an earlier process is recovered, and what status a ticket reports. [`flow`] takes
//! them in order for each delivery, over an environment: the agent (`worker-agent`) with its
//! broker and store, the deterministic simulation (`tests/simulation`) over a simulated broker
//! and store. [`keys`] holds the agent's keys and sessions the flow checks commands with.

pub mod flow;
pub mod keys;
pub mod limits;
pub mod run_as;

use crate::store::record::{RecordState, TicketRecord, TOMBSTONE_DIGEST_LEN};
use crate::store::{Claim, ClaimReplication, TicketView};
use crate::wire::error::{ErrorKind, ErrorReply};
use crate::wire::exit_code;
use crate::wire::status::{ScriptState, ScriptStatus};
use crate::wire::ticket::Ticket;
use crate::wire::topology::CLOCK_SKEW_ALLOWANCE_MS;
use std::time::Duration;

/// Refuses a command whose `not_after` has passed (allowing for clock skew).
pub fn check_fresh(not_after: Option<u64>, now_ms: u64) -> Result<(), ErrorReply> {
    match not_after {
        Some(deadline) if now_ms > deadline.saturating_add(CLOCK_SKEW_ALLOWANCE_MS) => Err(ErrorReply::new(
            ErrorKind::Expired,
            format!("command expired {} ms ago; nothing ran", now_ms - deadline),
        )),
        _ => Ok(()),
    }
}

/// A start for a ticket that already has a record: the same command is answered with the
/// ticket's status; a different one is a conflict. A cancel tombstone (no digest) matches any.
pub fn check_same_command(record: &TicketRecord, digest: &str) -> Result<(), ErrorReply> {
    let tombstone_prefix = record.tombstone && record.digest.len() == TOMBSTONE_DIGEST_LEN;
    if record.digest.is_empty() || record.digest == digest || (tombstone_prefix && digest.starts_with(&record.digest)) {
        return Ok(());
    }
    Err(ErrorReply::new(ErrorKind::TicketConflict, "ticket already used for a different script; nothing ran"))
}

/// Whether a start that found `record` should confirm and start it: only the process that
/// claimed it (`owner`), only while that process still holds the claim as unconfirmed (not
/// started), and only while the claim's lease is alive: once it ran out, readers report the run
/// lost (unknown result, [`reported_state`]) and the ticket may be completed on that, so it
/// never starts. Any other finder answers with the status: a claim is started by its owner or
/// never.
pub fn claim_awaits_confirmation(
    record: &TicketRecord,
    owner: &str,
    unconfirmed_here: bool,
    lease_alive: bool,
) -> bool {
    unconfirmed_here
        && lease_alive
        && record.owner == owner
        && record.state != RecordState::Complete
        && !record.tombstone
}

/// The state and exit code a ticket reports. A live run whose owner's lease is gone was lost
/// with its agent: reported as unknown result, never run again.
pub fn reported_state(record: Option<&TicketRecord>, lease_alive: bool) -> (ScriptState, Option<i32>) {
    match record {
        None => (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)),
        // Only a cancel ever came for it: still unknown to status and cancel (its tombstone
        // only makes a late start answer cancelled instead of running).
        Some(r) if r.cancelled_before_start() => (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)),
        Some(r) if r.state == RecordState::Complete => (ScriptState::Complete, r.exit_code),
        Some(_) if !lease_alive => (ScriptState::Complete, Some(exit_code::UNKNOWN_RESULT)),
        Some(r) if r.state == RecordState::Claimed => (ScriptState::Pending, None),
        Some(_) => (ScriptState::Running, None),
    }
}

/// Refuses a start first issued before the ticket store's data began (it came back empty since):
/// the ticket may have been claimed, and run, in the data that was lost. The epoch is stamped by
/// an agent's clock and `first_issued_at` by the dispatcher's, which may differ by up to the
/// clock-skew allowance ([`CLOCK_SKEW_ALLOWANCE_MS`]): a start first issued less than the
/// allowance after the epoch may have been issued before it, so it is refused too.
pub fn check_issued_since(first_issued_at: Option<u64>, epoch_created_ms: u64) -> Result<(), ErrorReply> {
    match issued_before_data(first_issued_at, epoch_created_ms) {
        Some(when) => Err(ErrorReply::new(
            ErrorKind::StoreReset,
            format!("the ticket store lost its data {when}; refusing rather than risk running it twice"),
        )),
        None => Ok(()),
    }
}

/// When the store's data (its epoch, created at `epoch_created_ms`) began relative to a start
/// first issued at `first_issued_at`, if that start may be older than the data, allowing for
/// clock skew: then it may have been claimed, and run, in data that was lost.
fn issued_before_data(first_issued_at: Option<u64>, epoch_created_ms: u64) -> Option<String> {
    let issued = first_issued_at?;
    let allowance_s = CLOCK_SKEW_ALLOWANCE_MS / 1_000;
    if issued >= epoch_created_ms.saturating_add(CLOCK_SKEW_ALLOWANCE_MS) {
        None
    } else if issued < epoch_created_ms {
        Some(format!("{} ms after the start was first issued", epoch_created_ms - issued))
    } else {
        Some(format!(
            "{} ms before the start was first issued, within the {allowance_s} s clock-skew allowance between agent and dispatcher",
            issued - epoch_created_ms
        ))
    }
}

/// What a cancel answers once it has acted: the ticket's `status`, unless the store knows
/// nothing of the ticket (unknown ticket) and its data began after the start being cancelled was
/// first issued (`first_issued_at`, with the clock-skew allowance as in [`check_issued_since`]):
/// that start may have run in the data that was lost, so the answer is that whether it ran is
/// unknown (`StoreReset`), not "unknown ticket", which a dispatcher whose start was never
/// answered reads as "nothing ran".
pub fn cancel_answer(
    status: ScriptStatus,
    first_issued_at: Option<u64>,
    epoch_created_ms: u64,
) -> Result<ScriptStatus, ErrorReply> {
    let unknown = status.is_complete() && status.exit_code == Some(exit_code::UNKNOWN_TICKET);
    match issued_before_data(first_issued_at, epoch_created_ms) {
        Some(when) if unknown => Err(ErrorReply::new(
            ErrorKind::StoreReset,
            format!("unknown ticket: the ticket store lost its data {when}, so whether the script ran is unknown"),
        )),
        _ => Ok(status),
    }
}

/// How long an agent that starts serving waits before it takes commands when its ticket store's
/// data began (`epoch_created_ms`) less than the clock-skew allowance ago: a start first issued
/// in that time is refused ([`check_issued_since`]), so a new (or just emptied) store is served
/// only once the starts it would refuse are behind it. 0 for an older store.
pub fn young_store_wait_ms(epoch_created_ms: u64, now_ms: u64) -> u64 {
    epoch_created_ms.saturating_add(CLOCK_SKEW_ALLOWANCE_MS).saturating_sub(now_ms)
}

/// How long a completed ticket's tombstone must live: until no copy of its command can be
/// accepted any more, that is past its `not_after` (the same for every repeat of a start) plus
/// the skew allowance, counted twice because the agent that sets the expiry and the one that
/// checks a late copy may each be off by it. After that a copy is refused as expired without
/// the store being asked. A command without a deadline (legacy script v1, whose tickets the
/// agent makes) keeps its tombstone `without_deadline_ms`.
pub fn tombstone_ttl_ms(not_after: Option<u64>, now_ms: u64, without_deadline_ms: u64) -> u64 {
    match not_after {
        Some(deadline) => deadline.saturating_add(2 * CLOCK_SKEW_ALLOWANCE_MS + 1).saturating_sub(now_ms).max(1),
        None => without_deadline_ms,
    }
}

/// What a start does once the store answered its claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartDecision {
    /// The claim is this process's: run the script now.
    Run,
    /// The claim is this process's but must reach `--claim-replicas` replicas first: confirm it
    /// (the record just claimed, or the one found), and run only then.
    Confirm,
    /// Only a cancel came before: answer cancelled ([`cancelled_status`]), run nothing.
    Cancelled,
    /// Another script under the same ticket: answer this error, run nothing.
    Conflict(ErrorReply),
    /// A repeat of a start claimed before: answer with the ticket's status, run nothing.
    Status,
}

/// Decides a start from what its claim found. `unconfirmed_here` says whether this process
/// holds the ticket's claim unconfirmed (claimed, not started, waiting for replicas).
pub fn decide_start(
    found: &Claim,
    digest: &str,
    owner: &str,
    claim_replicas: u32,
    unconfirmed_here: bool,
) -> StartDecision {
    match found {
        Claim::Won if claim_replicas == 0 => StartDecision::Run,
        Claim::Won => StartDecision::Confirm,
        Claim::Existing { record, .. } if record.cancelled_before_start() => StartDecision::Cancelled,
        Claim::Existing { record, lease_alive, .. } => {
            if let Err(conflict) = check_same_command(record, digest) {
                return StartDecision::Conflict(conflict);
            }
            if cfg!(feature = "sim-break-claim") {
                // Simulation only: the claim switched off, so the simulator can show it finds the
                // double run this rule prevents.
                return StartDecision::Run;
            }
            if claim_awaits_confirmation(record, owner, unconfirmed_here, *lease_alive) {
                StartDecision::Confirm
            } else {
                StartDecision::Status
            }
        }
        // The caller refreshes its epoch and claims again; nothing is decided on it.
        Claim::EpochChanged => StartDecision::Status,
    }
}

/// Whether a confirmed claim reached the `wanted` replicas within `waited`: the number that
/// acknowledged it, or the transient error to answer (nothing started).
pub fn check_replicated(replication: &ClaimReplication, wanted: u32, waited: Duration) -> Result<u32, ErrorReply> {
    match *replication {
        ClaimReplication::Acked(acked) if acked >= wanted => Ok(acked),
        ClaimReplication::Acked(acked) => Err(ErrorReply::new(
            ErrorKind::StoreUnavailable,
            format!("the claim reached {acked} of {wanted} replicas within {waited:?}; nothing was started"),
        )),
        ClaimReplication::Lost => Err(ErrorReply::new(
            ErrorKind::StoreUnavailable,
            "the claim was lost from the ticket store before replicas confirmed it; nothing was started",
        )),
    }
}

/// Whether a cancel's answer `status` must wait for the `claim_replicas` replicas to hold the
/// ticket's record first. An unknown ticket (no start claimed: the cancel's tombstone stands in
/// its place) tells a dispatcher whose start was not answered that nothing ran and nothing
/// will; a failover losing that tombstone would let the start still in a queue run after all.
/// So, as a claim is before its script starts, the tombstone is confirmed on the replicas before
/// that is said ([`check_tombstone_replicated`]).
pub fn cancel_awaits_replication(status: &ScriptStatus, claim_replicas: u32) -> bool {
    claim_replicas > 0 && status.is_complete() && status.exit_code == Some(exit_code::UNKNOWN_TICKET)
}

/// Whether a cancel's tombstone reached the `wanted` replicas within `waited`, or the transient
/// error to answer instead, so the dispatcher repeats the cancel (never told "nothing ran" on a
/// tombstone a failover can lose).
pub fn check_tombstone_replicated(
    replication: &ClaimReplication,
    wanted: u32,
    waited: Duration,
) -> Result<(), ErrorReply> {
    let message = match *replication {
        ClaimReplication::Acked(acked) if acked >= wanted => return Ok(()),
        ClaimReplication::Acked(acked) => format!(
            "the cancel's tombstone reached {acked} of {wanted} replicas within {waited:?}; until it does, a start still queued could run"
        ),
        ClaimReplication::Lost => {
            "the cancel's tombstone was lost from the ticket store before replicas confirmed it; a start still queued could run".into()
        }
    };
    Err(ErrorReply::new(ErrorKind::StoreUnavailable, message))
}

/// The answer to a start of a ticket cancelled before it started.
pub fn cancelled_status(ticket: &Ticket) -> ScriptStatus {
    ScriptStatus {
        ticket: ticket.clone(),
        state: ScriptState::Complete,
        exit_code: Some(exit_code::CANCELLED),
        logs: Vec::new(),
        next_log_sequence: 1,
        lines_written: None,
    }
}

/// What `CompleteScript` does with the record it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompleteDecision {
    /// Not ended (or unknown, or already a tombstone): leave it, answer its status.
    Status,
    /// Ended: replace the record by this tombstone, kept `ttl_ms`, dropping output and lease.
    Tombstone { tombstone: TicketRecord, ttl_ms: u64 },
}

/// Decides a complete: an ended run (its own end, or lost with its lease) becomes a tombstone
/// that outlives any copy of its start still in a queue; anything else is left alone.
pub fn decide_complete(
    record: Option<&TicketRecord>,
    lease_alive: bool,
    now_ms: u64,
    without_deadline_ms: u64,
) -> CompleteDecision {
    let Some(record) = record else { return CompleteDecision::Status };
    let (state, exit) = reported_state(Some(record), lease_alive);
    if state != ScriptState::Complete || record.tombstone {
        return CompleteDecision::Status;
    }
    let tombstone = TicketRecord { tombstone: true, ..record.completed(exit.unwrap_or(exit_code::FATAL)) };
    CompleteDecision::Tombstone { tombstone, ttl_ms: tombstone_ttl_ms(record.not_after, now_ms, without_deadline_ms) }
}

/// What an agent starting up does with a ticket its agent id was running when it last stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// A run of an earlier process, never to be finished: record it as ended with unknown
    /// result (this record), at once rather than after its lease.
    ReportLost(TicketRecord),
    /// Ended, gone, or this process's own: only drop it from the running set.
    Forget,
}

/// Decides the recovery of one ticket left in this agent id's running set.
pub fn recover_run(record: Option<&TicketRecord>, owner: &str) -> Recovery {
    match record {
        Some(record) if !record.state.is_complete() && record.owner != owner => {
            Recovery::ReportLost(record.completed(exit_code::UNKNOWN_RESULT))
        }
        _ => Recovery::Forget,
    }
}

/// Builds a status reply from a store view. A completed script whose remaining output did not
/// fit in this reply reads as running, so the dispatcher asks again and gets every line. A
/// completed one says how many lines its run wrote, when the run recorded it: lines up to that
/// which the store no longer holds were lost by it, and the dispatcher names them (a lost tail
/// leaves no later line to show the gap). `next_log_sequence` stays where this reply's lines
/// end, so a dispatcher that predates `lines_written` still ends.
pub fn status_from(ticket: &Ticket, last_seq: u64, view: TicketView) -> ScriptStatus {
    let (mut state, mut exit_code) = reported_state(view.record.as_ref().map(|(r, _)| r), view.lease_alive);
    let next_log_sequence = view.logs.last().map_or(last_seq + 1, |l| l.seq + 1);
    if state == ScriptState::Complete && next_log_sequence <= view.last_stored {
        state = ScriptState::Running;
        exit_code = None;
    }
    let lines_written = view.lines_written.filter(|_| state == ScriptState::Complete);
    ScriptStatus { ticket: ticket.clone(), state, exit_code, logs: view.logs, next_log_sequence, lines_written }
}

/// A status read with [`crate::store::SKIP_LOGS`]: no lines, positioned after the last stored one.
pub fn status_without_logs(ticket: &Ticket, view: TicketView) -> ScriptStatus {
    let stored = view.last_stored;
    status_from(ticket, stored, TicketView { logs: Vec::new(), ..view })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{cancel_tombstone, claim_record};
    use crate::wire::messages::ScriptSpec;
    use crate::wire::status::{LogLine, LogStream};

    fn record(state: RecordState) -> TicketRecord {
        TicketRecord {
            owner: "a/1".into(),
            agent_id: "a".into(),
            digest: "d".into(),
            state,
            exit_code: None,
            tombstone: false,
            not_after: None,
            claimed_at: 1,
        }
    }

    fn digest() -> String {
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into()
    }

    #[test]
    fn expired_commands_are_refused_after_the_skew_allowance() {
        assert!(check_fresh(None, 10).is_ok());
        assert!(check_fresh(Some(1_000), 1_000 + CLOCK_SKEW_ALLOWANCE_MS).is_ok());
        let err = check_fresh(Some(1_000), 1_001 + CLOCK_SKEW_ALLOWANCE_MS).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Expired);
    }

    #[test]
    fn a_different_command_under_a_known_ticket_conflicts() {
        let r = record(RecordState::Running);
        assert!(check_same_command(&r, "d").is_ok());
        assert_eq!(check_same_command(&r, "e").unwrap_err().kind, ErrorKind::TicketConflict);
        let cancelled = TicketRecord { digest: String::new(), ..r };
        assert!(check_same_command(&cancelled, "e").is_ok());
    }

    #[test]
    fn states_are_reported_from_record_and_lease() {
        assert_eq!(reported_state(None, false), (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET)));
        assert_eq!(reported_state(Some(&record(RecordState::Claimed)), true), (ScriptState::Pending, None));
        assert_eq!(reported_state(Some(&record(RecordState::Running)), true), (ScriptState::Running, None));
        assert_eq!(
            reported_state(Some(&record(RecordState::Running)), false),
            (ScriptState::Complete, Some(exit_code::UNKNOWN_RESULT))
        );
        let done = record(RecordState::Running).completed(3);
        assert_eq!(reported_state(Some(&done), false), (ScriptState::Complete, Some(3)));
        let cancel_first = TicketRecord::tombstone(String::new(), Some(exit_code::CANCELLED));
        assert!(cancel_first.cancelled_before_start() && !done.cancelled_before_start());
        assert_eq!(
            reported_state(Some(&cancel_first), false),
            (ScriptState::Complete, Some(exit_code::UNKNOWN_TICKET))
        );
        let cancelled_run =
            TicketRecord { tombstone: true, ..record(RecordState::Running).completed(exit_code::CANCELLED) };
        assert_eq!(reported_state(Some(&cancelled_run), false), (ScriptState::Complete, Some(exit_code::CANCELLED)));
    }

    #[test]
    fn starts_from_before_the_store_lost_its_data_are_refused() {
        let skew = CLOCK_SKEW_ALLOWANCE_MS;
        assert!(check_issued_since(Some(1_000 + skew), 1_000).is_ok());
        assert!(check_issued_since(None, 1_000).is_ok());
        let refused = check_issued_since(Some(999), 1_000).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::StoreReset);
        assert!(!refused.kind.is_transient());
        assert_eq!(
            refused.message,
            "the ticket store lost its data 1 ms after the start was first issued; refusing rather than risk running it twice"
        );
        // Stamped by clocks that may differ by the allowance: a start that looks a little
        // younger than the data may be older, and is refused too.
        let skewed = check_issued_since(Some(1_000 + skew - 1), 1_000).unwrap_err();
        assert_eq!(skewed.kind, ErrorKind::StoreReset);
        assert!(
            skewed.message.contains("4999 ms before the start was first issued, within the 5 s clock-skew allowance"),
            "{}",
            skewed.message
        );
        assert!(check_issued_since(Some(1_000), 1_000).is_err());
    }

    #[test]
    fn a_cancel_of_a_ticket_lost_with_the_store_says_whether_it_ran_is_unknown() {
        let ticket = Ticket::parse("t-1").unwrap();
        let unknown = status_from(&ticket, 0, view(None, false, &[], 0));
        let lost = cancel_answer(unknown.clone(), Some(900), 1_000).unwrap_err();
        assert_eq!(lost.kind, ErrorKind::StoreReset);
        assert_eq!(
            lost.message,
            "unknown ticket: the ticket store lost its data 100 ms after the start was first issued, so whether the script ran is unknown"
        );
        let skewed = 1_000 + CLOCK_SKEW_ALLOWANCE_MS - 1;
        assert_eq!(cancel_answer(unknown.clone(), Some(skewed), 1_000).unwrap_err().kind, ErrorKind::StoreReset);
        // Issued after the data began, or not said: unknown means it never reached the agent.
        let after = 1_000 + CLOCK_SKEW_ALLOWANCE_MS;
        assert_eq!(cancel_answer(unknown.clone(), Some(after), 1_000), Ok(unknown.clone()));
        assert_eq!(cancel_answer(unknown.clone(), None, 1_000), Ok(unknown));
        // A ticket the store knows is answered with its status, whenever its start was issued.
        let running = status_from(&ticket, 0, view(Some(record(RecordState::Running)), true, &[], 0));
        assert_eq!(cancel_answer(running.clone(), Some(900), 1_000), Ok(running));
    }

    #[test]
    fn an_agent_waits_out_the_allowance_of_a_young_store_before_serving() {
        let skew = CLOCK_SKEW_ALLOWANCE_MS;
        assert_eq!(young_store_wait_ms(1_000, 1_000), skew);
        assert_eq!(young_store_wait_ms(1_000, 1_000 + skew - 10), 10);
        assert_eq!(young_store_wait_ms(1_000, 1_000 + skew), 0);
        assert_eq!(young_store_wait_ms(1_000, 999_999), 0);
        // Whatever the agent's clock says once the wait is over, a start issued then is taken.
        assert!(check_issued_since(Some(1_000 + young_store_wait_ms(1_000, 1_000)), 1_000).is_ok());
    }

    #[test]
    fn tombstones_live_until_no_copy_of_the_command_can_be_accepted() {
        let skew = CLOCK_SKEW_ALLOWANCE_MS;
        assert_eq!(tombstone_ttl_ms(None, 0, 100), 100);
        assert_eq!(tombstone_ttl_ms(Some(1_000_000), 0, 3_600_000), 1_000_000 + 2 * skew + 1);
        assert_eq!(tombstone_ttl_ms(Some(150_000), 10_000, 3_600_000), 140_000 + 2 * skew + 1);
        assert_eq!(tombstone_ttl_ms(Some(10), 1_000_000, 100), 1);
        // Exactly when the command stops being fresh anywhere, the tombstone may go.
        let deadline = 50_000;
        let gone_at = 1_000 + tombstone_ttl_ms(Some(deadline), 1_000, 0);
        assert!(check_fresh(Some(deadline), gone_at - skew).is_err());
    }

    #[test]
    fn live_records_round_trip_through_their_encoding() {
        let claimed = TicketRecord {
            owner: "web-01/0b6c1e2a-1111-4222-8333-944455556666".into(),
            agent_id: "web-01".into(),
            digest: digest(),
            not_after: Some(1_790_000_000_000),
            claimed_at: 1_789_999_999_000,
            ..record(RecordState::Claimed)
        };
        for r in
            [claimed.clone(), TicketRecord { state: RecordState::Running, ..claimed.clone() }, claimed.completed(-7)]
        {
            assert_eq!(TicketRecord::decode_or_failed(&r.encode()), r);
        }
        let no_deadline = TicketRecord { not_after: None, ..claimed };
        assert_eq!(TicketRecord::decode_or_failed(&no_deadline.encode()), no_deadline);
    }

    #[test]
    fn a_tombstone_keeps_its_outcome_and_tells_a_different_script_apart_in_few_bytes() {
        let run = TicketRecord {
            owner: "workers-7d9f8b6c5-x2x4k/0b6c1e2a-1111-4222-8333-944455556666".into(),
            agent_id: "workers-7d9f8b6c5-x2x4k".into(),
            digest: digest(),
            not_after: Some(1_790_000_000_000),
            ..record(RecordState::Running)
        };
        let tombstone = TicketRecord { tombstone: true, ..run.completed(exit_code::CANCELLED) };
        let stored = tombstone.encode();
        assert!(stored.len() <= 44, "{stored:?} is {} bytes: too long for Redis to embed", stored.len());
        let read = TicketRecord::decode_or_failed(&stored);
        assert_eq!(reported_state(Some(&read), false), (ScriptState::Complete, Some(exit_code::CANCELLED)));
        assert!(read.tombstone);
        assert!(check_same_command(&read, &digest()).is_ok());
        let other = ScriptSpec { script: "echo other".into(), ..Default::default() }.digest();
        assert_eq!(check_same_command(&read, &other).unwrap_err().kind, ErrorKind::TicketConflict);
        let other = format!("{}0{}", &digest()[..20], &digest()[21..]);
        assert_eq!(check_same_command(&read, &other).unwrap_err().kind, ErrorKind::TicketConflict);
        // A cancel before any start keeps no digest, and stands for whatever start comes late.
        let cancelled = TicketRecord { digest: String::new(), tombstone: true, ..record(RecordState::Complete) };
        assert!(check_same_command(&TicketRecord::decode_or_failed(&cancelled.encode()), &digest()).is_ok());
    }

    #[test]
    fn only_the_claiming_process_starts_an_unconfirmed_claim() {
        let claimed = record(RecordState::Running);
        assert!(claim_awaits_confirmation(&claimed, "a/1", true, true));
        assert!(!claim_awaits_confirmation(&claimed, "a/1", false, true), "started already, or never claimed here");
        assert!(!claim_awaits_confirmation(&claimed, "a/2", true, true), "another process's claim");
        assert!(!claim_awaits_confirmation(&claimed.completed(0), "a/1", true, true));
        // Its lease ran out: reported lost (unknown result) already, so never started (seed 26759).
        assert!(!claim_awaits_confirmation(&claimed, "a/1", true, false));
        let cancelled = TicketRecord { tombstone: true, ..claimed };
        assert!(!claim_awaits_confirmation(&cancelled, "a/1", true, true));
    }

    fn found(record: TicketRecord) -> Claim {
        let raw = record.encode();
        Claim::Existing { record, raw, lease_alive: true }
    }

    #[test]
    fn a_start_runs_only_on_the_claim_it_won() {
        assert_eq!(decide_start(&Claim::Won, "d", "a/1", 0, false), StartDecision::Run);
        assert_eq!(decide_start(&Claim::Won, "d", "a/1", 2, false), StartDecision::Confirm);
        let running = record(RecordState::Running);
        assert_eq!(decide_start(&found(running.clone()), "d", "a/2", 0, false), StartDecision::Status);
        assert_eq!(decide_start(&found(running.clone()), "d", "a/1", 0, false), StartDecision::Status);
        assert_eq!(decide_start(&found(running.clone()), "d", "a/1", 1, true), StartDecision::Confirm);
        let lease_gone = Claim::Existing { record: running.clone(), raw: running.encode(), lease_alive: false };
        assert_eq!(decide_start(&lease_gone, "d", "a/1", 1, true), StartDecision::Status, "reported lost already");
        assert_eq!(decide_start(&found(running.completed(0)), "d", "a/1", 1, true), StartDecision::Status);
        match decide_start(&found(running), "other", "a/1", 0, false) {
            StartDecision::Conflict(error) => assert_eq!(error.kind, ErrorKind::TicketConflict),
            other => panic!("a different script under a known ticket must conflict: {other:?}"),
        }
        let cancelled = cancel_tombstone("a/2", "a", 5);
        assert_eq!(decide_start(&found(cancelled), "d", "a/1", 0, false), StartDecision::Cancelled);
        let status = cancelled_status(&Ticket::parse("t-1").unwrap());
        assert_eq!((status.state, status.exit_code), (ScriptState::Complete, Some(exit_code::CANCELLED)));
    }

    #[test]
    fn a_claim_and_a_cancel_tombstone_say_who_and_what() {
        let claim = claim_record("a/1", "a", "d".into(), true, Some(9), 3);
        assert_eq!((claim.state, claim.not_after, claim.claimed_at), (RecordState::Claimed, Some(9), 3));
        assert_eq!(claim_record("a/1", "a", "d".into(), false, None, 3).state, RecordState::Running);
        let tombstone = cancel_tombstone("a/1", "a", 3);
        assert!(tombstone.cancelled_before_start());
        assert!(TicketRecord::decode_or_failed(&tombstone.encode()).cancelled_before_start());
    }

    #[test]
    fn a_claim_runs_only_once_enough_replicas_hold_it() {
        let wait = Duration::from_secs(1);
        assert_eq!(check_replicated(&ClaimReplication::Acked(2), 2, wait), Ok(2));
        let short = check_replicated(&ClaimReplication::Acked(1), 2, wait).unwrap_err();
        assert_eq!(short.kind, ErrorKind::StoreUnavailable);
        assert_eq!(short.message, "the claim reached 1 of 2 replicas within 1s; nothing was started");
        assert!(check_replicated(&ClaimReplication::Lost, 0, wait).unwrap_err().kind.is_transient());
    }

    #[test]
    fn a_cancel_says_nothing_ran_only_once_its_tombstone_is_on_the_replicas() {
        let ticket = Ticket::parse("t-1").unwrap();
        let unknown = status_from(&ticket, 0, view(None, false, &[], 0));
        let tombstoned = status_from(&ticket, 0, view(Some(cancel_tombstone("a/1", "a", 5)), false, &[], 0));
        assert!(cancel_awaits_replication(&unknown, 1) && cancel_awaits_replication(&tombstoned, 1));
        assert!(!cancel_awaits_replication(&tombstoned, 0), "no replicas asked for: nothing to wait for");
        let running = status_from(&ticket, 0, view(Some(record(RecordState::Running)), true, &[], 0));
        assert!(!cancel_awaits_replication(&running, 1), "it ran: the answer says so, whatever is lost");
        let wait = Duration::from_secs(1);
        assert_eq!(check_tombstone_replicated(&ClaimReplication::Acked(1), 1, wait), Ok(()));
        let short = check_tombstone_replicated(&ClaimReplication::Acked(0), 1, wait).unwrap_err();
        assert_eq!(short.kind, ErrorKind::StoreUnavailable);
        assert_eq!(
            short.message,
            "the cancel's tombstone reached 0 of 1 replicas within 1s; until it does, a start still queued could run"
        );
        let lost = check_tombstone_replicated(&ClaimReplication::Lost, 1, wait).unwrap_err();
        assert!(lost.kind.is_transient(), "the dispatcher repeats the cancel");
    }

    #[test]
    fn only_an_ended_run_becomes_a_tombstone() {
        assert_eq!(decide_complete(None, false, 0, 100), CompleteDecision::Status);
        let running = TicketRecord { not_after: Some(1_000), ..record(RecordState::Running) };
        assert_eq!(decide_complete(Some(&running), true, 0, 100), CompleteDecision::Status);
        assert_eq!(decide_complete(Some(&record(RecordState::Claimed)), true, 0, 100), CompleteDecision::Status);
        let ttl_ms = tombstone_ttl_ms(Some(1_000), 10, 100);
        let tombstone = TicketRecord { tombstone: true, ..running.completed(3) };
        assert_eq!(
            decide_complete(Some(&running.completed(3)), false, 10, 100),
            CompleteDecision::Tombstone { tombstone: tombstone.clone(), ttl_ms }
        );
        assert_eq!(decide_complete(Some(&tombstone), false, 10, 100), CompleteDecision::Status);
        // A run lost with its lease is buried as unknown result, never restarted.
        match decide_complete(Some(&running), false, 10, 100) {
            CompleteDecision::Tombstone { tombstone, .. } => {
                assert_eq!(tombstone.exit_code, Some(exit_code::UNKNOWN_RESULT))
            }
            other => panic!("{other:?}"),
        }
        let no_deadline = record(RecordState::Running).completed(0);
        match decide_complete(Some(&no_deadline), false, 10, 100) {
            CompleteDecision::Tombstone { ttl_ms, .. } => assert_eq!(ttl_ms, 100),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_of_an_earlier_process_are_reported_lost() {
        let running = record(RecordState::Running);
        assert_eq!(
            recover_run(Some(&running), "a/2"),
            Recovery::ReportLost(running.completed(exit_code::UNKNOWN_RESULT))
        );
        assert_eq!(recover_run(Some(&running), "a/1"), Recovery::Forget, "this process's own run");
        assert_eq!(recover_run(Some(&running.completed(0)), "a/2"), Recovery::Forget);
        assert_eq!(recover_run(None, "a/2"), Recovery::Forget);
    }

    fn view(record: Option<TicketRecord>, lease_alive: bool, logs: &[u64], last_stored: u64) -> TicketView {
        let logs =
            logs.iter().map(|&seq| LogLine { seq, stream: LogStream::Stdout, text: String::new(), at: 0 }).collect();
        TicketView {
            record: record.map(|r| {
                let raw = r.encode();
                (r, raw)
            }),
            lease_alive,
            logs,
            last_stored,
            lines_written: None,
        }
    }

    #[test]
    fn a_status_reads_complete_only_with_all_of_its_output() {
        let ticket = Ticket::parse("t-1").unwrap();
        let done = record(RecordState::Running).completed(0);
        let status = status_from(&ticket, 0, view(Some(done.clone()), false, &[1, 2], 2));
        assert_eq!((status.state, status.exit_code, status.next_log_sequence), (ScriptState::Complete, Some(0), 3));
        let capped = status_from(&ticket, 0, view(Some(done.clone()), false, &[1, 2], 5));
        assert_eq!((capped.state, capped.exit_code, capped.next_log_sequence), (ScriptState::Running, None, 3));
        let nothing_new = status_from(&ticket, 4, view(Some(record(RecordState::Running)), true, &[], 4));
        assert_eq!((nothing_new.state, nothing_new.next_log_sequence), (ScriptState::Running, 5));
        let skipped = status_without_logs(&ticket, view(Some(done), false, &[1, 2], 2));
        assert!(skipped.logs.is_empty());
        assert_eq!((skipped.state, skipped.next_log_sequence), (ScriptState::Complete, 3));
        let unknown = status_from(&ticket, 0, view(None, false, &[], 0));
        assert_eq!(unknown.exit_code, Some(exit_code::UNKNOWN_TICKET));
    }

    #[test]
    fn a_completed_status_says_how_many_lines_the_run_wrote_where_its_lines_end() {
        let ticket = Ticket::parse("t-1").unwrap();
        let done = record(RecordState::Running).completed(0);
        let written = |logs: &[u64], last_stored, lines_written| TicketView {
            lines_written: Some(lines_written),
            ..view(Some(done.clone()), false, logs, last_stored)
        };
        // The run wrote 5 lines; the store lost 4 and 5 with nothing after them.
        let lost_tail = status_from(&ticket, 0, written(&[1, 2, 3], 3, 5));
        assert_eq!(
            (lost_tail.state, lost_tail.exit_code, lost_tail.next_log_sequence, lost_tail.lines_written),
            (ScriptState::Complete, Some(0), 4, Some(5))
        );
        let asked_after_them = status_from(&ticket, 3, written(&[], 3, 5));
        assert_eq!((asked_after_them.next_log_sequence, asked_after_them.lines_written), (4, Some(5)));
        // A capped read is still running, and says nothing of the run's end yet.
        let capped = status_from(&ticket, 0, written(&[1, 2], 7, 9));
        assert_eq!((capped.state, capped.exit_code, capped.lines_written), (ScriptState::Running, None, None));
        // A gap before the last stored line is not a capped read.
        let after_gap = status_from(&ticket, 3, written(&[6, 7], 7, 7));
        assert_eq!(
            (after_gap.state, after_gap.next_log_sequence, after_gap.lines_written),
            (ScriptState::Complete, 8, Some(7))
        );
        // A running ticket says nothing of it, whatever the store holds.
        let running = TicketView { lines_written: Some(5), ..view(Some(record(RecordState::Running)), true, &[1], 1) };
        assert_eq!(status_from(&ticket, 0, running).lines_written, None);
        assert_eq!(status_from(&ticket, 0, view(Some(done), false, &[1], 1)).lines_written, None, "not recorded");
    }
}
