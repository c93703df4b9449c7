//! The script requests of the flow: a start (claim, confirm, launch), a status and its long
//! poll, a cancel, a complete; and the recovery of runs an earlier process left.

use super::environment::{Environment, Launch, Note, Provenance, Step};
use crate::agent::{
    cancel_answer, cancel_awaits_replication, cancelled_status, check_issued_since, check_replicated,
    check_tombstone_replicated, decide_complete, decide_start, recover_run, status_from, status_without_logs,
    CompleteDecision, Recovery, StartDecision,
};
use crate::store::record::{cancel_tombstone, claim_record, TicketRecord};
use crate::store::SKIP_LOGS;
use crate::store::{Cancel, Claim, ClaimReplication, Release, TicketKeys, TicketStore, TicketView};
use crate::wire::envelope::Reply;
use crate::wire::error::{ErrorKind, ErrorReply};
use crate::wire::messages::ScriptSpec;
use crate::wire::ticket::Ticket;
use crate::wire::topology::MAX_STATUS_WAIT_MS;
use std::time::Duration;

/// How long a claim waits for its replicas (`--claim-replicas`) before the start is answered
/// transient: well inside the dispatcher's attempt timeout.
pub const CLAIM_REPLICA_WAIT: Duration = Duration::from_secs(1);

/// The store's error, answered as such: transient, the dispatcher repeats.
fn store_error(error: impl std::fmt::Display) -> Reply {
    Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, error.to_string()))
}

/// The store's error for a start: nothing was started.
fn unavailable(error: impl std::fmt::Display) -> Reply {
    Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, format!("{error}; nothing was started")))
}

/// A start as the flow takes it, from script v2 or v1.
pub(super) struct Start {
    pub ticket: Ticket,
    pub spec: ScriptSpec,
    pub not_after: Option<u64>,
    /// How long the status it is answered with may wait for output.
    pub wait: Option<u64>,
    /// When its first copy was issued (v2 only).
    pub first_issued_at: Option<u64>,
    /// Where it came from, for its receipt.
    pub provenance: Provenance,
}

/// Claims the ticket and runs the script once; any copy after the first gets the ticket's
/// status (or a conflict, for a different script under the same ticket). `None` if the
/// environment stopped the flow after the claim.
pub(super) async fn start<E: Environment>(env: &mut E, start: Start) -> Option<Reply> {
    let Start { ticket, spec, not_after, wait, first_issued_at, provenance } = start;
    let keys = env.store().keys(&ticket.store_key());
    let digest = spec.digest();
    let settings = env.settings();
    let record = claim_record(
        &settings.owner,
        &settings.agent_id,
        digest.clone(),
        spec.mutex().is_some(),
        not_after,
        env.now_ms(),
    );
    // Simulation only (`sim-break-flow-epoch`): after the store lost its data, the start is
    // claimed in the new data without being checked against it.
    let mut checked = true;
    let claim = loop {
        let epoch = match env.memory().epoch() {
            Some(epoch) => epoch,
            None => match env.store().epoch(env.now_ms()).await {
                Ok(epoch) => {
                    env.memory().set_epoch(epoch.clone());
                    epoch
                }
                Err(error) => return Some(unavailable(error)),
            },
        };
        if checked {
            if let Err(refused) = check_issued_since(first_issued_at, epoch.created_ms) {
                env.note(Note::IssuedBeforeLoss { ticket: &ticket });
                return Some(Reply::Error(refused));
            }
        }
        let settings = env.settings();
        let (record_ttl, lease_ttl) = (settings.record_ttl, settings.lease_ttl);
        match env.store().claim(&keys, &record, record_ttl, lease_ttl, &epoch).await {
            Ok(Claim::EpochChanged) => match env.store().epoch(env.now_ms()).await {
                Ok(current) => {
                    env.note(Note::EpochChanged { previous: &epoch, current: &current });
                    env.memory().set_epoch(current);
                    checked = !cfg!(feature = "sim-break-flow-epoch");
                }
                Err(error) => return Some(unavailable(error)),
            },
            other => break other,
        }
    };
    let claim = match claim {
        Err(error) => return Some(unavailable(error)),
        Ok(claim) => claim,
    };
    let unconfirmed = env.memory().unconfirmed().contains(&keys.ticket);
    let settings = env.settings();
    let decision = decide_start(&claim, &digest, &settings.owner, settings.claim_replicas, unconfirmed);
    env.note(Note::StartDecided { ticket: &ticket, decision: &decision });
    if !env.go_on(Step::Claimed) {
        return None;
    }
    match (decision, claim) {
        (StartDecision::Run, _) => {
            env.note(Note::Starting { ticket: &ticket, replicas: None });
            env.launch(Launch { keys, record, spec, provenance });
        }
        (StartDecision::Confirm, Claim::Existing { record: existing, raw, .. }) => {
            // The repeat of a start whose claim the replicas had not confirmed: confirm it now,
            // and start the script only then.
            let launch = Launch { keys, record: existing, spec, provenance };
            if let Err(refused) = confirm_and_launch(env, &ticket, &raw, launch).await {
                return Some(refused);
            }
        }
        (StartDecision::Confirm, _) => {
            env.memory().unconfirmed().insert(keys.ticket.clone());
            let raw = record.encode();
            if let Err(refused) =
                confirm_and_launch(env, &ticket, &raw, Launch { keys, record, spec, provenance }).await
            {
                return Some(refused);
            }
        }
        (StartDecision::Cancelled, _) => {
            env.note(Note::StartCancelled { ticket: &ticket });
            return Some(Reply::ScriptStatus(cancelled_status(&ticket)));
        }
        (StartDecision::Conflict(conflict), _) => {
            env.note(Note::StartConflict { ticket: &ticket });
            return Some(Reply::Error(conflict));
        }
        (StartDecision::Status, _) => env.note(Note::DuplicateStart { ticket: &ticket }),
    }
    Some(status(env, &ticket, 0, wait).await)
}

