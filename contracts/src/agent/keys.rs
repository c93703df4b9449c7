//! The agent's side of trust (ARCHITECTURE.md, Trust) as the flow uses it: its own key, which seals every
//! answer and opens the secrets sealed to it, the dispatcher keys it trusts, which every command
//! must be signed by, and the sessions dispatchers agreed with it, in which commands and answers
//! carry a MAC instead ([`crate::trust::session`]). The decisions are [`crate::trust::verify`]'s and
//! [`crate::trust::session`]'s plain functions; this holds the keys and sessions. Loading the keys from
//! files and reloading the trusted ones are the agent's (`worker-agent`'s `trust` module).

use crate::entropy::Entropy;
use crate::receipt::{Receipt, SignedReceipt};
use crate::trust::approval::{check_approvals, Unapproved};
use crate::trust::files::TrustedKeys;
use crate::trust::keys::{KeyId, SecretKey};
use crate::trust::seal::SessionId;
use crate::trust::seal::{Seal, SealHeaderError};
use crate::trust::sealed;
use crate::trust::session::Session;
use crate::trust::sessions::{offered, Declined, SessionTable};
use crate::trust::verify::{check_command_header, check_command_seal, Identity, Origin, Refusal};
use crate::wire::approvals::RequiredApprovals;
use crate::wire::envelope::Envelope;
use crate::wire::envelope::KeyShare;
use crate::wire::error::{ErrorKind, ErrorReply};
use crate::wire::labels::Selectable;
use crate::wire::messages::{ScriptSpec, StartScriptV2};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

/// The agent's keys and sessions.
pub struct AgentKeys {
    /// Seals answers; `None` for a legacy (script v1) agent, which cannot sign.
    key: Option<SecretKey>,
    trusted: RwLock<Arc<TrustedKeys>>,
    allow_unsigned: bool,
    sessions: Mutex<Sessions>,
}

/// The sessions agreed, and where the agent's shares of new ones come from.
struct Sessions {
    table: SessionTable,
    entropy: Box<dyn Entropy>,
}

impl fmt::Debug for AgentKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKeys").field("key", &self.key).field("allow_unsigned", &self.allow_unsigned).finish()
    }
}

/// What became of the session a command offered ([`AgentKeys::accept_session`]).
#[derive(Debug)]
pub enum Acceptance {
    /// The command offered none this agent may accept (not signed, not to this agent itself,
    /// or the agent cannot sign).
    NotOffered,
    /// Agreed: the share the answer carries.
    Agreed { share: KeyShare, session: SessionId, dispatcher: KeyId },
    /// Offered, and declined: the command is handled as any other and answered signed.
    Declined { dispatcher: KeyId, declined: Declined },
}

impl AgentKeys {
    /// The agent's keys: `key` (none for a legacy agent), the dispatcher keys it trusts, whether
    /// it runs unsigned commands, and the source of its sessions' secrets.
    pub fn new(
        key: Option<SecretKey>,
        trusted: TrustedKeys,
        allow_unsigned: bool,
        entropy: Box<dyn Entropy>,
    ) -> AgentKeys {
        AgentKeys {
            key,
            trusted: RwLock::new(Arc::new(trusted)),
            allow_unsigned,
            sessions: Mutex::new(Sessions { table: SessionTable::default(), entropy }),
        }
    }

    /// Trusts `trusted` from the next command on (added keys trusted, removed ones revoked).
    pub fn replace_trusted(&self, trusted: TrustedKeys) {
        *self.trusted.write().expect("trusted keys poisoned") = Arc::new(trusted);
    }

