//! Tickets waiting for approvals (ARCHITECTURE.md, Approvals). A submission whose target's rules
//! (its capabilities report them) require approvals the command does not have is not sent: the
//! follower marks it `awaiting-approval` in the journal and lets it go; `dispatcher approve`
//! adds approvals to its record (one field per key, so a key approving twice counts once); every
//! resume pass follows it again, and the follower that finds the quorum reached sends the start
//! with the approvals in it. A ticket still short of its quorum after `--approval-wait` fails,
//! never sent. The agent checks the approvals again: the journal is not believed.

use super::journal::{Journal, JournalError, JournalResult, TicketRecord, APPROVAL_FIELD};
use super::resume::Followers;
use crate::error::RpcError;
use crate::orchestrator::Event;
use crate::route::Route;
use contracts::submission::negotiate::{AgentKind, NotSent};
use contracts::submission::outcome::Outcome;
use contracts::time::{short, unix_millis};
use contracts::wire::approvals::Approval;
use contracts::wire::error::{ErrorKind, ErrorReply};
use contracts::wire::messages::ScriptSpec;
use contracts::wire::ticket::Ticket;
use deadpool_redis::redis::{self, AsyncCommands};
use std::time::{Duration, SystemTime};

/// The state of a ticket waiting for approvals.
pub const AWAITING_APPROVAL: &str = "awaiting-approval";

// Marks a queued ticket as waiting; 1 the first time.
const AWAIT: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'awaiting_ms', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"#;

// Adds an approval to a ticket waiting for approvals: 1, or 0 if it waits no more.
const ADD: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= ARGV[1] and state ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"#;

/// What became of an approval given to [`Journal::add_approval`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    Added,
    /// The ticket is no longer waiting (sent, finished, or its record expired).
    NotWaiting,
}

impl Journal {
    /// Marks `ticket` as waiting for approvals (listed by [`Journal::awaiting`]); true the first
    /// time.
    pub async fn await_approval(&self, ticket: &Ticket, now_ms: u64) -> JournalResult<bool> {
        let mut con = self.connection().await?;
        let marked: i64 = redis::Script::new(AWAIT)
            .key(self.ticket_key(ticket))
            .key(self.key("awaiting"))
            .arg(AWAITING_APPROVAL)
            .arg(now_ms)
            .arg(ticket.store_key())
            .invoke_async(&mut con)
            .await?;
        Ok(marked == 1)
    }

    /// Adds `approval` to the record of `ticket`, if it is waiting (or not yet followed).
    pub async fn add_approval(&self, ticket: &Ticket, approval: &Approval) -> JournalResult<Added> {
        let mut con = self.connection().await?;
        let json = serde_json::to_string(approval).map_err(super::journal::Corrupt::Json)?;
        let added: i64 = redis::Script::new(ADD)
            .key(self.ticket_key(ticket))
            .arg(AWAITING_APPROVAL)
            .arg(format!("{APPROVAL_FIELD}{}", approval.key))
            .arg(json)
            .invoke_async(&mut con)
            .await?;
        Ok(if added == 1 { Added::Added } else { Added::NotWaiting })
    }

    /// The tickets waiting for approvals.
    pub async fn awaiting(&self) -> JournalResult<Vec<Ticket>> {
        let mut con = self.connection().await?;
        let members: Vec<String> = con.smembers(self.key("awaiting")).await?;
        Ok(members.iter().filter_map(|m| Ticket::parse(m).ok()).collect())
    }

    /// The records of the tickets waiting for approvals (at most `limit`), oldest first.
    pub async fn awaiting_records(&self, limit: usize) -> JournalResult<Vec<TicketRecord>> {
        let mut records = Vec::new();
        for ticket in self.awaiting().await? {
            match self.ticket(&ticket).await?.filter(|r| r.state == AWAITING_APPROVAL) {
                Some(record) => records.push(record),
                // Its record gone (expired, deleted by hand): it waits no more.
                None => self.stop_awaiting(&ticket).await?,
            }
        }
        records.sort_by_key(|r| r.awaiting_ms);
        records.truncate(limit);
        Ok(records)
    }

    /// `ticket` waits no more (its quorum is reached): it leaves the list.
    pub async fn stop_awaiting(&self, ticket: &Ticket) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let () = con.srem(self.key("awaiting"), ticket.store_key()).await?;
        Ok(())
    }
}

/// The command a ticket's approvals sign, as its agent will check them: the journaled script
/// with the approvals given so far, and its secrets' names (approved with it; their values only
/// the replica that took the submission holds, and are not approved).
pub fn approved_command(record: &TicketRecord) -> ScriptSpec {
    let mut spec = record.submission.spec.clone();
    spec.approvals = record.approvals.clone();
    for name in &record.submission.secret_names {
        spec.secret_env.insert(name.clone(), "-".into());
    }
    spec
}

impl Followers {
    /// Whether a ticket not started yet may be now: true if its target requires no approval it
    /// lacks (or, for a ticket not waiting yet, what the target is could not be learnt: the start
    /// reports that). Else it waits (marked so the first time, with a notice saying what it waits
    /// for; a waiting ticket whose target does not answer goes on waiting), or, past
    /// `--approval-wait`, cancelled by hand, or carrying secrets, it is finished, never sent.
    pub(super) async fn approved(
        &self,
        record: &TicketRecord,
        route: &Route,
        kind: Option<&AgentKind>,
        sink: &(dyn Fn(Event) + Sync + Send),
    ) -> Result<bool, JournalError> {
        let submission = &record.submission;
        let now_ms = unix_millis(SystemTime::now());
        let why = match kind {
            None if record.awaiting_ms.is_none() => return Ok(true),
            None => format!("{route} does not answer now, and its rules were not met when it last did"),
            Some(kind) => {
                let mut spec = approved_command(record);
                match kind.fit_approvals(&mut spec, &route.target(), now_ms) {
                    Err(NotSent::Unapproved(why)) => why.to_string(),
                    _ => {
                        if record.awaiting_ms.is_some() {
                            self.journal.stop_awaiting(&submission.ticket).await?;
                        }
                        return Ok(true);
                    }
                }
            }
        };
        let ticket = &submission.ticket;
        let waited = record.awaiting_ms.map(|since| Duration::from_millis(now_ms.saturating_sub(since)));
        let refused = if !submission.secret_names.is_empty() {
            Some(format!("{route} requires approvals, and a command waiting for approvals cannot carry secrets (the journal would hold them while it waits): submit it without secrets; nothing was sent ({why})"))
        } else if waited.is_some_and(|waited| waited > self.approval_wait) {
            Some(format!("not approved within --approval-wait {} ({why}); nothing was sent", short(self.approval_wait)))
        } else {
            None
        };
        if record.cancel_requested {
            self.record_outcome(&Outcome::not_sent(Some(ticket.clone()), route.name())).await?;
        } else if let Some(message) = refused {
            let error = RpcError::Agent {
                target: route.name().to_owned(),
                error: ErrorReply::new(ErrorKind::NotAuthorized, message.clone()),
            };
            let outcome = Outcome::from_error(Some(ticket.clone()), route.name(), &error, message, false);
            sink(Event::Notice(outcome.error.clone().unwrap_or_default()));
            self.record_outcome(&outcome).await?;
        } else if self.journal.await_approval(ticket, now_ms).await? {
            sink(Event::Notice(format!("awaiting approval: {why}; approve it with `dispatcher approve {ticket}`")));
        }
        Ok(false)
    }
}