/// Waits for `claim_replicas` replicas to hold this process's claim `raw`, then starts the
/// script, once: the claim leaves the unconfirmed set as it starts. Not confirmed in time (or
/// the claim lost with a failed master) answers a transient error, so the dispatcher repeats the
/// start; nothing started.
async fn confirm_and_launch<E: Environment>(
    env: &mut E,
    ticket: &Ticket,
    raw: &str,
    launch: Launch,
) -> Result<(), Reply> {
    let keys = launch.keys.clone();
    if cfg!(feature = "sim-break-flow-confirm") && env.memory().unconfirmed().remove(&keys.ticket) {
        // Simulation only: the script starts before the replicas confirmed its claim.
        env.note(Note::Starting { ticket, replicas: None });
        env.launch(launch.clone());
    }
    let settings = env.settings();
    let (owner, lease_ttl, wanted) = (settings.owner.clone(), settings.lease_ttl, settings.claim_replicas);
    let replication = env
        .store()
        .confirm_claim(&keys, raw, &owner, lease_ttl, wanted, CLAIM_REPLICA_WAIT)
        .await
        .map_err(unavailable)?;
    match check_replicated(&replication, wanted, CLAIM_REPLICA_WAIT) {
        Ok(acked) => {
            if env.memory().unconfirmed().remove(&keys.ticket) {
                env.note(Note::Starting { ticket, replicas: Some(acked) });
                env.launch(launch);
            }
            Ok(())
        }
        Err(refused) => {
            match replication {
                ClaimReplication::Lost => {
                    env.memory().unconfirmed().remove(&keys.ticket);
                    env.note(Note::ClaimLost { ticket });
                }
                ClaimReplication::Acked(acked) => env.note(Note::ClaimUnreplicated { ticket, acked, wanted }),
            }
            Err(Reply::Error(refused))
        }
    }
}

