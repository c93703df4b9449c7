//! Schedules (`dispatcher schedule`, `/v1/schedules`): a script run at the slots of a cron
//! expression in a time zone, by whichever replica of `dispatcher serve` comes first, each slot
//! once. This module holds what a schedule is and the decisions about its slots, as plain
//! functions of the time they are given (the service passes its clock's, the tests any):
//!
//! - [`Cadence`]: the expression and the zone, parsed by croner and chrono-tz, and the slots they
//!   make in real time, daylight-saving gaps and repeats included (below);
//! - [`due`]: at a replica's pass, which slots start now, which were missed and what `--missed`
//!   makes of them;
//! - [`ScheduleSpec`]: what `add` records and signs, and [`Slot`]: one run of it, whose identity
//!   names its tickets ([`crate::plan::Tickets::Slot`]).
//!
//! The journal's records and the service's loop are [`crate::service::schedules`] and
//! [`crate::service::scheduler`].
//!
//! # Daylight saving
//! croner searches wall-clock time and resolves it as cron does: a fixed time (numbers in the
//! second, minute and hour fields, like `30 2 * * *`) that a spring-forward skips runs once, at the
//! first wall-clock second after the gap (03:00); one that a fall-back repeats runs once, at its
//! first occurrence. Times given by `*` or steps in those fields run at every real moment that
//! matches: none inside a gap, and both passes through a repeated hour. [`Cadence`] puts these
//! in real-time order (croner's own order in a repeated hour is by wall clock).

use crate::budget::Share;
use crate::plan::{PlanError, PolicyChoice};
use crate::policy::{Overrides, PolicyError, Purpose};
use crate::route::Route;
use chrono::{DateTime, Offset, Utc};
use chrono_tz::Tz;
use contracts::wire::labels::{LabelError, Selector};
use contracts::wire::messages::{ScriptSpec, SpecError};
use contracts::wire::topology::NameError;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long without a mark by any replica counts as every replica being down, and how late an
/// unstarted slot may still start: a slot that did not start within this of its time was missed
/// ([`due`]). Running replicas mark the journal every second.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);

/// The variable that names the schedule to its script.
pub const SCHEDULE_VAR: &str = "CUTTLE_SCHEDULE";
/// The variable that gives the script the slot it serves (RFC 3339, in the schedule's zone).
pub const SLOT_VAR: &str = "CUTTLE_SCHEDULE_SLOT";

/// Most slots [`due`] counts as missed at once (what the metrics are told), and runs on time in
/// one pass.
const MOST_COUNTED: usize = 1000;

/// Around a daylight-saving change croner's wall-clock search is checked against real time over
/// this much on either side (no zone moves its clock by more than two hours).
const DST_REACH_MS: u64 = 3 * 3600 * 1000;

/// A cron expression that cannot be one, or a zone that does not exist: what and where.
#[derive(Debug, thiserror::Error)]
pub enum CadenceError {
    #[error(
        "cron expression {expression:?} has {count} fields; give 5 (minute hour day-of-month month day-of-week) or 6 (a second first), or @hourly, @daily, @weekly, @monthly, @yearly"
    )]
    Fields { expression: String, count: usize },
    #[error("cron expression {expression:?}: the {field} field ({place}) {value:?} is not valid: {source}")]
    Field { expression: String, field: &'static str, place: String, value: String, source: CronError },
    #[error("cron expression {expression:?} is not valid: {source}")]
    Expression { expression: String, source: CronError },
    #[error("cron expression {expression:?} never comes (no slot within croner's search from now): {source}")]
    Never { expression: String, source: CronError },
    #[error("unknown time zone {zone:?}{}; give an IANA name such as Europe/Berlin, America/New_York or UTC", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Zone { zone: String, suggestion: Option<String> },
}

/// A cron expression (optional seconds field) in a named time zone: the slots it makes.
#[derive(Clone, Debug)]
pub struct Cadence {
    cron: Cron,
    zone: Tz,
}

