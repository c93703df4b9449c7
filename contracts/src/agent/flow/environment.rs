//! What the flow and its environment talk in: the agent process's [`Settings`] and [`Memory`],
//! a [`Delivery`] and what becomes of it ([`Served`]), the [`Note`]s of each step, and the
//! [`Environment`] itself, everything the flow does not do (the store, the clock and the
//! waiting, the scripts, the admission of a delivery, a fault hook).

use crate::agent::keys::AgentKeys;
use crate::agent::limits::LimitPolicy;
use crate::agent::run_as::RunAsPolicy;
use crate::agent::StartDecision;
use crate::store::record::TicketRecord;
use crate::store::{Cancel, ClaimReplication, Epoch, TicketKeys, TicketStore};
use crate::trust::keys::KeyId;
use crate::trust::seal::{Seal, SealHeaderError, SessionId};
use crate::trust::session::Session;
use crate::trust::sessions::Declined;
use crate::trust::verify::Refusal;
use crate::wire::envelope::{InReplyTo, KeyShare, Reply, Request};
use crate::wire::error::CodecError;
use crate::wire::labels::{Labels, Selectable};
use crate::wire::messages::{Kind, ScriptSpec};
use crate::wire::ticket::Ticket;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// What the flow knows of the agent process it serves as; fixed while the process lives.
#[derive(Clone, Debug)]
pub struct Settings {
    pub agent_id: String,
    pub pool: Option<String>,
    /// This process's identity as a ticket owner: the agent id and a fresh instance id.
    pub owner: String,
    /// A legacy agent: it serves script v1 only.
    pub legacy: bool,
    /// The services its capabilities reply lists.
    pub services: Vec<String>,
    /// The version its capabilities reply gives.
    pub version: String,
    /// Replicas that must hold a claim before its script starts (`--claim-replicas`).
    pub claim_replicas: u32,
    pub record_ttl: Duration,
    pub lease_ttl: Duration,
    /// How long a completed ticket without a deadline keeps its tombstone.
    pub tombstone_ttl: Duration,
    /// The users scripts may run as (`--allow-run-as`, `--default-run-as`).
    pub run_as: RunAsPolicy,
    /// The limits scripts run within: the agent's caps and how it enforces them.
    pub limits: LimitPolicy,
    /// Its labels (`--label`), by which approval rules may select it.
    pub labels: Labels,
}

impl Settings {
    /// What selectors (of approval rules) look at in this agent.
    pub fn selectable(&self) -> Selectable<'_> {
        Selectable { id: &self.agent_id, pool: self.pool.as_deref(), labels: &self.labels }
    }
}

/// What the flow remembers between requests: one per agent process, lost with it.
#[derive(Debug, Default)]
pub struct Memory {
    /// The ticket store's epoch as last seen (read at the first start if not known); a change
    /// means the store lost its data.
    epoch: Mutex<Option<Epoch>>,
    /// Tickets this process claimed whose claim the replicas have not confirmed yet: not
    /// started, and started only by this process, once, after a repeat confirms them.
    unconfirmed: Mutex<HashSet<String>>,
    /// The stored records of runs seen finished by a status, by ticket, until their complete:
    /// it compares against the one remembered instead of reading it first (one request to the
    /// store instead of two). A guess checked by the store: a record changed since is read.
    finished: Mutex<HashMap<String, String>>,
}

/// Finished records remembered at most ([`Memory`]); past it the memory starts again empty
/// (complete then reads, as without it): dispatchers that never complete cannot grow it.
const FINISHED_REMEMBERED: usize = 4096;

impl Memory {
    /// A process's memory, knowing the store's epoch `epoch` if it read it.
    pub fn new(epoch: Option<Epoch>) -> Memory {
        Memory { epoch: Mutex::new(epoch), unconfirmed: Mutex::default(), finished: Mutex::default() }
    }

    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch.lock().expect("epoch poisoned").clone()
    }

    pub fn set_epoch(&self, epoch: Epoch) {
        *self.epoch.lock().expect("epoch poisoned") = Some(epoch);
    }

    pub(super) fn unconfirmed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unconfirmed.lock().expect("unconfirmed poisoned")
    }

    /// Remembers `raw`, the stored record of `ticket_key`'s finished run.
    pub(super) fn remember_finished(&self, ticket_key: &str, raw: &str) {
        let mut finished = self.finished.lock().expect("finished poisoned");
        if finished.len() >= FINISHED_REMEMBERED && !finished.contains_key(ticket_key) {
            finished.clear();
        }
        finished.insert(ticket_key.to_owned(), raw.to_owned());
    }

    /// The record remembered for `ticket_key`'s finished run, forgotten now.
    pub(super) fn take_finished(&self, ticket_key: &str) -> Option<String> {
        self.finished.lock().expect("finished poisoned").remove(ticket_key)
    }
}

