//! The journal: what the service was asked to run and everything that happened to it, in Redis
//! (through a deadpool-redis pool), written before the action it records.
//!
//! # Keys (all under the journal's prefix, `cuttle:journal:` unless configured)
//! - `t:<ticket>`: a hash per ticket. `submission` (JSON, written once: target, script, digest,
//!   policy, who, when), then the fields that change: `state`, `issued_ms`/`not_after_ms` (the
//!   planned start), `last_seq` (the last log line recorded), `retries`, `cancel_requested`,
//!   `result` (JSON), `finished_ms`.
//! - `ev:<ticket>`: a stream of the ticket's events (`ticket`, `log`, `retry`, `notice`, `warning`,
//!   `result`), one [`JsonEvent`] in field `e` per entry, as `submit --json` prints them (the
//!   result without `output_truncated`). Server-sent events read it with `XREAD BLOCK`.
//! - `inflight`: the set of tickets not finished yet: what a (re)started replica resumes.
//! - `history`, `target:<name>`: sorted sets of tickets by submission time.
//! - `outcome:<outcome>`, `outcome:<outcome>:<target>`: sorted sets of finished tickets by
//!   submission time, added as each ticket finishes, so a filter by outcome reads only tickets that
//!   match (`outcome-index`: set once tickets finished before these indexes existed are in them).
//! - `lease:<ticket>`: which replica follows the ticket (see [`super::lease`]).
//! - `agents`: a hash of the last known capabilities or error of each target.
//! - `schedules`, `schedule:<id>`, `schedule:<id>:runs`, `schedule:<id>:requests`,
//!   `schedule:<id>:pending`, `slot:<id>:<slot>`, `replicas`: schedules, their slots and the
//!   replicas' passes (see [`super::schedules`]).
//! - a ticket's hash also gets `receipt`, its run's receipt as its agent signed it, and
//!   `receipts-offset` is where the service last read the receipts stream (see
//!   [`super::receipts`]).
//! - a ticket waiting for approvals has `state` `awaiting-approval`, `awaiting_ms`, one field
//!   `approval:<key id>` per approval given, and is in the set `awaiting` (see
//!   [`super::approvals`]).
//! - `session:<sha256 of the id>`: a browser's login (see [`super::sessions`]): the digest of the
//!   token it logged in with, expiring with the session. Neither the id nor the token is stored.
//!
//! A finished ticket's hash and stream expire after the history retention.

use super::agents::AgentSeen;
use super::submission::Submission;
use crate::event::JsonEvent;
use crate::orchestrator::Event;
use contracts::submission::outcome::{Outcome, OutcomeKind};
use contracts::submission::requests::PlannedStart;
use contracts::time::unix_millis;
use contracts::wire::status::LogLine;
use contracts::wire::ticket::Ticket;
use deadpool_redis::redis::{self, AsyncCommands, Script};
use deadpool_redis::Pool;
use edge::connect::store::PoolSettings;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "cuttle:journal:";

/// The key (without the prefix) set once every finished ticket is in its outcome's indexes.
const OUTCOME_INDEXED: &str = "outcome-index";

/// Connections in the pool: every live event stream holds one while it waits.
const POOL_SIZE: usize = 64;
/// Longest wait for an answer on the shared connection (its requests answer at once).
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the journal is unreachable: {0}")]
    Unreachable(#[from] redis::RedisError),
    /// No connection of the pool could be had.
    #[error("the journal is unreachable: {0}")]
    NoConnection(#[from] deadpool_redis::PoolError),
    #[error("the journal holds a record it cannot read: {0}")]
    Corrupt(#[from] Corrupt),
    #[error("invalid journal configuration: {0}")]
    Config(#[from] edge::connect::store::PoolError),
}

/// What in the journal cannot be read (or written).
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("event {id} has no body")]
    NoBody { id: String },
    #[error("event {id}: {source}")]
    Event { id: String, source: serde_json::Error },
    /// A submission's target is no agent id or pool name.
    #[error(transparent)]
    Route(#[from] contracts::wire::topology::NameError),
    /// The record of the schedule listed as `name`.
    #[error("schedule {name}: {source}")]
    Schedule { name: String, source: serde_json::Error },
    /// A schedule's record listed under another name or id than its own: moved in the journal.
    #[error("schedule {name}: its record is of schedule {record_name} ({record_id}), not of id {id}")]
    ScheduleMoved { name: String, id: String, record_name: String, record_id: String },
    /// The record of a schedule's slot.
    #[error("slot {slot}: {source}")]
    Slot { slot: String, source: serde_json::Error },
}

pub type JournalResult<T> = Result<T, JournalError>;

/// How a ticket ended, as the journal keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub outcome: OutcomeKind,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The exit code `dispatcher submit` would have exited with.
    #[serde(default)]
    pub process_exit: u8,
}

/// A ticket as the journal knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketRecord {
    pub submission: Submission,
    /// `queued` (recorded, not started), `running`, `finished`.
    pub state: String,
    pub planned: Option<PlannedStart>,
    pub last_seq: u64,
    pub retries: u64,
    pub cancel_requested: bool,
    pub finished: Option<Finished>,
    pub finished_ms: Option<u64>,
    /// The run's receipt as its agent signed it, once the service kept it ([`super::receipts`]).
    pub receipt: Option<String>,
    /// Approvals given to it, and since when it waits for them ([`super::approvals`]).
    pub approvals: Vec<contracts::wire::approvals::Approval>,
    pub awaiting_ms: Option<u64>,
}