/// The names of the fields of an expression of `count` fields, in order.
fn field_names(count: usize) -> Option<&'static [&'static str]> {
    match count {
        5 => Some(&["minute", "hour", "day-of-month", "month", "day-of-week"]),
        6 => Some(&["second", "minute", "hour", "day-of-month", "month", "day-of-week"]),
        _ => None,
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match n {
        1 => "st",
        2 => "nd",
        3 => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build()
}

impl Cadence {
    /// `expression` in `zone` (an IANA name), refused with the reason and the field at fault; an
    /// expression with no slot after `now_ms` is refused too.
    pub fn parse(expression: &str, zone: &str, now_ms: u64) -> Result<Cadence, CadenceError> {
        let zone = parse_zone(zone)?;
        let cron = parse_cron(expression)?;
        let cadence = Cadence { cron, zone };
        let at = cadence.at(now_ms);
        if let Err(error) = cadence.cron.find_next_occurrence(&at, false) {
            return Err(CadenceError::Never { expression: expression.trim().to_owned(), source: error });
        }
        Ok(cadence)
    }

    /// The zone's name.
    pub fn zone(&self) -> &'static str {
        self.zone.name()
    }

    /// Unix ms as a time in the zone (to the millisecond).
    fn at(&self, ms: u64) -> DateTime<Tz> {
        let utc = DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or(DateTime::<Utc>::MIN_UTC);
        utc.with_timezone(&self.zone)
    }

    /// A slot's time as RFC 3339 in the zone, with its offset then (`2026-03-29T03:00:00+02:00`).
    pub fn rfc3339(&self, ms: u64) -> String {
        self.at(ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
    }

    /// Whether the zone's offset changes within [`DST_REACH_MS`] of `ms`: croner's wall-clock
    /// order may then differ from real time.
    fn near_change(&self, ms: u64) -> bool {
        let offset = |ms: u64| self.at(ms).offset().fix();
        let now = offset(ms);
        now != offset(ms.saturating_sub(DST_REACH_MS)) || now != offset(ms + DST_REACH_MS)
    }

    /// croner's next occurrence after `ms` (whole seconds), in unix ms; `None` if it finds none.
    fn croner_next(&self, ms: u64) -> Option<u64> {
        let found = self.cron.find_next_occurrence(&self.at(ms / 1000 * 1000), false).ok()?;
        Some(whole_ms(&found))
    }

    /// The first slot strictly after `after_ms`, in unix ms (whole seconds).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        if !self.near_change(after_ms) {
            return self.croner_next(after_ms).filter(|&next| next > after_ms);
        }
        // Near a change, croner's occurrences come in wall-clock order: in a repeated hour each
        // time of a `*`/step schedule comes twice (its two real moments one after the other), and
        // a search from inside the repeat finds the first of them, which is already past. The
        // earliest real moment after `after_ms` among those found from well before it is next.
        let start = after_ms.saturating_sub(DST_REACH_MS);
        let mut best: Option<u64> = None;
        for found in self.cron.iter_after(self.at(start / 1000 * 1000)).take(100_000) {
            let ms = whole_ms(&found);
            if ms > after_ms && best.is_none_or(|best| ms < best) {
                best = Some(ms);
            }
            // Items come in wall-clock order, which is never more than the reach behind real time.
            if best.is_some_and(|best| ms > best + DST_REACH_MS) || ms > after_ms + 400 * 24 * 3600 * 1000 {
                break;
            }
        }
        best
    }

    /// The slots in `(after_ms, until_ms]`, in order, at most `most`.
    pub fn slots(&self, after_ms: u64, until_ms: u64, most: usize) -> Vec<u64> {
        let mut slots = Vec::new();
        let mut from = after_ms;
        while slots.len() < most {
            match self.next_after(from) {
                Some(next) if next <= until_ms => {
                    slots.push(next);
                    from = next;
                }
                _ => break,
            }
        }
        slots
    }

    /// The latest slot in `(after_ms, until_ms]`.
    pub fn latest(&self, after_ms: u64, until_ms: u64) -> Option<u64> {
        if after_ms >= until_ms {
            return None;
        }
        // croner's search backwards lands on (or next to) the latest slot; walking forward from
        // a little before it finds the latest in real time (near a change, from well before it).
        let back = self.cron.find_previous_occurrence(&self.at(until_ms / 1000 * 1000), true).ok();
        let back = back.map(|t| whole_ms(&t));
        let reach = if self.near_change(until_ms) { DST_REACH_MS } else { 1000 };
        let start = back.map_or(after_ms, |back| back.saturating_sub(reach).max(after_ms));
        let mut latest = None;
        let mut from = start;
        while let Some(next) = self.next_after(from).filter(|&next| next <= until_ms) {
            latest = Some(next);
            from = next;
        }
        // A backward search that found nothing, or a walk that began past every slot: from the start.
        if latest.is_none() && start > after_ms {
            return self.slots(after_ms, until_ms, usize::MAX).last().copied();
        }
        latest
    }
}