/// A delivery as it arrived: its body and the seal its headers carry (or why they carry none
/// that can be read).
pub struct Delivery<'a> {
    pub body: &'a [u8],
    pub seal: Result<Option<Seal>, SealHeaderError>,
}

/// How an answer is sealed: MAC'd in the session its command came in, else signed, carrying the
/// agent's share when it accepted the session the command offered, and naming the message it
/// answers (`None` for a legacy agent, which cannot sign).
#[derive(Debug, Default)]
pub struct Answer {
    pub session: Option<Session>,
    pub key_share: Option<KeyShare>,
    pub in_reply_to: Option<InReplyTo>,
}

/// What becomes of the delivery once answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Refused: dead-lettered, with the reason noted.
    DeadLetter,
}

/// What the flow made of one delivery.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "one per delivery, moved once: not worth a box")]
pub enum Served {
    /// Answer `reply`, sealed as `answer` says, then settle the delivery as `settle` says.
    Answered { reply: Reply, answer: Answer, settle: Settle },
    /// Not served and not answered: back to its queue, for this agent later or another worker
    /// (the agent is stopping, or its process died on the way: [`Environment::go_on`]).
    Returned,
}

/// A point of the flow where the environment may stop it ([`Environment::go_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The start's claim is answered and decided, nothing done about it yet.
    Claimed,
}

/// What the flow notes as it goes, for the environment to log (the agent), or to trace and check
/// (the simulation). Each is noted once, where it happens.
#[derive(Debug)]
pub enum Note<'a> {
    /// Not decoded (too large, or not a message): answered with why, settled as
    /// [`Settle`] says (acked if only its kind is unknown: a newer dispatcher's).
    Rejected {
        error: &'a CodecError,
    },
    /// Failed a trust check: answered `refusal`, dead-lettered, nothing ran. `signer` is the key
    /// its seal names, if any.
    Refused {
        refusal: &'a Refusal,
        signer: Option<KeyId>,
    },
    SessionAgreed {
        session: SessionId,
        dispatcher: KeyId,
    },
    SessionDeclined {
        dispatcher: KeyId,
        message_id: &'a str,
        declined: &'a Declined,
    },
    /// An unsigned command accepted (`--insecure-allow-unsigned`).
    Unsigned {
        kind: Kind,
    },
    /// A request passed every check and is served now.
    Serving {
        kind: Kind,
        ticket: Option<&'a Ticket>,
    },
    /// ... and is answered `reply`.
    Served {
        kind: Kind,
        ticket: Option<&'a Ticket>,
        reply: &'a Reply,
    },
    /// A start first issued before the store lost its data: refused.
    IssuedBeforeLoss {
        ticket: &'a Ticket,
    },
    /// The store lost its data since `previous`: starts issued before `current` are refused.
    EpochChanged {
        previous: &'a Epoch,
        current: &'a Epoch,
    },
    /// What a start's claim decided.
    StartDecided {
        ticket: &'a Ticket,
        decision: &'a StartDecision,
    },
    /// The script is launched now: claimed (and confirmed by this many `replicas`).
    Starting {
        ticket: &'a Ticket,
        replicas: Option<u32>,
    },
    /// The claim was lost from the store before the replicas confirmed it: not started.
    ClaimLost {
        ticket: &'a Ticket,
    },
    /// The claim is on fewer replicas than wanted: not started yet.
    ClaimUnreplicated {
        ticket: &'a Ticket,
        acked: u32,
        wanted: u32,
    },
    StartCancelled {
        ticket: &'a Ticket,
    },
    StartConflict {
        ticket: &'a Ticket,
    },
    DuplicateStart {
        ticket: &'a Ticket,
    },
    /// A cancel stops this process's run of the ticket.
    Cancelling {
        ticket: &'a Ticket,
    },
    /// A cancel found no run here and was stored as `stored`; `local` if a run of this process
    /// that began meanwhile was stopped too.
    CancelStored {
        ticket: &'a Ticket,
        stored: &'a Cancel,
        local: bool,
    },
    /// The cancel's tombstone is on fewer replicas than wanted: the cancel is not answered yet.
    TombstoneUnreplicated {
        ticket: &'a Ticket,
        replication: &'a ClaimReplication,
        wanted: u32,
    },
    /// A cancel of a ticket the store lost with its data: whether it ran is unknown.
    CancelOfLostTicket {
        ticket: &'a Ticket,
    },
    /// An ended run's record became a tombstone; its output was dropped.
    Completed {
        ticket: &'a Ticket,
    },
    /// The record changed while completing: answered with its status.
    CompleteRaced {
        ticket: &'a Ticket,
    },
    /// A run of an earlier process with this agent id was reported lost.
    ReportedLost {
        ticket: &'a str,
        previous_owner: &'a str,
    },
}

