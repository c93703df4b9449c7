//! Schedules in the journal ([`crate::schedule`]): the records `add` writes, the slots replicas
//! fire, and the replicas' passes.
//!
//! # Keys (under the journal's prefix)
//! - `schedules`: a hash of schedule names to their ids.
//! - `schedule:<id>`: a hash: `name`, `record` (the [`ScheduleSpec`] as JSON, exactly as signed),
//!   `key` and `sig` (its signature: [`contracts::trust::check_schedule`]), `paused`, and
//!   `cursor_ms`, the last cron slot handled (run or skipped): no slot at or before it runs again.
//! - `schedule:<id>:runs`: the last [`RUNS_KEPT`] runs, newest first ([`RunRecord`], JSON).
//! - `schedule:<id>:requests`: run-now requests not yet fired ([`RunRequest`], JSON).
//! - `schedule:<id>:pending`: slots recorded whose tickets may not all be submitted yet.
//! - `slot:<id>:<slot>`: the record of one slot ([`RunRecord`]), set once (`SET NX`) for the
//!   history retention: the one thing that makes a slot run once.
//! - `replicas`: a sorted set of `<key id> <replica>` by the time of its last mark (each running
//!   replica marks the journal every second).
//!
//! # Why a slot runs once
//! A slot is fired by recording it ([`Schedules::fire`], one Lua script): only if the schedule
//! still exists, is not paused (for a cron slot), its cursor is before the slot, and no record of
//! the slot exists; the record names the slot's tickets, made from the schedule's id, the slot
//! and the target ([`crate::plan::Tickets::Slot`]). Whoever records it submits the tickets
//! ([`super::journal::Journal::submit`], which records a ticket once), and a slot whose replica
//! died between the two is finished by another from its record ([`Schedules::pending`]): the
//! same tickets, so at most once each, and the agent runs a ticket at most once whoever sends it.

use super::journal::{Corrupt, Journal, JournalError, JournalResult};
use crate::schedule::{ScheduleSpec, Slot, SlotKind};
use contracts::trust::seal::{Seal, SealHeaderError, SealHeaders};
use deadpool_redis::redis::{self, AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Runs kept per schedule, for `list` and the web view.
pub(crate) const RUNS_KEPT: usize = 20;

/// How long a replica's mark counts as it running (`schedule add` warns when none is that fresh).
pub(crate) const RUNNING_WITHIN: Duration = Duration::from_secs(30);

/// How long replicas' marks are remembered.
const REPLICAS_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Slot records live at least this long, whatever the history retention.
const SLOTS_KEPT_AT_LEAST: Duration = Duration::from_secs(24 * 3600);

/// One target of a run, as its record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunTarget {
    /// `agent` or `pool`.
    pub route: String,
    pub name: String,
}

/// One slot of a schedule, as recorded when it fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    /// The slot's identity ([`Slot::id`]).
    pub slot: String,
    pub kind: SlotKind,
    /// The slot's time, unix ms.
    pub at_ms: u64,
    /// When it was recorded, unix ms.
    pub fired_ms: u64,
    pub targets: Vec<RunTarget>,
    /// A ticket per target, in the same order.
    pub tickets: Vec<String>,
    /// Why nothing (or less) runs: no live agent matched, the policy could not be resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The replica that fired it.
    pub replica: String,
}

impl RunRecord {
    /// The slot it records.
    pub(crate) fn slot(&self) -> Slot {
        Slot { id: self.slot.clone(), at_ms: self.at_ms, kind: self.kind }
    }
}

/// A run-now asked for and not yet fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunRequest {
    /// Its own id (a UUID): the slot's identity is `now-<id>`.
    pub id: String,
    pub at_ms: u64,
    pub who: String,
}

impl RunRequest {
    pub(crate) fn new(who: &str, at_ms: u64) -> RunRequest {
        RunRequest { id: uuid::Uuid::new_v4().to_string(), at_ms, who: who.to_owned() }
    }

    pub(crate) fn slot(&self) -> Slot {
        Slot::run_now(&self.id, self.at_ms)
    }
}

/// A schedule as the journal holds it.
#[derive(Clone, Debug)]
pub(crate) struct StoredSchedule {
    /// Read from [`StoredSchedule::record`].
    pub spec: ScheduleSpec,
    /// The record exactly as it was signed.
    pub record: String,
    /// Its signature, or why it cannot be read.
    pub seal: Result<Option<Seal>, SealHeaderError>,
    pub paused: bool,
    pub cursor_ms: u64,
    pub runs: Vec<RunRecord>,
    /// Run-now requests not yet fired, as stored (to remove each once fired).
    pub requests: Vec<String>,
    /// Slots recorded whose tickets may not all be submitted yet.
    pub pending: Vec<String>,
}