/// Unix ms of a time, in whole seconds. (Not `with_nanosecond`, which goes through the wall
/// clock and finds nothing at a time that comes twice.)
fn whole_ms(time: &DateTime<Tz>) -> u64 {
    time.timestamp().max(0) as u64 * 1000
}

fn parse_zone(zone: &str) -> Result<Tz, CadenceError> {
    let zone = zone.trim();
    zone.parse::<Tz>().map_err(|_| {
        let suggestion = chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| {
                tz.name().eq_ignore_ascii_case(zone)
                    || tz.name().rsplit('/').next().is_some_and(|city| city.eq_ignore_ascii_case(zone))
            })
            .map(|tz| tz.name().to_owned());
        CadenceError::Zone { zone: zone.to_owned(), suggestion }
    })
}

/// croner's parse of `expression`; when it refuses, the field at fault is found by parsing each
/// field alone (the others `*`), so the message says where.
fn parse_cron(expression: &str) -> Result<Cron, CadenceError> {
    let parser = parser();
    let error = match parser.parse(expression) {
        Ok(cron) => return Ok(cron),
        Err(error) => error,
    };
    let trimmed = expression.trim().to_owned();
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if fields.len() == 1 && fields[0].starts_with('@') {
        return Err(CadenceError::Expression { expression: trimmed.clone(), source: error });
    }
    let Some(names) = field_names(fields.len()) else {
        let count = fields.len();
        return Err(CadenceError::Fields { expression: trimmed, count });
    };
    for (at, field) in fields.iter().enumerate() {
        let alone: Vec<&str> = (0..fields.len()).map(|i| if i == at { *field } else { "*" }).collect();
        if let Err(source) = parser.parse(&alone.join(" ")) {
            return Err(CadenceError::Field {
                expression: trimmed.clone(),
                field: names[at],
                place: format!("the {} of {}", ordinal(at + 1), fields.len()),
                value: field.to_string(),
                source,
            });
        }
    }
    Err(CadenceError::Expression { expression: trimmed, source: error })
}

/// What `--missed` makes of slots missed while every replica was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Missed {
    /// None of them runs.
    #[default]
    Skip,
    /// One run, under the latest of them, however many there were.
    Once,
}

/// `skip` or `once`, as the flag and the API name it.
pub fn missed_name(missed: Missed) -> &'static str {
    match missed {
        Missed::Skip => "skip",
        Missed::Once => "once",
    }
}

/// What a replica's pass over a schedule does ([`due`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Slots missed: they came while every replica was down, or were not started within
    /// [`DOWN_AFTER`] (counted up to [`MOST_COUNTED`]).
    pub missed: usize,
    /// Under `skip`, the latest missed slot: the schedule moves past it without a run.
    pub skip_to: Option<u64>,
    /// Under `once`, the latest missed slot, which runs (one run for all of them).
    pub once: Option<u64>,
    /// Slots that start now, on time, in order (normally one, at most one per pass).
    pub on_time: Vec<u64>,
}

/// Which slots of `cadence` a pass at `now_ms` starts. `cursor_ms` is the schedule's last
/// handled slot (its creation or resumption before any): slots at or before it never run again.
/// `last_mark_ms` is when any replica last marked the journal (each does every second while it
/// runs, from its first pass on): if none did for [`DOWN_AFTER`], every replica was down (or the
/// journal out of reach), and all slots since the cursor were missed. Otherwise slots of the last [`DOWN_AFTER`] start, and
/// older ones that never started were missed. Missed slots are skipped, or run once under the
/// latest of them, as `missed` says: never a burst.
pub fn due(cadence: &Cadence, missed: Missed, cursor_ms: u64, last_mark_ms: Option<u64>, now_ms: u64) -> Due {
    // Most passes find the next slot still to come.
    if cadence.next_after(cursor_ms).is_none_or(|next| next > now_ms) {
        return Due::default();
    }
    let down = DOWN_AFTER.as_millis() as u64;
    let all_down = last_mark_ms.is_none_or(|last| now_ms.saturating_sub(last) > down);
    let on_time_after = if all_down { now_ms } else { now_ms.saturating_sub(down) }.max(cursor_ms);
    let on_time = cadence.slots(on_time_after, now_ms, MOST_COUNTED);
    let latest_missed = cadence.latest(cursor_ms, on_time_after);
    let counted = match latest_missed {
        Some(_) => cadence.slots(cursor_ms, on_time_after, MOST_COUNTED).len().max(1),
        None => 0,
    };
    let (skip_to, once) = match missed {
        Missed::Skip => (latest_missed, None),
        Missed::Once => (None, latest_missed),
    };
    Due { missed: counted, skip_to, once, on_time }
}