/// A script to run: its ticket's keys, the record its claim wrote, the script, and where its
/// start came from (for the run's receipt, [`crate::receipt`]).
#[derive(Clone, Debug)]
pub struct Launch {
    pub keys: TicketKeys,
    pub record: TicketRecord,
    pub spec: ScriptSpec,
    pub provenance: Provenance,
}

/// Where a start came from, as its run's receipt tells: the dispatcher key that vouched for it
/// (none when unsigned), the keys whose approvals counted ([`crate::trust::approval`]), and the
/// purpose and submitter it was signed with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    pub signed_by: Option<KeyId>,
    pub approved_by: Vec<KeyId>,
    pub purpose: Option<String>,
    pub submitter: Option<String>,
}

/// Everything the flow does not do itself. Methods that wait are the environment's, so that the
/// simulator can answer each at once.
#[allow(
    async_fn_in_trait,
    reason = "implemented by the agent and the simulator only, each calling its own futures: no caller needs them Send"
)]
pub trait Environment {
    type Store: TicketStore + ?Sized;
    /// A point in time the long poll waits until.
    type Instant: Copy + Ord;

    fn store(&self) -> &Self::Store;
    fn settings(&self) -> &Settings;
    fn memory(&self) -> &Memory;
    fn keys(&self) -> &AgentKeys;

    /// The time, in Unix milliseconds (the agent's clock, with its skew).
    fn now_ms(&self) -> u64;
    /// The instant `wait` from now.
    fn deadline(&self, wait: Duration) -> Self::Instant;
    /// Whether `deadline` has come.
    fn reached(&self, deadline: Self::Instant) -> bool;
    /// The long poll: waits until this process's run of `ticket_key` has output after
    /// `last_seq` or has ended, or for a run elsewhere a poll interval, never past `deadline`.
    /// `only_fresh` waits only on a run of this process.
    async fn wait_for_news(&mut self, ticket_key: &str, last_seq: u64, deadline: Self::Instant, only_fresh: bool);

    /// Admits a request that passed every check: waits for a place for its script when it
    /// `starts` one. `false` when it is to go back to its queue instead (the agent stops).
    async fn admit(&mut self, starts: bool) -> bool;
    /// Runs the script of a ticket claimed, in the place [`Environment::admit`] took.
    fn launch(&mut self, launch: Launch);
    /// Cancels this process's run of `ticket_key`, if it has one.
    fn cancel_run(&mut self, ticket_key: &str) -> bool;
    /// Drops what an ended run left besides the store (its workspace), once completed.
    async fn clean(&mut self, ticket_key: &str);
    /// Serves a file transfer request (upload or download chunk).
    async fn transfer(&mut self, request: Request) -> Reply;
    /// A fresh ticket, for a script v1 start (whose tickets the agent makes).
    fn new_ticket(&mut self) -> Ticket;

    /// The fault hook: whether the flow goes on past `step` (the simulator's crashes; the agent
    /// always goes on).
    fn go_on(&mut self, _step: Step) -> bool {
        true
    }
    fn note(&mut self, note: Note<'_>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_records_are_remembered_until_their_complete_and_never_past_the_bound() {
        let memory = Memory::new(None);
        memory.remember_finished("t-0", "2|d|0|...");
        assert_eq!(memory.take_finished("t-0").as_deref(), Some("2|d|0|..."));
        assert_eq!(memory.take_finished("t-0"), None, "taken by its complete");
        for i in 0..FINISHED_REMEMBERED + 10 {
            memory.remember_finished(&format!("t-{i}"), "r");
        }
        let held = memory.finished.lock().unwrap().len();
        assert!(held <= FINISHED_REMEMBERED, "{held} held: dispatchers that never complete must not grow it");
    }
}