impl StoredSchedule {
    /// The id of the key that signed it, if it is signed.
    pub(crate) fn signer(&self) -> Option<String> {
        self.seal.as_ref().ok()?.as_ref()?.signer().map(|key| key.to_string())
    }
}

/// What [`Schedules::fire`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fire {
    /// Recorded now: the caller submits its tickets.
    New,
    /// Recorded before (another replica, or an earlier pass), or a cron slot at or before the
    /// cursor.
    Earlier,
    /// The schedule was removed.
    Gone,
    /// The schedule is paused (cron slots only).
    Paused,
}

/// A replica's last mark in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaSeen {
    pub replica: String,
    /// The id of the key it signs with (and checks schedules against).
    pub key: String,
    pub at_ms: u64,
}

// Adds a schedule unless one of that name exists; gives the existing one's id.
const ADD: &str = r#"
local earlier = redis.call('HGET', KEYS[1], ARGV[1])
if earlier then return earlier end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'name', ARGV[1], 'record', ARGV[3], 'key', ARGV[4], 'sig', ARGV[5], 'paused', '0', 'cursor_ms', ARGV[6])
return false
"#;

// Removes the schedule of a name if it still has this id.
const REMOVE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 1
"#;

// Pauses (ARGV[3] = 1) or resumes (0) the schedule of a name if it still has this id. A resumed
// schedule's cursor moves to now (ARGV[4]): slots that came while it was paused never run.
const PAUSE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 'paused', ARGV[3])
if ARGV[3] == '0' then
  local cursor = tonumber(redis.call('HGET', KEYS[2], 'cursor_ms') or '0')
  if tonumber(ARGV[4]) > cursor then redis.call('HSET', KEYS[2], 'cursor_ms', ARGV[4]) end
end
return 1
"#;

// Queues a run-now request for the schedule of a name if it still has this id.
const REQUEST: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"#;

// Records a slot once (see the module's documentation): the schedule exists; a cron slot
// (ARGV[1] = 'cron') only while not paused and after the cursor, which moves to it; the slot's
// record is set if none exists, added to the runs (the last ARGV[5]) and to the pending slots.
const FIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local cron = ARGV[1] == 'cron'
if cron then
  if redis.call('HGET', KEYS[1], 'paused') == '1' then return 'paused' end
  local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor_ms') or '0')
  if tonumber(ARGV[2]) <= cursor then return 'earlier' end
end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return 'earlier' end
if cron then redis.call('HSET', KEYS[1], 'cursor_ms', ARGV[2]) end
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('SADD', KEYS[4], ARGV[6])
return 'new'
"#;

// Moves a schedule's cursor forward (never back): gives whether it moved.
const ADVANCE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cursor = tonumber(redis.call('HGET', KEYS[1], 'cursor_ms') or '0')
if tonumber(ARGV[1]) <= cursor then return 0 end
redis.call('HSET', KEYS[1], 'cursor_ms', ARGV[1])
return 1
"#;

/// The schedules of one journal.
#[derive(Clone)]
pub(crate) struct Schedules {
    journal: Journal,
}

impl Schedules {
    pub(crate) fn new(journal: Journal) -> Self {
        Schedules { journal }
    }

    fn index(&self) -> String {
        self.journal.key("schedules")
    }

    fn schedule_key(&self, id: &str) -> String {
        self.journal.key(&format!("schedule:{id}"))
    }

    fn part_key(&self, id: &str, part: &str) -> String {
        self.journal.key(&format!("schedule:{id}:{part}"))
    }

    fn slot_key(&self, id: &str, slot: &str) -> String {
        self.journal.key(&format!("slot:{id}:{slot}"))
    }

    /// Adds a schedule, signed by `seal` over `record` (its JSON); gives the id of a schedule of
    /// that name if there is one (then nothing is written).
    pub(crate) async fn add(&self, spec: &ScheduleSpec, record: &str, seal: &Seal) -> JournalResult<Option<String>> {
        let [(_, key), (_, signature)] = seal.to_headers();
        let mut con = self.journal.connection().await?;
        let earlier: Option<String> = Script::new(ADD)
            .key(self.index())
            .key(self.schedule_key(&spec.id))
            .arg(&spec.name)
            .arg(&spec.id)
            .arg(record)
            .arg(key)
            .arg(signature)
            .arg(spec.created_ms)
            .invoke_async(&mut con)
            .await?;
        Ok(earlier)
    }

    /// The id of the schedule of `name`.
    async fn id_of(&self, name: &str) -> JournalResult<Option<String>> {
        let mut con = self.journal.connection().await?;
        Ok(con.hget(self.index(), name).await?)
    }

    /// The schedule of `name`, if there is one.
    pub(crate) async fn get(&self, name: &str) -> JournalResult<Option<StoredSchedule>> {
        let Some(id) = self.id_of(name).await? else { return Ok(None) };
        self.read(name, &id).await
    }