    /// The checks every command passes before anything else: its seal (on the raw body), then,
    /// once decoded, its envelope ([`AgentKeys::check_header`]). Unsigned commands accepted only
    /// with `--insecure-allow-unsigned`, and then without the envelope checks (they are legacy
    /// dispatchers' commands, as before signing). A command MAC'd in a session comes with the
    /// session, which its answer is MAC'd in.
    pub fn check_seal(
        &self,
        seal: Result<Option<Seal>, SealHeaderError>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(Origin, Option<Session>), Refusal> {
        let trusted = self.trusted.read().expect("trusted keys poisoned").clone();
        let session = match &seal {
            Ok(Some(Seal::Mac { session, .. })) => {
                self.sessions.lock().expect("sessions poisoned").table.get(*session, now_ms)
            }
            _ => None,
        };
        let origin = check_command_seal(&trusted, self.allow_unsigned, seal, body, session.as_ref())?;
        Ok((origin, session))
    }

    /// [`check_command_header`] for a signed (or MAC'd) command.
    pub fn check_header(
        &self,
        origin: Origin,
        header: &Envelope<()>,
        me: Identity<'_>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        match origin {
            Origin::Key(_) | Origin::Session { .. } => check_command_header(header, me, now_ms),
            Origin::Unsigned => Ok(()),
        }
    }

    /// Accepts the session a command that passed every check offers, if it may
    /// ([`session::offered`], [`SessionTable::accept`]). `body` is the command as signed: a
    /// copy of an offer already accepted gets no session.
    pub fn accept_session(
        &self,
        origin: Origin,
        header: &Envelope<()>,
        body: &[u8],
        me: Identity<'_>,
        now_ms: u64,
    ) -> Acceptance {
        let Some(key) = self.key.as_ref() else { return Acceptance::NotOffered };
        let Some(offer) = offered(origin, header, body, me) else { return Acceptance::NotOffered };
        let dispatcher = offer.dispatcher;
        let mut sessions = self.sessions.lock().expect("sessions poisoned");
        let Sessions { table, entropy } = &mut *sessions;
        match table.accept(&offer, key.id(), now_ms, entropy.as_mut()) {
            Ok((share, session)) => Acceptance::Agreed { share, session, dispatcher },
            Err(declined) => Acceptance::Declined { dispatcher, declined },
        }
    }

    /// Seals an answer to the request with correlation id `request_id`: MAC'd in `session`, the
    /// session the request came in, else signed; `None` for a legacy agent.
    pub fn seal_answer(&self, session: Option<&Session>, request_id: &str, body: &[u8]) -> Option<Seal> {
        match session {
            Some(session) => Some(session.seal_answer(request_id, body)),
            None => self.key.as_ref().map(|key| key.seal_answer(request_id, body)),
        }
    }

    /// Whether this agent has a key: it signs its answers (each naming the request it answers),
    /// and opens secrets sealed to it. A legacy agent has none.
    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    /// Opens, in place, the secrets of `start` sealed to this agent's key ([`sealed::open_start`]).
    pub fn open_secrets(&self, start: &mut StartScriptV2) -> Result<(), ErrorReply> {
        match &self.key {
            Some(key) => sealed::open_start(start, key),
            None if start.spec.sealed_secret_env.is_empty() => Ok(()),
            None => Err(ErrorReply::new(ErrorKind::NotAuthorized, "this agent has no key to open sealed secrets with")),
        }
    }

    /// Seals a presence announcement; `None` for a legacy agent (which does not announce).
    pub fn seal_announcement(&self, body: &[u8]) -> Option<Seal> {
        self.key.as_ref().map(|key| key.seal_announcement(body))
    }

    /// The approval rules of the trusted-keys file in force on agent `me`, as its capabilities
    /// reply reports them.
    pub fn approvals_in_force(&self, me: Selectable<'_>) -> Vec<RequiredApprovals> {
        self.trusted.read().expect("trusted keys poisoned").approvers().in_force(me)
    }

    /// Whether `spec`, addressed to `target`, has the approvals the rules in force require
    /// ([`check_approvals`]); the keys whose approvals counted.
    pub fn check_approvals(
        &self,
        spec: &ScriptSpec,
        target: &str,
        me: Selectable<'_>,
        now_ms: u64,
    ) -> Result<Vec<KeyId>, Unapproved> {
        let trusted = self.trusted.read().expect("trusted keys poisoned").clone();
        check_approvals(trusted.approvers(), spec, target, me, now_ms)
    }

    /// Signs a run's receipt; `None` for a legacy agent, which has no key (and makes none).
    pub fn sign_receipt(&self, receipt: &Receipt) -> Option<SignedReceipt> {
        self.key.as_ref().map(|key| receipt.sign(key))
    }
}
