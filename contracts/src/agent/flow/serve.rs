//! Serving one delivery: the trust checks first (size, seal, decoding, envelope, the session
//! offered), then the request, handed to [`super::script`] for the script service.

use super::environment::{Answer, Delivery, Environment, Note, Provenance, Served, Settings, Settle};
use super::script::{self, Start};
use crate::agent::check_fresh;
use crate::agent::keys::Acceptance;
use crate::agent::limits::LimitRefusal;
use crate::store::TicketStore;
use crate::trust::keys::KeyId;
use crate::trust::seal::Seal;
use crate::trust::verify::{Identity, Origin, Refusal};
use crate::wire::envelope::{check_size, request_digest, Envelope, InReplyTo, Reply, Request};
use crate::wire::error::{CodecError, ErrorKind, ErrorReply};
use crate::wire::messages::{Capabilities, Kind, ScriptSpec, SERVICE_APPROVALS, SERVICE_LIMITS};
use crate::wire::ticket::Ticket;

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
    let signed_by = match origin {
        Origin::Key(key) | Origin::Session { key, .. } => Some(key),
        Origin::Unsigned => None,
    };
    let Some(reply) = handle(env, &header, request, signed_by).await else { return Served::Returned };
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
async fn handle<E: Environment>(
    env: &mut E,
    header: &Envelope<()>,
    request: Request,
    signed_by: Option<KeyId>,
) -> Option<Reply> {
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
            let lists = |service: &str| settings.services.iter().any(|s| s == service);
            Reply::Capabilities(Capabilities {
                services: settings.services.clone(),
                agent_version: settings.version.clone(),
                limits: lists(SERVICE_LIMITS).then(|| Box::new(settings.limits.in_force())),
                approvals: lists(SERVICE_APPROVALS).then(|| env.keys().approvals_in_force(settings.selectable())),
            })
        }
        Request::StartScriptV2(mut start) => {
            if let Err(refused) = env.keys().open_secrets(&mut start) {
                return Some(Reply::Error(refused));
            }
            if let Err(refused) = check_start(env.settings(), &start.spec) {
                return Some(Reply::Error(refused));
            }
            let provenance = match check_approved(env, &header.target, &start.spec, signed_by) {
                Ok(provenance) => provenance,
                Err(refused) => return Some(repeat_or(env, &start.ticket, &start.spec, refused).await),
            };
            let first_issued_at = start.first_issued_at.unwrap_or(header.issued_at);
            let wait = start.wait_for_output;
            let start = Start {
                ticket: start.ticket,
                spec: start.spec,
                not_after: header.not_after,
                wait,
                first_issued_at: Some(first_issued_at),
                provenance,
            };
            return script::start(env, start).await;
        }
        Request::StartScriptV1(start) => {
            if let Err(refused) = check_start(env.settings(), &start.spec) {
                return Some(Reply::Error(refused));
            }
            let provenance = match check_approved(env, &header.target, &start.spec, signed_by) {
                Ok(provenance) => provenance,
                Err(refused) => return Some(Reply::Error(refused)),
            };
            let ticket = env.new_ticket();
            let start =
                Start { ticket, spec: start.spec, not_after: None, wait: None, first_issued_at: None, provenance };
            return script::start(env, start).await;
        }
        Request::GetStatusV2(s) => script::status(env, &s.ticket, s.last_log_sequence, s.wait).await,
        Request::GetStatusV1(s) => script::status(env, &s.ticket, s.last_log_sequence, None).await,
        Request::CancelScriptV2(c) => script::cancel(env, &c.ticket, c.last_log_sequence, c.first_issued_at).await,
        Request::CancelScriptV1(c) => script::cancel(env, &c.ticket, c.last_log_sequence, None).await,
        Request::CompleteScriptV2(c) => {
            let answer = script::complete(env, &c.ticket).await;
            for ticket in c.tickets().skip(1) {
                script::complete(env, ticket).await;
            }
            answer
        }
        Request::CompleteScriptV1(c) => script::complete(env, &c.ticket).await,
        transfer @ (Request::UploadChunk(_) | Request::DownloadChunk(_)) => env.transfer(transfer).await,
    };
    Some(reply)
}

/// Refuses, before any claim, a start whose script would run as a user this agent may not run
/// it as ([`crate::agent::run_as`]), or within limits it cannot or may not give it
/// ([`crate::agent::limits`]): nothing runs, nothing is stored.
fn check_start(settings: &Settings, spec: &ScriptSpec) -> Result<(), ErrorReply> {
    if let Err(refusal) = settings.run_as.resolve(spec.run_as.as_deref()) {
        return Err(ErrorReply::new(ErrorKind::NotAuthorized, format!("{refusal}; nothing ran")));
    }
    check_limits(settings, spec)
}

/// Refuses, before any claim, a start without the approvals the rules of the agent's
/// trusted-keys file require ([`crate::trust::approval`]): nothing runs, nothing is stored.
/// Else where the start came from, for its receipt.
fn check_approved<E: Environment>(
    env: &E,
    target: &str,
    spec: &ScriptSpec,
    signed_by: Option<KeyId>,
) -> Result<Provenance, ErrorReply> {
    let settings = env.settings();
    // Approvals count for this agent's own address only: an unsigned command's target is not
    // checked (`--insecure-allow-unsigned`), and another agent's approvals must not count here.
    let ours = target == settings.agent_id
        || settings.pool.as_deref().is_some_and(|pool| target.strip_prefix("pool:") == Some(pool));
    let target = if ours { target } else { settings.agent_id.as_str() };
    let approved_by = env
        .keys()
        .check_approvals(spec, target, settings.selectable(), env.now_ms())
        .map_err(|unapproved| ErrorReply::new(ErrorKind::NotAuthorized, format!("{unapproved}; nothing ran")))?;
    let (purpose, submitter) = (spec.purpose.clone(), spec.submitter.clone());
    Ok(Provenance { signed_by, approved_by, purpose, submitter })
}

/// The answer to a start its approvals do not let run: the ticket's status if this very command
/// was claimed under it before (a copy of a start whose approvals were checked then, and have
/// expired since, or the rules changed: it is running or ran, and "nothing ran" would be false),
/// else the refusal. A store that does not answer is said as such: the dispatcher asks again.
async fn repeat_or<E: Environment>(env: &mut E, ticket: &Ticket, spec: &ScriptSpec, refused: ErrorReply) -> Reply {
    let keys = env.store().keys(&ticket.store_key());
    match env.store().read(&keys, 0).await {
        Ok(view) if view.record.as_ref().is_some_and(|(record, _)| record.digest == spec.digest()) => {
            Reply::ScriptStatus(crate::agent::status_from(ticket, 0, view))
        }
        Ok(_) => Reply::Error(refused),
        Err(error) => {
            Reply::Error(ErrorReply::new(ErrorKind::StoreUnavailable, format!("{error}; nothing was started")))
        }
    }
}

fn check_limits(settings: &Settings, spec: &ScriptSpec) -> Result<(), ErrorReply> {
    match settings.limits.resolve(&spec.limits) {
        Ok(_) => Ok(()),
        Err(refusal @ LimitRefusal::AboveCap { .. }) => {
            Err(ErrorReply::new(ErrorKind::NotAuthorized, format!("{refusal}; nothing ran")))
        }
        Err(refusal @ LimitRefusal::Unenforceable { .. }) => {
            Err(ErrorReply::new(ErrorKind::Unsupported, format!("{refusal}; nothing ran")))
        }
    }
}
