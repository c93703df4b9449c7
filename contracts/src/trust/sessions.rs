//! The sessions each side keeps (how one is agreed is [`super::session`]'s):
//!
//! - **Lifetime**: a dispatcher uses a session for [`SESSION_USE_MS`]; an agent keeps one for
//!   [`SESSION_IDLE_MS`] after its last use, at most [`MAX_SESSIONS_PER_KEY`] of them per
//!   dispatcher key ([`SessionTable`]: a key that offers too many evicts only its own), and only
//!   while the dispatcher key that offered it is trusted. An agent that does not hold a
//!   session refuses its commands `UnknownSession` (signed, nothing ran); the dispatcher forgets
//!   it and sends the command again, signed, with a new offer ([`SessionCache`]).
//! - **Replays**: an offer is accepted once. The agent remembers each offer it accepted (the
//!   digest of its signed command, by dispatcher key) for as long as a copy could pass the checks
//!   of trust (until its `not_after` and the clock skew allowance), and answers a copy signed,
//!   without a share: a captured offer replayed creates no session. At most
//!   [`MAX_OFFERS_PER_KEY`] are remembered per key; past that, the key's new offers are declined
//!   (its commands are only signed) until some expire.
//!
//! Plain data and functions: the time comes in as Unix milliseconds, an agent's fresh shares
//! from the [`Entropy`] it is given.

use super::keys::KeyId;
use super::seal::SessionId;
use super::session::{accept, Session, SessionError};
use super::verify::{Identity, Origin};
use crate::entropy::Entropy;
use crate::wire::envelope::{Envelope, KeyShare};
use crate::wire::topology::CLOCK_SKEW_ALLOWANCE_MS;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// How long a dispatcher uses a session before it offers a new one.
pub const SESSION_USE_MS: u64 = 10 * 60 * 1000;
/// How long an agent keeps a session after its last use: longer than a dispatcher uses one, so
/// that a session in use is not forgotten under it.
pub const SESSION_IDLE_MS: u64 = 30 * 60 * 1000;
/// Most sessions an agent holds per dispatcher key (a few hundred bytes each); past it, that
/// key's least recently used go, never another key's. The keys are the agent's trusted ones, so
/// the whole table is bounded by the operator's trusted-keys file.
pub const MAX_SESSIONS_PER_KEY: usize = 4096;
/// Most accepted offers an agent remembers per dispatcher key (about a hundred bytes each), each
/// until its command expires (24 h at most). Only offers signed by the key count, so only its
/// holder fills them: a dispatcher offers to an agent once per process and [`SESSION_USE_MS`].
pub const MAX_OFFERS_PER_KEY: usize = 4096;
/// How long a dispatcher waits for the answer to an offer before another command may offer.
pub const OFFER_WAIT_MS: u64 = 10_000;

/// Why an agent accepts no session from an offer it was sent ([`SessionTable::accept`]); the
/// command is handled all the same, and answered signed, without a share.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Declined {
    #[error("this offer was accepted before: the command is a copy replayed")]
    Replayed,
    #[error(
        "key {0} has {MAX_OFFERS_PER_KEY} offers accepted and not yet expired, the most remembered: no session until \
         some expire"
    )]
    TooManyOffers(KeyId),
    #[error(transparent)]
    Unusable(#[from] SessionError),
}

/// A session offer as an agent received it, in a signed command that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offered<'a> {
    /// The key that signed the command.
    pub dispatcher: KeyId,
    /// The dispatcher's share.
    pub share: &'a [u8],
    /// The command's message id (the salt of the session's key).
    pub request_id: &'a str,
    /// SHA-256 of the command's body, which its signature covers: every copy of one signed
    /// command has the same, whatever its AMQP properties say.
    digest: [u8; 32],
    /// Until when a copy of the command passes the checks (its `not_after` and the clock skew
    /// allowance, as [`crate::trust::verify::check_command_header`] counts them).
    replayable_until: u64,
}

/// Whether an agent accepts the session a command offers, and from whom: the command (whose
/// encoded envelope is `body`) was signed by a trusted key (not MAC'd, not unsigned), passed
/// every check (so it has a `not_after`), carries a share, and is addressed to this agent
/// itself, not to its pool (the pool's next command may reach another worker).
pub fn offered<'a>(origin: Origin, header: &'a Envelope<()>, body: &[u8], me: Identity<'_>) -> Option<Offered<'a>> {
    let Origin::Key(dispatcher) = origin else { return None };
    let share = header.key_share.as_ref()?;
    let not_after = header.not_after?;
    (header.target == me.agent_id).then(|| Offered {
        dispatcher,
        share: share.as_slice(),
        request_id: &header.message_id,
        digest: Sha256::digest(body).into(),
        replayable_until: not_after.saturating_add(CLOCK_SKEW_ALLOWANCE_MS),
    })
}