/// What [`Journal::submit`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The ticket was recorded before, with this submission.
    Earlier(Box<Submission>),
}

/// One entry of a ticket's event stream.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEvent {
    /// The stream entry id (`<ms>-<n>`), for `Last-Event-ID`.
    pub id: String,
    pub event: JsonEvent,
}

/// Filters of a history query.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub target: Option<String>,
    pub outcome: Option<OutcomeKind>,
    pub since_ms: Option<u64>,
    pub limit: usize,
}

// Records a submission unless its ticket is known, atomically; gives the earlier submission. The
// first submission of a journal marks it as having its outcome indexes from the start.
const SUBMIT: &str = r#"
local earlier = redis.call('HGET', KEYS[1], 'submission')
if earlier then return earlier end
if redis.call('ZCARD', KEYS[4]) == 0 then redis.call('SET', KEYS[6], 1, 'NX') end
redis.call('HSET', KEYS[1], 'submission', ARGV[1], 'state', 'queued')
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
return false
"#;

// Appends a log line only if it is the next one: a repeated or resumed follower can never record
// a line twice or leave a gap.
const APPEND_LOG: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0')
if tonumber(ARGV[1]) ~= last + 1 then return 0 end
redis.call('HSET', KEYS[1], 'last_seq', ARGV[1])
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return 1
"#;

// Records the end once: the first follower to finish wins; the ticket leaves the in-flight set,
// enters its outcome's indexes (scored by submission time, as in the history), its records expire
// after the retention, and its target's and outcome's indexes drop tickets past it.
const FINISH: &str = r#"
if redis.call('HGET', KEYS[1], 'state') == 'finished' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'finished', 'result', ARGV[1], 'finished_ms', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SREM', KEYS[8], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local submitted = redis.call('ZSCORE', KEYS[5], ARGV[4]) or ARGV[2]
redis.call('ZADD', KEYS[6], submitted, ARGV[4])
redis.call('ZADD', KEYS[7], submitted, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[6])
return 1
"#;

/// How an approval's field in a ticket's hash begins; the key id follows ([`super::approvals`]).
pub(super) const APPROVAL_FIELD: &str = "approval:";

/// The journal in Redis.
#[derive(Clone)]
pub struct Journal {
    /// For requests answered at once: one connection, shared.
    link: std::sync::Arc<edge::connect::store::SharedLink>,
    /// For `XREAD BLOCK`, which holds its connection while it waits.
    pool: Pool,
    prefix: String,
    retention: Duration,
    submit: Script,
    append_log: Script,
    finish: Script,
}

impl Journal {
    /// A journal at `url` under `prefix`, keeping finished tickets for `retention`. Connects
    /// lazily; [`Journal::ping`] checks that it answers.
    pub fn open(url: &str, prefix: &str, retention: Duration) -> JournalResult<Journal> {
        let settings = PoolSettings {
            max_size: POOL_SIZE,
            wait_timeout: Duration::from_secs(10),
            create_timeout: Duration::from_secs(5),
            // XREAD BLOCK holds a reply for seconds: the default half-second response timeout is too short.
            response_timeout: Duration::from_secs(30),
        };
        let link =
            edge::connect::store::SharedLink::new(url, PoolSettings { response_timeout: LINK_TIMEOUT, ..settings })?;
        let pool = edge::connect::store::pool(url, settings)?;
        Ok(Journal {
            link: std::sync::Arc::new(link),
            pool,
            prefix: prefix.to_owned(),
            retention,
            submit: Script::new(SUBMIT),
            append_log: Script::new(APPEND_LOG),
            finish: Script::new(FINISH),
        })
    }