    /// Every schedule that can be read, by name (those that cannot are logged and left out).
    pub(crate) async fn all(&self) -> JournalResult<Vec<StoredSchedule>> {
        let names: HashMap<String, String> = {
            let mut con = self.journal.connection().await?;
            con.hgetall(self.index()).await?
        };
        let mut names: Vec<(String, String)> = names.into_iter().collect();
        names.sort();
        let mut found = Vec::with_capacity(names.len());
        for (name, id) in names {
            match self.read(&name, &id).await {
                Ok(Some(schedule)) => found.push(schedule),
                Ok(None) => {}
                // One record that cannot be read stops none of the others.
                Err(JournalError::Corrupt(reason)) => tracing::warn!(schedule = %name, "skipping a schedule: {reason}"),
                Err(error) => return Err(error),
            }
        }
        Ok(found)
    }

    /// The schedule `id`, listed as `name`; `None` if removed meanwhile. A record that does not
    /// say the same name and id is refused as corrupt (someone moved it in the journal).
    async fn read(&self, name: &str, id: &str) -> JournalResult<Option<StoredSchedule>> {
        let mut con = self.journal.connection().await?;
        let (mut fields, runs, requests, pending): (HashMap<String, String>, Vec<String>, Vec<String>, Vec<String>) =
            redis::pipe()
                .hgetall(self.schedule_key(id))
                .lrange(self.part_key(id, "runs"), 0, -1)
                .lrange(self.part_key(id, "requests"), 0, -1)
                .smembers(self.part_key(id, "pending"))
                .query_async(&mut con)
                .await?;
        let Some(record) = fields.remove("record") else { return Ok(None) };
        let spec: ScheduleSpec =
            serde_json::from_str(&record).map_err(|source| Corrupt::Schedule { name: name.to_owned(), source })?;
        if spec.id != id || spec.name != name {
            return Err(Corrupt::ScheduleMoved {
                name: name.to_owned(),
                id: id.to_owned(),
                record_name: spec.name,
                record_id: spec.id,
            }
            .into());
        }
        let headers = SealHeaders {
            key: fields.get("key").map(String::as_str),
            signature: fields.get("sig").map(String::as_str),
            ..Default::default()
        };
        let runs = runs.iter().filter_map(|raw| serde_json::from_str(raw).ok()).collect();
        Ok(Some(StoredSchedule {
            seal: Seal::from_headers(headers),
            paused: fields.get("paused").map(String::as_str) == Some("1"),
            cursor_ms: fields.get("cursor_ms").and_then(|v| v.parse().ok()).unwrap_or(spec.created_ms),
            runs,
            requests,
            pending,
            spec,
            record,
        }))
    }

    /// Removes the schedule of `name`: no slot of it fires from now on (runs already started go
    /// on). Gives it as it was.
    pub(crate) async fn remove(&self, name: &str) -> JournalResult<Option<StoredSchedule>> {
        let Some(schedule) = self.get(name).await? else { return Ok(None) };
        let id = &schedule.spec.id;
        let mut con = self.journal.connection().await?;
        let removed: i64 = Script::new(REMOVE)
            .key(self.index())
            .key(self.schedule_key(id))
            .key(self.part_key(id, "runs"))
            .key(self.part_key(id, "requests"))
            .key(self.part_key(id, "pending"))
            .arg(name)
            .arg(id)
            .invoke_async(&mut con)
            .await?;
        Ok((removed == 1).then_some(schedule))
    }