/// The ticket's status with the lines after `last_seq`, held up to `wait` ms until there is new
/// output or the script ends ([`Environment::wait_for_news`]).
pub(super) async fn status<E: Environment>(env: &mut E, ticket: &Ticket, last_seq: u64, wait: Option<u64>) -> Reply {
    let keys = env.store().keys(&ticket.store_key());
    let wait = Duration::from_millis(wait.unwrap_or(0).min(MAX_STATUS_WAIT_MS));
    let deadline = env.deadline(wait);
    if wait > Duration::ZERO {
        // Nothing to read yet from a run this process only just started.
        env.wait_for_news(&keys.ticket, last_seq, deadline, true).await;
    }
    loop {
        let status = match env.store().read(&keys, last_seq).await {
            Ok(view) => {
                if let Some((record, raw)) = &view.record {
                    if record.state.is_complete() && !record.tombstone {
                        env.memory().remember_finished(&keys.ticket, raw);
                    }
                }
                status_from(ticket, last_seq, view)
            }
            Err(error) => return store_error(error),
        };
        if !status.logs.is_empty() || status.is_complete() || env.reached(deadline) {
            return Reply::ScriptStatus(status);
        }
        env.wait_for_news(&keys.ticket, last_seq, deadline, false).await;
    }
}

/// Cancels the script: kills it if this process runs it, flags it for the worker that does (or
/// for this process's run about to start, which checks the flag before it spawns), or leaves a
/// tombstone if no start was claimed yet, so a late start cannot run it. The store decides
/// between the last two in one step, against the claim. Answered as [`cancel_answer`] says,
/// given when the start it stops was first issued.
pub(super) async fn cancel<E: Environment>(
    env: &mut E,
    ticket: &Ticket,
    last_seq: u64,
    first_issued_at: Option<u64>,
) -> Reply {
    let reply = cancel_and_read(env, ticket, last_seq).await;
    let Reply::ScriptStatus(status) = reply else { return reply };
    if cancel_awaits_replication(&status, env.settings().claim_replicas) {
        if let Err(refused) = confirm_tombstone(env, ticket).await {
            return refused;
        }
    }
    let epoch = match env.store().epoch(env.now_ms()).await {
        Ok(epoch) => epoch,
        Err(error) => return store_error(error),
    };
    match cancel_answer(status, first_issued_at, epoch.created_ms) {
        Ok(status) => Reply::ScriptStatus(status),
        Err(lost) => {
            env.note(Note::CancelOfLostTicket { ticket });
            Reply::Error(lost)
        }
    }
}

/// Waits for `claim_replicas` replicas to hold the record that makes a ticket unknown to a
/// cancel (its tombstone), before the cancel is answered with it ([`cancel_awaits_replication`]);
/// a transient error if they do not in time.
async fn confirm_tombstone<E: Environment>(env: &mut E, ticket: &Ticket) -> Result<(), Reply> {
    let keys = env.store().keys(&ticket.store_key());
    let view = env.store().read(&keys, SKIP_LOGS).await.map_err(store_error)?;
    let raw = view.record.map(|(_, raw)| raw).unwrap_or_default();
    let wanted = env.settings().claim_replicas;
    let replication = env.store().confirm_record(&keys, &raw, wanted, CLAIM_REPLICA_WAIT).await.map_err(store_error)?;
    check_tombstone_replicated(&replication, wanted, CLAIM_REPLICA_WAIT).map_err(|refused| {
        env.note(Note::TombstoneUnreplicated { ticket, replication: &replication, wanted });
        Reply::Error(refused)
    })
}

/// Cancels the script (see [`cancel`]) and reads the ticket's status after.
async fn cancel_and_read<E: Environment>(env: &mut E, ticket: &Ticket, last_seq: u64) -> Reply {
    let keys = env.store().keys(&ticket.store_key());
    if env.cancel_run(&keys.ticket) {
        env.note(Note::Cancelling { ticket });
        return status(env, ticket, last_seq, None).await;
    }
    let settings = env.settings();
    let tombstone = cancel_tombstone(&settings.owner, &settings.agent_id, env.now_ms());
    // The start it stands for may still be in a queue with any deadline: keep the tombstone as
    // long as an unfinished record.
    let (record_ttl, flag_ttl) = (settings.record_ttl, settings.lease_ttl * 4);
    let stored = match env.store().cancel(&keys, &tombstone, record_ttl, flag_ttl).await {
        Ok(stored) => stored,
        Err(error) => return store_error(error),
    };
    // A run of this process that began after the first look picks the flag up before it
    // spawns, or is stopped here.
    let local = stored == Cancel::Flagged && env.cancel_run(&keys.ticket);
    env.note(Note::CancelStored { ticket, stored: &stored, local });
    status(env, ticket, last_seq, None).await
}

