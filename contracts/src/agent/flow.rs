//! The agent's flow: what it does with one delivery, from its bytes and seal to the reply, sealed
//! as so and naming its request. The trust checks first (size, seal, decoding, envelope, the
//! session offered), then the request: capabilities; a start with its claim, the replicas'
//! confirmation and the launch; a status with its long poll; a cancel; a complete. The decisions
//! are the plain functions of [`crate::agent`]; this is the order they are taken in and what is
//! done with their answers, once, for the agent and for the simulation alike.
//!
//! Everything outside is the [`Environment`]'s: the ticket store, the clock and the waiting, the
//! scripts (launched, cancelled, their output awaited), the broker's admission of a delivery (a
//! place for a script), a fault hook, and the notes it takes of each step (the agent logs them,
//! the simulation traces them and checks its invariants on them). `worker-agent` is the real
//! environment, over RabbitMQ and Redis (or its embedded store) with real processes; the
//! simulator (`tests/simulation`) is another, over its broker, [`crate::store::MemoryStore`] and
//! clock. The flow reads no clock, file, network or randomness of its own.
//!
//! Nothing here is ever pending in the simulation: every wait is a call into the environment,
//! which the simulator answers at once (a long poll is answered by noting how long its reply is
//! held), and [`crate::store::MemoryStore`]'s futures are always ready.

mod script;

pub use script::recover_lost_runs;

use crate::agent::keys::{Acceptance, AgentKeys};
use crate::agent::{check_fresh, StartDecision, TicketRecord};
use crate::envelope::check_size;
use crate::session::{Declined, KeyShare, Session, SessionId};
use crate::store::{Cancel, ClaimReplication, Epoch, TicketKeys, TicketStore};
use crate::trust::{Identity, KeyId, Origin, Refusal, Seal};
use crate::{
    request_digest, Capabilities, CodecError, Envelope, ErrorKind, ErrorReply, InReplyTo, Kind, Reply, Request,
    ScriptSpec, Ticket,
};
use std::collections::HashSet;
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
}

impl Memory {
    /// A process's memory, knowing the store's epoch `epoch` if it read it.
    pub fn new(epoch: Option<Epoch>) -> Memory {
        Memory { epoch: Mutex::new(epoch), unconfirmed: Mutex::default() }
    }

    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch.lock().expect("epoch poisoned").clone()
    }

    pub fn set_epoch(&self, epoch: Epoch) {
        *self.epoch.lock().expect("epoch poisoned") = Some(epoch);
    }

    fn unconfirmed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unconfirmed.lock().expect("unconfirmed poisoned")
    }
}

/// A delivery as it arrived: its body and the seal its headers carry (or why they carry none
/// that can be read).
pub struct Delivery<'a> {
    pub body: &'a [u8],
    pub seal: Result<Option<Seal>, String>,
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
// One per delivery, moved once: not worth a box.
#[allow(clippy::large_enum_variant)]
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

/// Everything the flow does not do itself. Methods that wait are the environment's, so that the
/// simulator can answer each at once.
#[allow(async_fn_in_trait)]
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
    /// Runs the script of the ticket claimed as `record`, in the place [`Environment::admit`]
    /// took.
    fn launch(&mut self, keys: TicketKeys, record: TicketRecord, spec: ScriptSpec);
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

/// Whether an agent serves a kind at all; a legacy (v1) agent knows only script v1.
pub fn serves(legacy: bool, kind: Kind) -> bool {
    !legacy || matches!(kind, Kind::StartScriptV1 | Kind::GetStatusV1 | Kind::CancelScriptV1 | Kind::CompleteScriptV1)
}