    /// Pauses or resumes the schedule of `name` (resumed: from `now_ms`, slots before never run);
    /// gives it as it is then.
    pub(crate) async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        now_ms: u64,
    ) -> JournalResult<Option<StoredSchedule>> {
        let Some(id) = self.id_of(name).await? else { return Ok(None) };
        let mut con = self.journal.connection().await?;
        let done: i64 = Script::new(PAUSE)
            .key(self.index())
            .key(self.schedule_key(&id))
            .arg(name)
            .arg(&id)
            .arg(if paused { "1" } else { "0" })
            .arg(now_ms)
            .invoke_async(&mut con)
            .await?;
        if done == 0 {
            return Ok(None);
        }
        self.read(name, &id).await
    }

    /// Asks for a run-now of the schedule of `name`; a replica fires it at its next pass (or
    /// whoever asked, at once). Gives the schedule, `None` if there is none.
    pub(crate) async fn request_run(&self, name: &str, request: &RunRequest) -> JournalResult<Option<StoredSchedule>> {
        let Some(id) = self.id_of(name).await? else { return Ok(None) };
        let raw = serde_json::to_string(request).map_err(Corrupt::Json)?;
        let mut con = self.journal.connection().await?;
        let done: i64 = Script::new(REQUEST)
            .key(self.index())
            .key(self.part_key(&id, "requests"))
            .arg(name)
            .arg(&id)
            .arg(raw)
            .invoke_async(&mut con)
            .await?;
        if done == 0 {
            return Ok(None);
        }
        self.read(name, &id).await
    }

    /// A run-now request fired (or no longer firable): off the queue.
    pub(crate) async fn request_done(&self, id: &str, raw: &str) -> JournalResult<()> {
        let mut con = self.journal.connection().await?;
        let _: i64 = con.lrem(self.part_key(id, "requests"), 1, raw).await?;
        Ok(())
    }

    /// Records a slot of schedule `id` as `run`, once (see the module's documentation).
    pub(crate) async fn fire(&self, id: &str, slot: &Slot, run: &RunRecord) -> JournalResult<Fire> {
        let raw = serde_json::to_string(run).map_err(Corrupt::Json)?;
        let kept = self.journal.retention().max(SLOTS_KEPT_AT_LEAST);
        let mut con = self.journal.connection().await?;
        let answer: String = Script::new(FIRE)
            .key(self.schedule_key(id))
            .key(self.slot_key(id, &slot.id))
            .key(self.part_key(id, "runs"))
            .key(self.part_key(id, "pending"))
            .arg(if slot.is_cron() { "cron" } else { "now" })
            .arg(slot.at_ms)
            .arg(raw)
            .arg(kept.as_millis() as u64)
            .arg(RUNS_KEPT)
            .arg(&slot.id)
            .invoke_async(&mut con)
            .await?;
        Ok(match answer.as_str() {
            "new" => Fire::New,
            "gone" => Fire::Gone,
            "paused" => Fire::Paused,
            _ => Fire::Earlier,
        })
    }

    /// The record of a slot, while the journal keeps it.
    pub(crate) async fn slot_run(&self, id: &str, slot: &str) -> JournalResult<Option<RunRecord>> {
        let mut con = self.journal.connection().await?;
        let raw: Option<String> = con.get(self.slot_key(id, slot)).await?;
        raw.map(|raw| {
            serde_json::from_str(&raw).map_err(|source| Corrupt::Slot { slot: slot.to_owned(), source }.into())
        })
        .transpose()
    }

    /// Every ticket of the slot is submitted: it is no longer pending.
    pub(crate) async fn submitted(&self, id: &str, slot: &str) -> JournalResult<()> {
        let mut con = self.journal.connection().await?;
        let _: i64 = con.srem(self.part_key(id, "pending"), slot).await?;
        Ok(())
    }

    /// Moves schedule `id` past `cursor_ms` without a run (missed slots under `skip`); gives
    /// whether it moved (false: another replica did, or a slot after it ran).
    pub(crate) async fn advance(&self, id: &str, cursor_ms: u64) -> JournalResult<bool> {
        let mut con = self.journal.connection().await?;
        let moved: i64 = Script::new(ADVANCE).key(self.schedule_key(id)).arg(cursor_ms).invoke_async(&mut con).await?;
        Ok(moved == 1)
    }

    /// Marks the journal: this replica (its name and key) runs at `now_ms`. Forgets marks of a
    /// day ago.
    pub(crate) async fn mark(&self, replica: &str, key: &str, now_ms: u64) -> JournalResult<()> {
        let mut con = self.journal.connection().await?;
        let forget = now_ms.saturating_sub(REPLICAS_KEPT.as_millis() as u64);
        redis::pipe()
            .zadd(self.journal.key("replicas"), format!("{key} {replica}"), now_ms)
            .ignore()
            .zrembyscore(self.journal.key("replicas"), "-inf", forget)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// When any replica last marked the journal.
    pub(crate) async fn last_mark(&self) -> JournalResult<Option<u64>> {
        let mut con = self.journal.connection().await?;
        let last: Vec<(String, f64)> = con.zrevrange_withscores(self.journal.key("replicas"), 0, 0).await?;
        Ok(last.first().map(|(_, ms)| *ms as u64))
    }

    /// The replicas that marked the journal since `since_ms`, newest first.
    pub(crate) async fn replicas_since(&self, since_ms: u64) -> JournalResult<Vec<ReplicaSeen>> {
        let mut con = self.journal.connection().await?;
        let seen: Vec<(String, f64)> =
            con.zrevrangebyscore_withscores(self.journal.key("replicas"), "+inf", since_ms).await?;
        Ok(seen
            .into_iter()
            .filter_map(|(member, ms)| {
                let (key, replica) = member.split_once(' ')?;
                Some(ReplicaSeen { replica: replica.to_owned(), key: key.to_owned(), at_ms: ms as u64 })
            })
            .collect())
    }
}