/// Where a schedule's slots run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleTargets {
    /// These agents, a ticket each.
    Agents(Vec<String>),
    /// Any one worker of the pool.
    Pool(String),
    /// The live agents matching the selector at each slot, a ticket each.
    Select(String),
}

impl ScheduleTargets {
    /// The routes, unless they are chosen at each slot (`--select`).
    pub(crate) fn routes(&self) -> Option<Result<Vec<Route>, PlanError>> {
        let targets = match self {
            ScheduleTargets::Agents(ids) => crate::plan::Targets::Agents { ids: ids.clone(), given_as: "target" },
            ScheduleTargets::Pool(pool) => crate::plan::Targets::Pool(pool.clone()),
            ScheduleTargets::Select(_) => return None,
        };
        Some(crate::plan::routes(targets))
    }

    /// The selector of `--select`.
    pub fn selector(&self) -> Option<Result<Selector, LabelError>> {
        match self {
            ScheduleTargets::Select(raw) => Some(Selector::parse(raw)),
            _ => None,
        }
    }
}

impl std::fmt::Display for ScheduleTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleTargets::Agents(ids) => write!(f, "{}", ids.join(",")),
            ScheduleTargets::Pool(pool) => write!(f, "pool {pool}"),
            ScheduleTargets::Select(selector) => write!(f, "select {selector}"),
        }
    }
}

/// A schedule as `add` records it, and signs: everything that decides what runs, where and when.
/// It never changes; pausing, the last slot handled and the runs are kept beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// Made at `add` (a UUID): a schedule removed and added again under the same name has a new
    /// one, so its slots' tickets are new too.
    pub id: String,
    pub name: String,
    pub cron: String,
    /// An IANA zone name.
    pub timezone: String,
    pub targets: ScheduleTargets,
    /// The script, planned at each slot as a submission is ([`crate::plan`]); never secrets.
    pub spec: ScriptSpec,
    /// The machine policy asked for by name, the purpose (`deployment`, `runbook`,
    /// `health-check`) and the one-schedule overrides; resolved at each slot against the
    /// service's policies.
    pub policy: Option<String>,
    pub purpose: Option<String>,
    pub retry_duration_ms: Option<u64>,
    pub no_retries: bool,
    /// With several targets: how many run at once, a count or a percentage of a slot's targets.
    pub max_parallel: Share,
    pub missed: Missed,
    /// Who added it (the API token's name, or `cli:<user>`).
    pub who: String,
    pub created_ms: u64,
}