    /// How long finished tickets are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn key(&self, what: &str) -> String {
        format!("{}{what}", self.prefix)
    }

    pub(crate) fn ticket_key(&self, ticket: &Ticket) -> String {
        self.key(&format!("t:{}", ticket.store_key()))
    }

    fn events_key(&self, ticket: &Ticket) -> String {
        self.key(&format!("ev:{}", ticket.store_key()))
    }

    /// The shared connection, for requests answered at once (every request but `XREAD BLOCK`).
    pub(crate) async fn connection(&self) -> JournalResult<redis::aio::ConnectionManager> {
        Ok(self.link.get().await?)
    }

    /// A connection of its own, from the pool, for [`Journal::wait_events`].
    pub(crate) async fn blocking_connection(&self) -> JournalResult<deadpool_redis::Connection> {
        Ok(self.pool.get().await?)
    }

    /// Whether the journal answers.
    pub async fn ping(&self) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut con).await?;
        Ok(())
    }

    /// Records a submission, before anything is sent: the ticket becomes in flight, so a replica
    /// that finds no lease on it takes it up. A ticket already recorded is left as it is, and the
    /// digest of its script given back (a repeated request with the same idempotency key).
    pub async fn submit(&self, submission: &Submission) -> JournalResult<Recorded> {
        let ticket = &submission.ticket;
        let body = serde_json::to_string(submission).map_err(Corrupt::Json)?;
        let event = JsonEvent::Ticket { ticket: ticket.clone(), target: submission.target.clone() }.to_line();
        let mut con = self.connection().await?;
        let existing: Option<String> = self
            .submit
            .key(self.ticket_key(ticket))
            .key(self.events_key(ticket))
            .key(self.key("inflight"))
            .key(self.key("history"))
            .key(self.key(&format!("target:{}", submission.target)))
            .key(self.key(OUTCOME_INDEXED))
            .arg(body)
            .arg(event)
            .arg(ticket.store_key())
            .arg(submission.submitted_ms)
            .invoke_async(&mut con)
            .await?;
        Ok(match existing {
            None => Recorded::New,
            Some(raw) => {
                let earlier: Submission = serde_json::from_str(&raw).map_err(Corrupt::Json)?;
                Recorded::Earlier(Box::new(earlier))
            }
        })
    }

    /// Records the planned start (ticket, deadline), before the start is sent.
    pub async fn start(&self, plan: &PlannedStart) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: () = con
            .hset_multiple(
                self.ticket_key(&plan.ticket),
                &[
                    ("state", "running".to_owned()),
                    ("issued_ms", unix_millis(plan.issued_at).to_string()),
                    ("not_after_ms", unix_millis(plan.not_after).to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Records a log line if it is the next one; gives whether it was new.
    pub async fn log(&self, ticket: &Ticket, line: &LogLine) -> JournalResult<bool> {
        let event = JsonEvent::log(line);
        let mut con = self.connection().await?;
        let added: i64 = self
            .append_log
            .key(self.ticket_key(ticket))
            .key(self.events_key(ticket))
            .arg(line.seq)
            .arg(event.to_line())
            .invoke_async(&mut con)
            .await?;
        Ok(added == 1)
    }

    /// Records any other event of a submission (retries are also counted).
    pub async fn event(&self, ticket: &Ticket, event: &Event) -> JournalResult<()> {
        let retry = match event {
            Event::Log(line) => {
                self.log(ticket, line).await?;
                return Ok(());
            }
            // Recorded with the submission.
            Event::Ticket { .. } => return Ok(()),
            Event::Retry { .. } => true,
            Event::Notice(_) | Event::Warning(_) => false,
        };
        let line = JsonEvent::from_event(event).to_line();
        let mut con = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic().xadd(self.events_key(ticket), "*", &[("e", line)]).ignore();
        if retry {
            pipe.hincr(self.ticket_key(ticket), "retries", 1).ignore();
        }
        pipe.query_async::<()>(&mut con).await?;
        Ok(())
    }

    /// Records how a ticket ended, before the agent is told to clean up. Gives false if it was
    /// already recorded (by another replica).
    pub async fn finish(&self, outcome: &Outcome) -> JournalResult<bool> {
        let ticket = outcome.ticket.as_ref().expect("a journaled outcome has its ticket");
        let finished = Finished {
            outcome: outcome.outcome,
            exit_code: outcome.exit_code,
            error: outcome.error.clone(),
            process_exit: outcome.process_exit,
        };
        let event = JsonEvent::result(outcome, None);
        let mut con = self.connection().await?;
        let recorded: i64 = self
            .finish
            .key(self.ticket_key(ticket))
            .key(self.events_key(ticket))
            .key(self.key("inflight"))
            .key(self.key(&format!("target:{}", outcome.target)))
            .key(self.key("history"))
            .key(self.key(&outcome_index(outcome.outcome, None)))
            .key(self.key(&outcome_index(outcome.outcome, Some(&outcome.target))))
            .key(self.key("awaiting"))
            .arg(serde_json::to_string(&finished).map_err(Corrupt::Json)?)
            .arg(unix_millis(SystemTime::now()))
            .arg(event.to_line())
            .arg(ticket.store_key())
            .arg(self.retention.as_millis() as u64)
            .arg(self.retention_cutoff_ms())
            .invoke_async(&mut con)
            .await?;
        Ok(recorded == 1)
    }

    /// Asks whoever follows the ticket to cancel it. Gives the record as it was, or `None` for an
    /// unknown ticket.
    pub async fn request_cancel(&self, ticket: &Ticket) -> JournalResult<Option<TicketRecord>> {
        let Some(record) = self.ticket(ticket).await? else { return Ok(None) };
        if record.finished.is_none() {
            let mut con = self.connection().await?;
            let _: () = con.hset(self.ticket_key(ticket), "cancel_requested", 1).await?;
        }
        Ok(Some(record))
    }

    /// Whether a cancel was asked for.
    pub async fn cancel_requested(&self, ticket: &Ticket) -> JournalResult<bool> {
        let mut con = self.connection().await?;
        let flag: Option<String> = con.hget(self.ticket_key(ticket), "cancel_requested").await?;
        Ok(flag.as_deref() == Some("1"))
    }

    /// A ticket's record, or `None` if the journal does not know it (or no longer).
    pub async fn ticket(&self, ticket: &Ticket) -> JournalResult<Option<TicketRecord>> {
        let mut con = self.connection().await?;
        let fields: HashMap<String, String> = con.hgetall(self.ticket_key(ticket)).await?;
        record_from(fields)
    }

    /// A ticket's events after stream entry `after` (`0` for all), at most `count`.
    pub async fn events(&self, ticket: &Ticket, after: &str, count: usize) -> JournalResult<Vec<JournalEvent>> {
        let mut con = self.connection().await?;
        let start = if after == "0" { "-".to_owned() } else { format!("({after}") };
        let reply: redis::streams::StreamRangeReply =
            con.xrange_count(self.events_key(ticket), start, "+", count).await?;
        reply.ids.into_iter().map(journal_event).collect()
    }

    /// All of a ticket's events, read a page at a time.
    pub async fn all_events(&self, ticket: &Ticket) -> JournalResult<Vec<JournalEvent>> {
        let mut events = Vec::new();
        loop {
            let from = events.last().map_or("0", |e: &JournalEvent| e.id.as_str()).to_owned();
            let page = self.events(ticket, &from, 1000).await?;
            if page.is_empty() {
                return Ok(events);
            }
            events.extend(page);
        }
    }

    /// Waits up to `block` for events after `after` on a connection of its own.
    pub async fn wait_events(
        &self,
        con: &mut deadpool_redis::Connection,
        ticket: &Ticket,
        after: &str,
        block: Duration,
    ) -> JournalResult<Vec<JournalEvent>> {
        let options = redis::streams::StreamReadOptions::default().block(block.as_millis() as usize).count(500);
        let reply: Option<redis::streams::StreamReadReply> =
            con.xread_options(&[self.events_key(ticket)], &[after], &options).await?;
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        entries.map(journal_event).collect()
    }

    /// Opens a browser session: `key` (the digest of its id) names the digest of the token it
    /// logged in with, until `lifetime` has passed.
    pub async fn open_session(&self, key: &str, token_digest: &str, lifetime: Duration) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: () = redis::cmd("SET")
            .arg(self.key(&format!("session:{key}")))
            .arg(token_digest)
            .arg("PX")
            .arg(lifetime.as_millis() as u64)
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    /// The token digest of an open session.
    pub async fn session(&self, key: &str) -> JournalResult<Option<String>> {
        let mut con = self.connection().await?;
        Ok(con.get(self.key(&format!("session:{key}"))).await?)
    }

    /// Ends a session (a logout), for every replica.
    pub async fn close_session(&self, key: &str) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: () = con.del(self.key(&format!("session:{key}"))).await?;
        Ok(())
    }

    /// Drops a ticket whose record is gone (expired or deleted) from the in-flight set.
    pub async fn forget_in_flight(&self, ticket: &Ticket) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: () = con.srem(self.key("inflight"), ticket.store_key()).await?;
        Ok(())
    }

    /// Tickets not finished yet.
    pub async fn in_flight(&self) -> JournalResult<Vec<Ticket>> {
        let mut con = self.connection().await?;
        let members: Vec<String> = con.smembers(self.key("inflight")).await?;
        Ok(members.iter().filter_map(|m| Ticket::parse(m).ok()).collect())
    }

    /// Tickets newest first, filtered. Tickets past the retention are dropped from the indexes.
    pub async fn history(&self, query: &HistoryQuery) -> JournalResult<Vec<TicketRecord>> {
        const PAGE: isize = 200;
        if query.outcome.is_some() {
            self.index_earlier_outcomes().await?;
        }
        let index = self.key(&history_index(query));
        let min = query.since_ms.map_or("-inf".to_owned(), |ms| ms.to_string());
        let mut con = self.connection().await?;
        let mut found = Vec::new();
        let mut offset = 0;
        while found.len() < query.limit {
            let tickets: Vec<String> = con.zrevrangebyscore_limit(&index, "+inf", &min, offset, PAGE).await?;
            if tickets.is_empty() {
                break;
            }
            offset += tickets.len() as isize;
            let mut pipe = redis::pipe();
            for ticket in &tickets {
                pipe.hgetall(self.key(&format!("t:{ticket}")));
            }
            let records: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
            let mut expired = Vec::new();
            for (ticket, fields) in tickets.iter().zip(records) {
                match record_from(fields)? {
                    None => expired.push(ticket.clone()),
                    Some(r) if query.outcome.is_some_and(|o| r.finished.as_ref().map(|f| f.outcome) != Some(o)) => {}
                    Some(r) if found.len() < query.limit => found.push(r),
                    Some(_) => {}
                }
            }
            if !expired.is_empty() {
                let _: () = con.zrem(&index, &expired).await?;
                offset -= expired.len() as isize;
            }
        }
        Ok(found)
    }

    /// Puts tickets that finished before the outcome indexes existed into them, once per journal
    /// (a journal written by an older version): a filter by outcome then finds them too.
    async fn index_earlier_outcomes(&self) -> JournalResult<()> {
        const PAGE: isize = 1000;
        let marker = self.key(OUTCOME_INDEXED);
        let mut con = self.connection().await?;
        if con.exists(&marker).await? {
            return Ok(());
        }
        let mut offset = 0;
        loop {
            let tickets: Vec<(String, u64)> =
                con.zrange_withscores(self.key("history"), offset, offset + PAGE - 1).await?;
            if tickets.is_empty() {
                break;
            }
            offset += tickets.len() as isize;
            let mut reads = redis::pipe();
            for (ticket, _) in &tickets {
                reads.cmd("HMGET").arg(self.key(&format!("t:{ticket}"))).arg("submission").arg("result");
            }
            let fields: Vec<(Option<String>, Option<String>)> = reads.query_async(&mut con).await?;
            let mut writes = redis::pipe();
            for ((ticket, submitted), fields) in tickets.iter().zip(fields) {
                let (Some(submission), Some(result)) = fields else { continue };
                let corrupt = Corrupt::Json;
                let target = serde_json::from_str::<Submission>(&submission).map_err(corrupt)?.target;
                let outcome = serde_json::from_str::<Finished>(&result).map_err(corrupt)?.outcome;
                for index in [outcome_index(outcome, None), outcome_index(outcome, Some(&target))] {
                    writes.zadd(self.key(&index), ticket, submitted).ignore();
                }
            }
            writes.query_async::<()>(&mut con).await?;
        }
        let _: () = con.set(&marker, 1).await?;
        Ok(())
    }

    /// Drops tickets submitted before the retention from the history index.
    pub async fn trim_history(&self) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: () = con.zrembyscore(self.key("history"), "-inf", self.retention_cutoff_ms()).await?;
        Ok(())
    }

    /// Tickets submitted before this (unix ms) are past the retention.
    fn retention_cutoff_ms(&self) -> u64 {
        unix_millis(SystemTime::now()).saturating_sub(self.retention.as_millis() as u64)
    }

    /// Records what a target last answered to capabilities (or why it did not).
    pub async fn agent_seen(&self, seen: &AgentSeen) -> JournalResult<()> {
        let mut con = self.connection().await?;
        let _: () = con.hset(self.key("agents"), &seen.target, seen.to_json()).await?;
        Ok(())
    }

    /// Every target's last known capabilities, by name, as stored ([`AgentSeen`]'s JSON).
    pub async fn agents(&self) -> JournalResult<Vec<serde_json::Value>> {
        let mut con = self.connection().await?;
        let all: HashMap<String, String> = con.hgetall(self.key("agents")).await?;
        let mut agents: Vec<serde_json::Value> = all.values().filter_map(|v| serde_json::from_str(v).ok()).collect();
        agents.sort_by(|a, b| a["target"].as_str().cmp(&b["target"].as_str()));
        Ok(agents)
    }
}