/// The agent's sessions: found by id, kept [`SESSION_IDLE_MS`] after their last use, at most
/// [`MAX_SESSIONS_PER_KEY`] per dispatcher key (that key's least recently used go first); and
/// the offers accepted, so that each is accepted once.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: HashMap<SessionId, (Session, u64)>,
    /// By dispatcher key: the digest of each offer accepted, with the time until which a copy of
    /// it could pass the checks (after that it is refused as expired, so it is forgotten).
    offers: HashMap<KeyId, HashMap<[u8; 32], u64>>,
}

impl SessionTable {
    /// Accepts the session of `offer` ([`offered`]) under the agent key `agent`, at `now_ms`,
    /// its secret drawn from `entropy`: the share the answer carries and the session's id.
    /// Declined if this offer was accepted before (a copy replayed), if its key has
    /// [`MAX_OFFERS_PER_KEY`] offers remembered, or if its share agrees no key.
    pub fn accept(
        &mut self,
        offer: &Offered<'_>,
        agent: KeyId,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> Result<(KeyShare, SessionId), Declined> {
        // Before anything that costs: a replay may come thousands of times a second.
        if self.offers.get(&offer.dispatcher).is_some_and(|accepted| accepted.contains_key(&offer.digest)) {
            return Err(Declined::Replayed);
        }
        // Only a new offer signed by a trusted key gets here, so this pass is as rare as they are.
        self.offers.retain(|_, accepted| {
            accepted.retain(|_, until| now_ms <= *until);
            !accepted.is_empty()
        });
        if self.offers.get(&offer.dispatcher).map_or(0, HashMap::len) >= MAX_OFFERS_PER_KEY {
            return Err(Declined::TooManyOffers(offer.dispatcher));
        }
        let (share, session) = accept(offer.request_id, offer.share, offer.dispatcher, agent, entropy)?;
        self.offers.entry(offer.dispatcher).or_default().insert(offer.digest, offer.replayable_until);
        let id = session.id();
        self.insert(session, now_ms);
        Ok((share, id))
    }

    fn insert(&mut self, session: Session, now_ms: u64) {
        self.sessions.retain(|_, (_, used)| now_ms.saturating_sub(*used) <= SESSION_IDLE_MS);
        let key = session.dispatcher;
        let of_key = || self.sessions.iter().filter(move |(_, (held, _))| held.dispatcher == key);
        if of_key().count() >= MAX_SESSIONS_PER_KEY {
            let oldest = of_key().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions.insert(session.id, (session, now_ms));
    }

    /// The session `id`, marked used now; `None` if it is not held or has been idle too long.
    pub fn get(&mut self, id: SessionId, now_ms: u64) -> Option<Session> {
        let (session, used) = self.sessions.get_mut(&id)?;
        if now_ms.saturating_sub(*used) > SESSION_IDLE_MS {
            self.sessions.remove(&id);
            return None;
        }
        *used = now_ms.max(*used);
        Some(session.clone())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// How the dispatcher seals its next command to an agent.
#[derive(Debug)]
pub enum Plan {
    /// Under this session.
    Mac(Session),
    /// Signed, offering a session.
    Offer,
    /// Signed only: an offer is waiting for its answer, or the agent does not take sessions.
    Sign,
}

#[derive(Debug)]
enum Entry {
    Established {
        session: Session,
        since: u64,
    },
    Offering {
        since: u64,
    },
    /// The agent answered an offer without a share (it predates sessions).
    Declined {
        since: u64,
    },
}

/// The dispatcher's sessions, one per agent id: what to do next with each agent (see [`Plan`]),
/// and what an answer to an offer or a refusal of a session changes. A pool (`pool:<name>`) never
/// gets one: its next request may reach another worker.
#[derive(Debug, Default)]
pub struct SessionCache {
    agents: HashMap<String, Entry>,
}

impl SessionCache {
    /// How to seal the next command to `agent`, whose answers are believed under `pinned`
    /// (a session agreed under a key no longer pinned is dropped). A `Plan::Offer` is noted as
    /// waiting: until its answer (or [`OFFER_WAIT_MS`]), other commands are only signed.
    pub fn plan(&mut self, agent: &str, pinned: &[KeyId], now_ms: u64) -> Plan {
        if agent.starts_with("pool:") {
            return Plan::Sign;
        }
        if let Some(session) = self.established(agent, pinned, now_ms) {
            return Plan::Mac(session);
        }
        let fresh = |since: u64, for_ms: u64| now_ms.saturating_sub(since) < for_ms;
        match self.agents.get(agent) {
            Some(Entry::Offering { since }) if fresh(*since, OFFER_WAIT_MS) => return Plan::Sign,
            Some(Entry::Declined { since }) if fresh(*since, SESSION_USE_MS) => return Plan::Sign,
            _ => {}
        }
        self.agents.insert(agent.to_owned(), Entry::Offering { since: now_ms });
        Plan::Offer
    }

    /// The session to use with `agent`, if one is agreed, young enough and under a key still in
    /// `pinned`; nothing changes (for a message that gets no answer, so offers nothing).
    pub fn established(&self, agent: &str, pinned: &[KeyId], now_ms: u64) -> Option<Session> {
        match self.agents.get(agent) {
            Some(Entry::Established { session, since })
                if now_ms.saturating_sub(*since) < SESSION_USE_MS && pinned.contains(&session.agent) =>
            {
                Some(session.clone())
            }
            _ => None,
        }
    }

    /// The agent's believed answer to an offer, as [`Offer::complete`] made it of the answer's
    /// share (`None`: the answer carried none). A session agreed is used from now on; a share
    /// that agrees none, or no share in an answer that is not a refusal (an agent that predates
    /// sessions), means no offer for a while; no share in a refusal, another offer next time.
    /// The error, if the share agreed none.
    pub fn offer_answered(
        &mut self,
        agent: &str,
        completed: Option<Result<Session, SessionError>>,
        refused: bool,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        match completed {
            Some(Ok(session)) => self.answered(agent, Some(session), now_ms),
            Some(Err(error)) => {
                self.answered(agent, None, now_ms);
                return Err(error);
            }
            None if refused => self.unanswered(agent),
            None => self.answered(agent, None, now_ms),
        }
        Ok(())
    }

    fn answered(&mut self, agent: &str, session: Option<Session>, now_ms: u64) {
        let entry = match session {
            Some(session) => Entry::Established { session, since: now_ms },
            None => Entry::Declined { since: now_ms },
        };
        self.agents.insert(agent.to_owned(), entry);
    }

    /// The offer got no answer that says anything of sessions (no reply, or a refusal): the next
    /// command may offer again.
    pub fn unanswered(&mut self, agent: &str) {
        if matches!(self.agents.get(agent), Some(Entry::Offering { .. })) {
            self.agents.remove(agent);
        }
    }

    /// The agent no longer holds `session` (it restarted or let it expire).
    pub fn forget(&mut self, agent: &str, session: SessionId) {
        if matches!(self.agents.get(agent), Some(Entry::Established { session: held, .. }) if held.id == session) {
            self.agents.remove(agent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::fresh;
    use crate::trust::session::tests::{agreed, ids};
    use crate::trust::session::Offer;
    use crate::wire::messages::Kind;
    use zeroize::Zeroizing;

    #[test]
    fn an_agent_accepts_offers_only_in_signed_commands_to_itself() {
        let (dispatcher, _) = ids();
        let me = Identity { agent_id: "web-01", pool: Some("workers") };
        let to_me = offering("web-01", Some(2));
        let body = b"the command";
        let accepted = offered(Origin::Key(dispatcher), &to_me, body, me).expect("an offer to me");
        assert_eq!((accepted.dispatcher, accepted.share), (dispatcher, to_me.key_share.as_deref().unwrap().as_slice()));
        assert_eq!(accepted.request_id, to_me.message_id);
        assert_eq!(accepted.replayable_until, 2 + CLOCK_SKEW_ALLOWANCE_MS, "as long as a copy passes the checks");
        assert_eq!(offered(Origin::Key(dispatcher), &offering("pool:workers", Some(2)), body, me), None, "a pool's");
        assert_eq!(offered(Origin::Unsigned, &to_me, body, me), None);
        let in_session = Origin::Session { key: dispatcher, session: SessionId([0; 16]) };
        assert_eq!(offered(in_session, &to_me, body, me), None, "a session is offered under a signature only");
        let plain = Envelope::new(Kind::GetCapabilities, "web-01", 1, Some(2), (), &mut fresh()).unwrap();
        assert_eq!(offered(Origin::Key(dispatcher), &plain, body, me), None);
        assert_eq!(offered(Origin::Key(dispatcher), &offering("web-01", None), body, me), None, "no deadline");
    }

    /// A command to `target` offering a session, valid until `not_after`.
    fn offering(target: &str, not_after: Option<u64>) -> Envelope<()> {
        let mut header = Envelope::new(Kind::GetCapabilities, target, 1, not_after, (), &mut fresh()).unwrap();
        header.key_share = Some(serde_bytes::ByteBuf::from(genuine_share().to_vec()));
        header
    }

    /// A share an agent agrees a session with (not of low order).
    fn genuine_share() -> KeyShare {
        *Offer::new(&mut fresh()).unwrap().share()
    }

    /// An offer by `dispatcher` in the command `body`, valid until `not_after`.
    fn offer_in<'a>(header: &'a Envelope<()>, body: &[u8], dispatcher: KeyId) -> Offered<'a> {
        let me = Identity { agent_id: &header.target, pool: None };
        offered(Origin::Key(dispatcher), header, body, me).expect("an offer")
    }

    #[test]
    fn an_offer_is_accepted_once_however_often_it_is_replayed() {
        let (dispatcher, agent) = ids();
        let mut table = SessionTable::default();
        let header = offering("web-01", Some(60_000));
        let offer = offer_in(&header, b"command 1", dispatcher);
        let (_, first) = table.accept(&offer, agent, 1_000, &mut fresh()).unwrap();
        for at in 1_001..1_100 {
            assert_eq!(table.accept(&offer, agent, at, &mut fresh()), Err(Declined::Replayed));
        }
        assert_eq!(table.len(), 1, "the replays created no session");
        assert!(table.get(first, 1_100).is_some());
        // Another signed command of the same dispatcher is another offer.
        let other = offer_in(&header, b"command 2", dispatcher);
        assert!(table.accept(&other, agent, 1_200, &mut fresh()).is_ok());
        // Remembered as long as a copy passes the checks, then forgotten (a copy is refused as
        // expired before it gets here).
        let until = 60_000 + CLOCK_SKEW_ALLOWANCE_MS;
        assert_eq!(table.accept(&offer, agent, until, &mut fresh()), Err(Declined::Replayed));
        let later = offer_in(&header, b"command 3", dispatcher);
        table.accept(&later, agent, until + 1, &mut fresh()).unwrap();
        assert_eq!(table.offers[&dispatcher].len(), 1, "the expired offers were forgotten");
    }

    #[test]
    fn remembered_offers_are_bounded_per_key_and_a_full_key_declines_only_its_own() {
        let (dispatcher, agent) = ids();
        let (other_key, _) = ids();
        let mut table = SessionTable::default();
        let header = offering("web-01", Some(60_000));
        for n in 0..MAX_OFFERS_PER_KEY {
            table.accept(&offer_in(&header, &n.to_be_bytes(), dispatcher), agent, 1_000, &mut fresh()).unwrap();
        }
        let one_more = offer_in(&header, b"one more", dispatcher);
        assert_eq!(table.accept(&one_more, agent, 1_001, &mut fresh()), Err(Declined::TooManyOffers(dispatcher)));
        assert!(
            table.accept(&offer_in(&header, b"one more", other_key), agent, 1_001, &mut fresh()).is_ok(),
            "another key's"
        );
        assert!(
            table.accept(&one_more, agent, 60_001 + CLOCK_SKEW_ALLOWANCE_MS, &mut fresh()).is_ok(),
            "once they expired"
        );
    }

    #[test]
    fn a_share_that_agrees_nothing_is_declined() {
        let (dispatcher, agent) = ids();
        let mut header = offering("web-01", Some(60_000));
        header.key_share = Some(serde_bytes::ByteBuf::from(vec![0; 32]));
        let mut table = SessionTable::default();
        let declined = table.accept(&offer_in(&header, b"c", dispatcher), agent, 1, &mut fresh());
        assert_eq!(declined, Err(Declined::Unusable(SessionError::BadShare)));
        assert!(table.is_empty());
    }

    /// A session of `dispatcher` made directly (agreeing thousands would only slow the tests).
    fn made(n: u64, dispatcher: KeyId, agent: KeyId) -> Session {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_be_bytes());
        id[8..].copy_from_slice(dispatcher.as_bytes());
        Session { id: SessionId(id), key: Zeroizing::new([0; 32]), dispatcher, agent }
    }

    #[test]
    fn an_agent_forgets_idle_sessions_and_keeps_at_most_the_bound_per_key() {
        let mut table = SessionTable::default();
        let (session, _) = agreed();
        table.insert(session.clone(), 1_000);
        assert!(table.get(session.id(), 1_000 + SESSION_IDLE_MS).is_some(), "used now: kept again");
        assert!(table.get(session.id(), 1_000 + 2 * SESSION_IDLE_MS + 1).is_none(), "idle too long");
        assert!(table.is_empty());
        let (dispatcher, agent) = ids();
        let (service, _) = ids();
        let services = made(0, service, agent);
        table.insert(services.clone(), 0);
        let first = made(0, dispatcher, agent);
        table.insert(first.clone(), 0);
        for at in 1..MAX_SESSIONS_PER_KEY as u64 + 5 {
            table.insert(made(at, dispatcher, agent), at);
        }
        assert_eq!(table.len(), MAX_SESSIONS_PER_KEY + 1);
        let now = MAX_SESSIONS_PER_KEY as u64 + 5;
        assert!(table.get(first.id(), now).is_none(), "the key's least recently used went first");
        assert!(table.get(services.id(), now).is_some(), "another key's, older still, stays");
    }

    #[test]
    fn a_dispatcher_offers_once_then_uses_the_session_until_it_is_old_or_refused() {
        let mut cache = SessionCache::default();
        let (session, _) = agreed();
        let pinned = [session.agent_key()];
        assert!(matches!(cache.plan("web-01", &pinned, 0), Plan::Offer));
        assert!(matches!(cache.plan("web-01", &pinned, 1), Plan::Sign), "one offer at a time");
        assert!(matches!(cache.plan("web-02", &pinned, 1), Plan::Offer), "per agent");
        assert!(matches!(cache.plan("pool:workers", &pinned, 1), Plan::Sign), "never to a pool");
        assert!(cache.established("web-01", &pinned, 1).is_none());
        cache.answered("web-01", Some(session.clone()), 2);
        assert_eq!(cache.established("web-01", &pinned, 3).map(|s| s.id()), Some(session.id()));
        assert!(cache.established("web-01", &[], 3).is_none());
        assert!(matches!(cache.plan("web-01", &pinned, 3), Plan::Mac(s) if s.id() == session.id()));
        assert!(matches!(cache.plan("web-01", &[], 3), Plan::Offer), "its agent key is no longer pinned");
        cache.answered("web-01", Some(session.clone()), 4);
        assert!(matches!(cache.plan("web-01", &pinned, 4 + SESSION_USE_MS), Plan::Offer), "used long enough");
        cache.answered("web-01", Some(session.clone()), 5);
        cache.forget("web-01", agreed().0.id());
        assert!(matches!(cache.plan("web-01", &pinned, 6), Plan::Mac(_)), "another session forgotten: not this one");
        cache.forget("web-01", session.id());
        assert!(matches!(cache.plan("web-01", &pinned, 7), Plan::Offer));
        assert!(matches!(cache.plan("web-01", &pinned, 7 + OFFER_WAIT_MS), Plan::Offer), "an unanswered offer");
        cache.unanswered("web-01");
        assert!(matches!(cache.plan("web-01", &pinned, 8 + OFFER_WAIT_MS), Plan::Offer));
        cache.offer_answered("web-01", None, false, 9).unwrap();
        assert!(matches!(cache.plan("web-01", &pinned, 10), Plan::Sign), "an agent that predates sessions");
        assert!(matches!(cache.plan("web-01", &pinned, 9 + SESSION_USE_MS), Plan::Offer), "asked again later");
        cache.offer_answered("web-01", None, true, 9 + SESSION_USE_MS).unwrap();
        assert!(matches!(cache.plan("web-01", &pinned, 10 + SESSION_USE_MS), Plan::Offer), "a refusal: offered again");
        let unusable = cache.offer_answered("web-01", Some(Err(SessionError::BadShare)), false, 11 + SESSION_USE_MS);
        assert_eq!(unusable, Err(SessionError::BadShare));
        assert!(matches!(cache.plan("web-01", &pinned, 12 + SESSION_USE_MS), Plan::Sign), "a share that agrees none");
    }
}