/// Serves one delivery (ARCHITECTURE.md, Trust: trust first): its size, its seal over the raw body, then,
/// decoded, its envelope; the session it offers; then the request.
pub async fn serve<E: Environment>(env: &mut E, delivery: Delivery<'_>) -> Served {
    let Delivery { body, seal } = delivery;
    // Every answer names the very message it answers (its digest), so that it counts for no other
    // request: not for one whose correlation id or reply-to someone copied onto this message.
    let digest = env.keys().signs().then(|| request_digest(body));
    let in_reply_to = |ticket: Option<&Ticket>| digest.map(|digest| InReplyTo::new(digest, ticket.cloned()));
    // Size before anything else: a body over the limit (which the broker's max_message_size should
    // have refused) is neither verified nor copied, only refused.
    if let Err(error) = check_size(body.len()) {
        return reject(env, error, Answer { in_reply_to: in_reply_to(None), ..Answer::default() });
    }
    let signer = seal.as_ref().ok().and_then(|s| s.as_ref().and_then(Seal::signer));
    let now = env.now_ms();
    let (origin, session) = match env.keys().check_seal(seal, body, now) {
        Ok(checked) => checked,
        // Not decoded (nothing about it is trusted): the refusal names the digest alone.
        Err(refusal) => return refuse(env, refusal, signer, in_reply_to(None)),
    };
    let mut answer = Answer { session, key_share: None, in_reply_to: in_reply_to(None) };
    let (header, request) = match Request::decode(body) {
        Ok(decoded) => decoded,
        Err(error) => return reject(env, error, answer),
    };
    answer.in_reply_to = in_reply_to(request.ticket());
    let settings = env.settings();
    let me = Identity { agent_id: &settings.agent_id, pool: settings.pool.as_deref() };
    if let Err(refusal) = env.keys().check_header(origin, &header, me, now) {
        // Signed: a refused command's session, if any, is not one to answer in.
        return refuse(env, refusal, signer, answer.in_reply_to);
    }
    let acceptance = env.keys().accept_session(origin, &header, body, me, now);
    answer.key_share = match acceptance {
        Acceptance::NotOffered => None,
        Acceptance::Agreed { share, session, dispatcher } => {
            env.note(Note::SessionAgreed { session, dispatcher });
            Some(share)
        }
        Acceptance::Declined { dispatcher, declined } => {
            let message_id = &header.message_id;
            env.note(Note::SessionDeclined { dispatcher, message_id, declined: &declined });
            None
        }
    };
    let kind = request.kind();
    if origin == Origin::Unsigned {
        env.note(Note::Unsigned { kind });
    }
    if !env.admit(matches!(kind, Kind::StartScriptV2 | Kind::StartScriptV1)).await {
        return Served::Returned;
    }
    let ticket = request.ticket().cloned();
    env.note(Note::Serving { kind, ticket: ticket.as_ref() });
    let Some(reply) = handle(env, &header, request).await else { return Served::Returned };
    env.note(Note::Served { kind, ticket: ticket.as_ref(), reply: &reply });
    Served::Answered { reply, answer, settle: Settle::Ack }
}

/// Answers a message that cannot be decoded (or is too large to be) with why: acked if only its
/// kind is unknown (a newer dispatcher's), else dead-lettered.
fn reject<E: Environment>(env: &mut E, error: CodecError, answer: Answer) -> Served {
    env.note(Note::Rejected { error: &error });
    let settle = if matches!(error, CodecError::UnknownKind(_)) { Settle::Ack } else { Settle::DeadLetter };
    let reply = Reply::Error(ErrorReply::new(error.reply_kind(), error.to_string()));
    Served::Answered { reply, answer, settle }
}

/// Refuses a command that failed a trust check: answered with the reason (a signed command past
/// its deadline too: ARCHITECTURE.md, Trust), signed, naming the refused message, and dead-lettered.
/// Nothing runs, nothing is stored.
fn refuse<E: Environment>(env: &mut E, refusal: Refusal, signer: Option<KeyId>, names: Option<InReplyTo>) -> Served {
    env.note(Note::Refused { refusal: &refusal, signer });
    let reply = Reply::Error(ErrorReply::new(refusal.answered_as(), format!("{refusal}; nothing ran")));
    Served::Answered { reply, answer: Answer { in_reply_to: names, ..Answer::default() }, settle: Settle::DeadLetter }
}

/// Serves one request that passed every check; `None` if the environment stopped the flow.
async fn handle<E: Environment>(env: &mut E, header: &Envelope<()>, request: Request) -> Option<Reply> {
    if !serves(env.settings().legacy, request.kind()) {
        let message = format!("unsupported message kind {:?}", header.kind);
        return Some(Reply::Error(ErrorReply::new(ErrorKind::Unsupported, message)));
    }
    if let Err(expired) = check_fresh(header.not_after, env.now_ms()) {
        return Some(Reply::Error(expired));
    }
    let reply = match request {
        Request::GetCapabilities(_) => {
            let settings = env.settings();
            Reply::Capabilities(Capabilities {
                services: settings.services.clone(),
                agent_version: settings.version.clone(),
            })
        }
        Request::StartScriptV2(mut start) => {
            if let Err(refused) = env.keys().open_secrets(&mut start) {
                return Some(Reply::Error(refused));
            }
            let first_issued_at = start.first_issued_at.unwrap_or(header.issued_at);
            let wait = start.wait_for_output;
            let start = script::Start {
                ticket: start.ticket,
                spec: start.spec,
                not_after: header.not_after,
                wait,
                first_issued_at: Some(first_issued_at),
            };
            return script::start(env, start).await;
        }
        Request::StartScriptV1(start) => {
            let ticket = env.new_ticket();
            let start = script::Start { ticket, spec: start.spec, not_after: None, wait: None, first_issued_at: None };
            return script::start(env, start).await;
        }
        Request::GetStatusV2(s) => script::status(env, &s.ticket, s.last_log_sequence, s.wait).await,
        Request::GetStatusV1(s) => script::status(env, &s.ticket, s.last_log_sequence, None).await,
        Request::CancelScriptV2(c) => script::cancel(env, &c.ticket, c.last_log_sequence, c.first_issued_at).await,
        Request::CancelScriptV1(c) => script::cancel(env, &c.ticket, c.last_log_sequence, None).await,
        Request::CompleteScriptV2(c) => script::complete(env, &c.ticket).await,
        Request::CompleteScriptV1(c) => script::complete(env, &c.ticket).await,
        transfer @ (Request::UploadChunk(_) | Request::DownloadChunk(_)) => env.transfer(transfer).await,
    };
    Some(reply)
}