/// Cleans up an ended script: drops its output and workspace, and leaves a tombstone that
/// outlives any copy of its start still in a queue. A running script is left alone. A run a
/// status saw finished is completed against the record it read then, in one request; a record
/// changed since (or none remembered) is read first.
pub(super) async fn complete<E: Environment>(env: &mut E, ticket: &Ticket) -> Reply {
    let keys = env.store().keys(&ticket.store_key());
    let without_deadline_ms = env.settings().tombstone_ttl.as_millis() as u64;
    if let Some(raw) = env.memory().take_finished(&keys.ticket) {
        let record = TicketRecord::decode_or_failed(&raw);
        // Finished: it reads the same whatever its lease.
        if let CompleteDecision::Tombstone { tombstone, ttl_ms } =
            decide_complete(Some(&record), false, env.now_ms(), without_deadline_ms)
        {
            let ttl = Duration::from_millis(ttl_ms);
            match env.store().compare_and_set(&keys, &raw, &tombstone, Some(ttl), Release::LeaseAndOutput).await {
                Ok(true) => return completed(env, ticket, &keys, &tombstone).await,
                Ok(false) => {}
                Err(error) => return store_error(error),
            }
        }
    }
    let view = match env.store().read(&keys, SKIP_LOGS).await {
        Ok(view) => view,
        Err(error) => return store_error(error),
    };
    let record = view.record.as_ref().map(|(r, _)| r);
    let (tombstone, ttl) = match decide_complete(record, view.lease_alive, env.now_ms(), without_deadline_ms) {
        CompleteDecision::Status => return Reply::ScriptStatus(status_without_logs(ticket, view)),
        CompleteDecision::Tombstone { tombstone, ttl_ms } => (tombstone, Duration::from_millis(ttl_ms)),
    };
    let raw = view.record.as_ref().map_or("", |(_, raw)| raw.as_str());
    match env.store().compare_and_set(&keys, raw, &tombstone, Some(ttl), Release::LeaseAndOutput).await {
        Ok(true) => return completed(env, ticket, &keys, &tombstone).await,
        Ok(false) => env.note(Note::CompleteRaced { ticket }),
        Err(error) => return store_error(error),
    }
    match env.store().read(&keys, SKIP_LOGS).await {
        Ok(view) => Reply::ScriptStatus(status_without_logs(ticket, view)),
        Err(error) => store_error(error),
    }
}

/// After the store took `tombstone` for the ticket: its workspace dropped, answered with what a
/// read would find now (the tombstone alone), without reading it.
async fn completed<E: Environment>(env: &mut E, ticket: &Ticket, keys: &TicketKeys, tombstone: &TicketRecord) -> Reply {
    env.clean(&keys.ticket).await;
    env.note(Note::Completed { ticket });
    Reply::ScriptStatus(status_without_logs(ticket, TicketView::of_tombstone(tombstone)))
}

/// Marks the runs of an earlier process with this agent id as lost: they can never be finished
/// or restarted, so they report unknown result at once instead of after the lease. Gives each
/// one's ticket and the record it had (for its receipt).
pub async fn recover_lost_runs<E: Environment>(
    env: &mut E,
) -> Result<Vec<(String, TicketRecord)>, <E::Store as TicketStore>::Error> {
    let mut lost = Vec::new();
    let agent_id = env.settings().agent_id.clone();
    for ticket in env.store().running_tickets(&agent_id).await? {
        let keys = env.store().keys(&ticket);
        let view = env.store().read(&keys, SKIP_LOGS).await?;
        match (recover_run(view.record.as_ref().map(|(r, _)| r), &env.settings().owner), view.record) {
            (Recovery::ReportLost(lost_run), Some((record, raw))) => {
                env.store().compare_and_set(&keys, &raw, &lost_run, None, Release::Lease).await?;
                env.note(Note::ReportedLost { ticket: &ticket, previous_owner: &record.owner });
                lost.push((ticket, record));
            }
            _ => env.store().forget_running(&agent_id, &ticket).await?,
        }
    }
    Ok(lost)
}