/// The index (without the prefix) of a finished ticket's outcome, of all targets or of one.
fn outcome_index(outcome: OutcomeKind, target: Option<&str>) -> String {
    match target {
        Some(target) => format!("outcome:{}:{target}", outcome.name()),
        None => format!("outcome:{}", outcome.name()),
    }
}

/// The index (without the prefix) a history query reads: the smallest that holds every ticket
/// it can match, newest first.
fn history_index(query: &HistoryQuery) -> String {
    match (query.outcome, &query.target) {
        (Some(outcome), target) => outcome_index(outcome, target.as_deref()),
        (None, Some(target)) => format!("target:{target}"),
        (None, None) => "history".to_owned(),
    }
}

fn journal_event(entry: redis::streams::StreamId) -> JournalResult<JournalEvent> {
    let raw: String = entry.get("e").ok_or_else(|| Corrupt::NoBody { id: entry.id.clone() })?;
    let event = JsonEvent::parse(&raw).map_err(|source| Corrupt::Event { id: entry.id.clone(), source })?;
    Ok(JournalEvent { id: entry.id, event })
}

fn millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A record from a ticket hash's fields (`None` for an empty hash: unknown or expired).
fn record_from(mut fields: HashMap<String, String>) -> JournalResult<Option<TicketRecord>> {
    let Some(submission) = fields.remove("submission") else { return Ok(None) };
    let corrupt = Corrupt::Json;
    let submission: Submission = serde_json::from_str(&submission).map_err(corrupt)?;
    let number = |fields: &HashMap<String, String>, name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let planned = match (number(&fields, "issued_ms"), number(&fields, "not_after_ms")) {
        (Some(issued), Some(not_after)) => Some(PlannedStart {
            ticket: submission.ticket.clone(),
            issued_at: millis(issued),
            not_after: millis(not_after),
        }),
        _ => None,
    };
    let finished = match fields.get("result") {
        Some(raw) => Some(serde_json::from_str(raw).map_err(corrupt)?),
        None => None,
    };
    Ok(Some(TicketRecord {
        state: fields.get("state").cloned().unwrap_or_else(|| "queued".into()),
        planned,
        last_seq: number(&fields, "last_seq").unwrap_or(0),
        retries: number(&fields, "retries").unwrap_or(0),
        cancel_requested: fields.get("cancel_requested").map(String::as_str) == Some("1"),
        finished_ms: number(&fields, "finished_ms"),
        receipt: fields.remove("receipt"),
        // One field per key; one that does not read as an approval is the agent's to refuse.
        approvals: (fields.iter().filter(|(name, _)| name.starts_with(APPROVAL_FIELD)))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .filter_map(|value| serde_json::from_str(value).ok())
            .collect(),
        awaiting_ms: number(&fields, "awaiting_ms"),
        finished,
        submission,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_query_reads_the_smallest_index_that_holds_its_matches() {
        let query = |target: Option<&str>, outcome| HistoryQuery {
            target: target.map(str::to_owned),
            outcome,
            since_ms: None,
            limit: 50,
        };
        assert_eq!(history_index(&query(None, None)), "history");
        assert_eq!(history_index(&query(Some("web-01"), None)), "target:web-01");
        assert_eq!(history_index(&query(None, Some(OutcomeKind::Failed))), "outcome:failed");
        assert_eq!(history_index(&query(Some("web-01"), Some(OutcomeKind::Unknown))), "outcome:unknown:web-01");
        assert_eq!(
            outcome_index(OutcomeKind::Cancelled, Some("pool-a")),
            history_index(&query(Some("pool-a"), Some(OutcomeKind::Cancelled)))
        );
    }
}