/// Why a schedule cannot be added, or a slot of it planned: what to change. The messages are
/// those `dispatcher schedule add` prints and `POST /v1/schedules` answers with (400).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    /// A name that cannot be one: the schedule's, or a target's in a slot's record.
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Cadence(#[from] CadenceError),
    /// An agent id or pool name that cannot be one, or an agent given twice.
    #[error(transparent)]
    Targets(#[from] PlanError),
    /// The selector of `--select`.
    #[error(transparent)]
    Selector(#[from] LabelError),
    /// The service keeps secrets only in memory, so a schedule cannot have them.
    #[error("a schedule cannot hold secrets: the service keeps secrets only in the memory of the replica that took them, never in the journal, so no replica could run the schedule after a restart; give the script what it needs another way (a file on the agent, a secret store it reads)")]
    Secrets,
    /// A variable the schedule sets itself for each run ([`SCHEDULE_VAR`], [`SLOT_VAR`]).
    #[error("{name} is set by the schedule itself for each run; give the variable another name")]
    Reserved { name: &'static str },
    #[error("purpose {name:?} is none of deployment, runbook, health-check")]
    Purpose { name: String },
    #[error("max parallel must be at least 1")]
    MaxParallel,
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The policy asked for does not resolve against the policies at hand.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl ScheduleSpec {
    /// Checks what `add` was given: the name, the cadence (against `now_ms`), the targets, the
    /// script (no secrets, no variable the schedule sets itself) and the purpose.
    pub(crate) fn check(&self, now_ms: u64) -> Result<Cadence, ScheduleError> {
        contracts::wire::topology::validate_name("schedule name", &self.name)?;
        let cadence = Cadence::parse(&self.cron, &self.timezone, now_ms)?;
        match (self.targets.routes(), self.targets.selector()) {
            (Some(routes), _) => {
                routes?;
            }
            (None, Some(selector)) => {
                selector?;
            }
            (None, None) => {}
        }
        if !self.spec.secret_env.is_empty() || !self.spec.sealed_secret_env.is_empty() {
            return Err(ScheduleError::Secrets);
        }
        if let Some(name) = [SCHEDULE_VAR, SLOT_VAR].into_iter().find(|name| self.spec.env.contains_key(*name)) {
            return Err(ScheduleError::Reserved { name });
        }
        self.choice()?;
        if self.max_parallel == Share::Count(0) {
            return Err(ScheduleError::MaxParallel);
        }
        self.spec.validate()?;
        Ok(cadence)
    }

    /// The policy choice each slot is planned with.
    pub(crate) fn choice(&self) -> Result<PolicyChoice, ScheduleError> {
        use clap::ValueEnum;
        let purpose = match &self.purpose {
            None => None,
            Some(name) => {
                Some(Purpose::from_str(name, true).map_err(|_| ScheduleError::Purpose { name: name.clone() })?)
            }
        };
        let overrides = Overrides {
            retry_duration: self.retry_duration_ms.map(Duration::from_millis),
            no_retries: self.no_retries,
        };
        Ok(PolicyChoice { policy: self.policy.clone(), purpose, overrides })
    }

    /// The script of one slot: the schedule's, with the schedule's name and the slot's time in
    /// its environment.
    pub fn slot_spec(&self, slot: &Slot, cadence: &Cadence) -> ScriptSpec {
        let mut spec = self.spec.clone();
        spec.env.insert(SCHEDULE_VAR.to_owned(), self.name.clone());
        spec.env.insert(SLOT_VAR.to_owned(), cadence.rfc3339(slot.at_ms));
        spec
    }

    /// The record as the journal keeps it and its signature covers.
    pub fn to_record(&self) -> String {
        serde_json::to_string(self).expect("a schedule encodes")
    }
}

/// How a slot came to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    /// On time, at its slot.
    Cron,
    /// Under `--missed once`: the latest slot missed while every replica was down.
    Missed,
    /// `run-now`: a slot of its own.
    RunNow,
}

impl SlotKind {
    /// As `schedule list` shows it.
    pub fn name(self) -> &'static str {
        match self {
            SlotKind::Cron => "cron",
            SlotKind::Missed => "missed",
            SlotKind::RunNow => "run-now",
        }
    }
}

/// One run of a schedule: its identity (which names its tickets), when it is for, and how it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// A cron slot's unix ms, whether on time or missed (so both name the same tickets), or
    /// `now-<uuid>` for a run-now.
    pub id: String,
    /// The slot's time (a run-now's: when it was asked for), unix ms.
    pub at_ms: u64,
    pub kind: SlotKind,
}

impl Slot {
    pub fn cron(at_ms: u64) -> Slot {
        Slot { id: at_ms.to_string(), at_ms, kind: SlotKind::Cron }
    }

    pub fn missed(at_ms: u64) -> Slot {
        Slot { id: at_ms.to_string(), at_ms, kind: SlotKind::Missed }
    }

    /// A run-now asked for at `at_ms`, with the request's own id.
    pub fn run_now(request: &str, at_ms: u64) -> Slot {
        Slot { id: format!("now-{request}"), at_ms, kind: SlotKind::RunNow }
    }

    /// Whether it is a cron slot (on time or missed), which moves the schedule's cursor.
    pub fn is_cron(&self) -> bool {
        self.kind != SlotKind::RunNow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Unix ms of a wall-clock time in `zone` (the earliest, if repeated).
    fn local(zone: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
        let tz: Tz = zone.parse().unwrap();
        tz.with_ymd_and_hms(y, mo, d, h, mi, s).earliest().unwrap().timestamp_millis() as u64
    }

    fn utc(text: &str) -> u64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis() as u64
    }

    fn cadence(expression: &str, zone: &str) -> Cadence {
        Cadence::parse(expression, zone, utc("2026-01-01T00:00:00Z")).unwrap()
    }

    fn shown(cadence: &Cadence, slots: &[u64]) -> Vec<String> {
        slots.iter().map(|&ms| cadence.rfc3339(ms)).collect()
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_the_reason_and_where() {
        let now = utc("2026-01-01T00:00:00Z");
        let error = Cadence::parse("61 * * * *", "UTC", now).unwrap_err();
        assert!(matches!(&error, CadenceError::Field { field: "minute", value, .. } if value == "61"), "{error}");
        assert!(error.to_string().contains("the minute field (the 1st of 5) \"61\""), "{error}");
        let error = Cadence::parse("0 0 * * * MOON", "UTC", now).unwrap_err();
        assert!(matches!(&error, CadenceError::Field { field: "day-of-week", .. }), "{error}");
        assert!(error.to_string().contains("the 6th of 6"), "{error}");
        let error = Cadence::parse("*/5 * * *", "UTC", now).unwrap_err();
        assert!(
            matches!(&error, CadenceError::Fields { expression, count: 4 } if expression == "*/5 * * *"),
            "{error}"
        );
        let error = Cadence::parse("", "UTC", now).unwrap_err();
        assert!(matches!(error, CadenceError::Fields { count: 0, .. }), "{error}");
        let error = Cadence::parse("@sometimes", "UTC", now).unwrap_err();
        assert!(matches!(error, CadenceError::Expression { .. }), "{error}");
        let error = Cadence::parse("0 0 30 2 *", "UTC", now).unwrap_err();
        assert!(matches!(error, CadenceError::Never { .. }), "February 30th never comes: {error}");

        let error = Cadence::parse("0 2 * * *", "Mars/Olympus", now).unwrap_err();
        assert!(matches!(&error, CadenceError::Zone { zone, suggestion: None } if zone == "Mars/Olympus"), "{error}");
        assert!(error.to_string().contains("IANA name such as Europe/Berlin"), "{error}");
        let error = Cadence::parse("0 2 * * *", "europe/berlin", now).unwrap_err();
        assert!(error.to_string().contains("did you mean Europe/Berlin?"), "{error}");
        let error = Cadence::parse("0 2 * * *", "Berlin", now).unwrap_err();
        assert!(error.to_string().contains("did you mean Europe/Berlin?"), "{error}");

        assert!(Cadence::parse("@daily", "UTC", now).is_ok());
        assert!(Cadence::parse("*/2 * * * * *", "Europe/Berlin", now).is_ok(), "an optional seconds field");
        assert!(Cadence::parse("0 30 2 * * MON-FRI", "America/New_York", now).is_ok());
    }

    #[test]
    fn slots_come_in_order_in_whole_seconds() {
        let every_two = cadence("*/2 * * * * *", "UTC");
        let from = utc("2026-06-01T12:00:00.500Z");
        let slots = every_two.slots(from, from + 6_000, 100);
        assert_eq!(
            shown(&every_two, &slots),
            ["2026-06-01T12:00:02+00:00", "2026-06-01T12:00:04+00:00", "2026-06-01T12:00:06+00:00"]
        );
        assert_eq!(every_two.next_after(utc("2026-06-01T12:00:02Z")), Some(utc("2026-06-01T12:00:04Z")));
        assert_eq!(every_two.latest(from, utc("2026-06-01T12:00:05.900Z")), Some(utc("2026-06-01T12:00:04Z")));
        assert_eq!(every_two.latest(utc("2026-06-01T12:00:04Z"), utc("2026-06-01T12:00:05.900Z")), None);
        let daily = cadence("0 2 * * *", "Europe/Berlin");
        let until = utc("2026-06-10T12:00:00Z");
        assert_eq!(
            daily.latest(utc("2026-06-01T00:00:00Z"), until),
            Some(local("Europe/Berlin", 2026, 6, 10, 2, 0, 0))
        );
    }

    #[test]
    fn a_fixed_time_that_a_spring_forward_skips_runs_once_after_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
        let half_past_two = cadence("30 2 * * *", "Europe/Berlin");
        let (from, until) = (utc("2026-03-28T12:00:00Z"), utc("2026-03-30T12:00:00Z"));
        let slots = half_past_two.slots(from, until, 100);
        assert_eq!(
            shown(&half_past_two, &slots),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
            "once on the day of the change, at the first moment after the gap"
        );
        assert_eq!(half_past_two.latest(from, utc("2026-03-29T01:10:00Z")), Some(slots[0]), "03:10 CEST");
        // Every 30 minutes: the gap's times do not come at all.
        let every_half_hour = cadence("*/30 * * * *", "Europe/Berlin");
        let slots = every_half_hour.slots(utc("2026-03-29T00:15:00Z"), utc("2026-03-29T01:45:00Z"), 100);
        assert_eq!(
            shown(&every_half_hour, &slots),
            ["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"]
        );
    }

    #[test]
    fn a_fixed_time_in_a_repeated_hour_runs_once_and_a_step_runs_at_every_real_moment() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        let half_past_two = cadence("30 2 * * *", "Europe/Berlin");
        let slots = half_past_two.slots(utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"), 100);
        assert_eq!(shown(&half_past_two, &slots), ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]);
        // From inside the repeat (02:40 CET), the next is tomorrow's: the 02:30 CET is no slot.
        assert_eq!(half_past_two.next_after(utc("2026-10-25T01:10:00Z")), Some(slots[1]));
        assert_eq!(half_past_two.latest(utc("2026-10-24T12:00:00Z"), utc("2026-10-25T01:40:00Z")), Some(slots[0]));

        let every_half_hour = cadence("*/30 * * * *", "Europe/Berlin");
        let slots = every_half_hour.slots(utc("2026-10-24T23:15:00Z"), utc("2026-10-25T02:15:00Z"), 100);
        assert_eq!(
            shown(&every_half_hour, &slots),
            [
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
            "in real-time order, half an hour apart throughout"
        );
        // From inside the second pass, the next is the next real moment, not an earlier one.
        let inside = utc("2026-10-25T01:10:00Z"); // 02:10 CET
        assert_eq!(every_half_hour.next_after(inside), Some(utc("2026-10-25T01:30:00Z")));
        assert_eq!(every_half_hour.latest(utc("2026-10-24T23:15:00Z"), inside), Some(utc("2026-10-25T01:00:00Z")));
    }

    /// Runs a replica's passes every `step_ms` from `from` to `until`, as the service does, with
    /// the journal's cursor: the slots that run.
    fn passes(cadence: &Cadence, missed: Missed, from: u64, until: u64, step_ms: u64) -> Vec<u64> {
        let (mut cursor, mut last_pass, mut ran) = (from, Some(from), Vec::new());
        let mut now = from;
        while now <= until {
            let due = due(cadence, missed, cursor, last_pass, now);
            cursor = due.skip_to.unwrap_or(cursor);
            for slot in due.once.into_iter().chain(due.on_time) {
                assert!(slot > cursor, "a slot at or before the cursor never runs again");
                ran.push(slot);
                cursor = slot;
            }
            last_pass = Some(now);
            now += step_ms;
        }
        ran
    }

    #[test]
    fn passes_across_daylight_saving_changes_run_each_slot_once_with_an_injected_clock() {
        let half_past_two = cadence("30 2 * * *", "Europe/Berlin");
        for (from, until) in [
            (utc("2026-03-28T22:00:00Z"), utc("2026-03-29T04:00:00Z")),
            (utc("2026-10-24T22:00:00Z"), utc("2026-10-25T04:00:00Z")),
        ] {
            let ran = passes(&half_past_two, Missed::Skip, from, until, 2_000);
            assert_eq!(ran.len(), 1, "once on the day: {:?}", shown(&half_past_two, &ran));
        }
        let every_fifteen = cadence("*/15 * * * *", "Europe/Berlin");
        let ran = passes(&every_fifteen, Missed::Skip, utc("2026-10-24T23:00:00Z"), utc("2026-10-25T02:00:00Z"), 1_000);
        assert_eq!(ran.len(), 12, "three hours of real time: {:?}", shown(&every_fifteen, &ran));
        assert!(
            ran.windows(2).all(|w| w[1] - w[0] == 15 * 60_000),
            "15 minutes apart: {:?}",
            shown(&every_fifteen, &ran)
        );
    }

    #[test]
    fn slots_missed_while_every_replica_was_down_are_skipped_or_run_once_never_in_a_burst() {
        let every_two = cadence("*/2 * * * * *", "UTC");
        let base = utc("2026-06-01T12:00:00Z");
        // Up and passing: the slot just come starts, nothing was missed.
        let up = due(&every_two, Missed::Skip, base, Some(base + 1_700), base + 2_050);
        assert_eq!(up, Due { on_time: vec![base + 2_000], ..Default::default() });
        // Down from 12:00:00 to 12:00:21: ten slots missed.
        let now = base + 21_000;
        let skipped = due(&every_two, Missed::Skip, base, Some(base), now);
        assert_eq!(skipped, Due { missed: 10, skip_to: Some(base + 20_000), ..Default::default() });
        let once = due(&every_two, Missed::Once, base, Some(base), now);
        assert_eq!(once, Due { missed: 10, once: Some(base + 20_000), ..Default::default() });
        // No replica ever passed: slots since the schedule was added were missed.
        assert_eq!(due(&every_two, Missed::Skip, base, None, base + 4_500).skip_to, Some(base + 4_000));
        // Up, but a slot that never started (its replica died before recording it): it starts
        // while DOWN_AFTER has not passed, and counts as missed after.
        let late = due(&every_two, Missed::Skip, base, Some(base + 3_900), base + 4_000);
        assert_eq!(late.on_time, vec![base + 2_000, base + 4_000]);
        let too_late = due(&every_two, Missed::Skip, base, Some(base + 7_900), base + 8_000);
        assert_eq!(
            (too_late.skip_to, too_late.on_time),
            (Some(base + 2_000), vec![base + 4_000, base + 6_000, base + 8_000])
        );
        // Across a whole outage of ten slots, `once` runs one of them and every slot after.
        let mut ran = passes(&every_two, Missed::Once, base, base + 10_000, 250);
        let after = due(&every_two, Missed::Once, *ran.last().unwrap(), Some(base + 10_000), base + 31_000);
        assert_eq!((after.missed, after.once), (10, Some(base + 30_000)));
        ran.extend(after.once);
        assert_eq!(ran.len(), 5 + 1);
        // A clock stepped back finds every slot before the cursor handled.
        assert_eq!(due(&every_two, Missed::Once, base + 30_000, Some(base + 30_000), base + 12_000), Due::default());
    }

    #[test]
    fn a_schedule_never_holds_secrets_nor_sets_its_own_variables() {
        let mut spec = ScheduleSpec {
            id: "id".into(),
            name: "rotate-logs".into(),
            cron: "0 2 * * *".into(),
            timezone: "Europe/Berlin".into(),
            targets: ScheduleTargets::Agents(vec!["web-01".into()]),
            spec: ScriptSpec { script: "logrotate".into(), ..Default::default() },
            policy: None,
            purpose: Some("runbook".into()),
            retry_duration_ms: None,
            no_retries: false,
            max_parallel: Share::Count(10),
            missed: Missed::Skip,
            who: "cli:ops".into(),
            created_ms: 0,
        };
        let now = utc("2026-01-01T00:00:00Z");
        assert!(spec.check(now).is_ok());
        assert_eq!(spec.choice().unwrap().purpose, Some(Purpose::Runbook));
        let slot = Slot::cron(local("Europe/Berlin", 2026, 3, 29, 3, 0, 0));
        let env = spec.slot_spec(&slot, &spec.check(now).unwrap()).env;
        assert_eq!((env[SCHEDULE_VAR].as_str(), env[SLOT_VAR].as_str()), ("rotate-logs", "2026-03-29T03:00:00+02:00"));
        spec.spec.env.insert(SLOT_VAR.into(), "x".into());
        assert!(spec.check(now).unwrap_err().to_string().contains("set by the schedule itself"));
        spec.spec.env.clear();
        spec.spec.secret_env.insert("TOKEN".into(), "s3cret".into());
        assert!(spec.check(now).unwrap_err().to_string().contains("cannot hold secrets"));
        spec.spec.secret_env = Default::default();
        spec.name = "a b".into();
        assert!(spec.check(now).unwrap_err().to_string().contains("schedule name"));
        assert_eq!(Slot::missed(5).id, Slot::cron(5).id, "a missed slot runs under its own identity");
    }
}
