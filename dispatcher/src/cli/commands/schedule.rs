//! `dispatcher schedule add|list|remove|pause|resume|run-now`: schedules in the service's journal
//! ([`crate::schedule`]), which `dispatcher serve` runs.

use super::journal::{cli_user, JournalOptions};
use super::submit::SubmitError;
use crate::cli::args::{
    ScheduleAddArgs, ScheduleCommand, ScheduleListArgs, ScheduleNameArgs, ScheduleRunArgs, TargetError,
};
use crate::cli::output::printer::usage_error;
use crate::cli::output::terminal;
use crate::plan::{Plan, Tickets};
use crate::policy::purpose_name;
use crate::schedule::{Cadence, ScheduleError, ScheduleSpec, ScheduleTargets};
use crate::service::journal::{Journal, JournalError};
use crate::service::schedule_api::{view, ScheduleView};
use crate::service::schedules::{ReplicaSeen, RunRequest, Schedules, StoredSchedule, RUNNING_WITHIN};
use crate::trust::DispatcherTrust;
use contracts::submission::outcome::exit;
use edge::clock::now_ms;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// Runs a `schedule` command; `trust` holds the key `add` signs with.
pub(crate) async fn run(
    journal: &JournalOptions,
    trust: Option<&DispatcherTrust>,
    command: ScheduleCommand,
) -> ExitCode {
    let journal = match journal.open(Duration::ZERO) {
        Ok(journal) => journal,
        Err(e) => return usage_error(format!("schedules are kept in the service's journal: {e}")),
    };
    let done = match command {
        ScheduleCommand::Add(args) => add(&journal, trust, &args).await,
        ScheduleCommand::List(args) => list(&journal, &args).await,
        ScheduleCommand::Remove(args) => remove(&journal, &args).await,
        ScheduleCommand::Pause(args) => set_paused(&journal, &args, true).await,
        ScheduleCommand::Resume(args) => set_paused(&journal, &args, false).await,
        ScheduleCommand::RunNow(args) => run_now(&journal, &args).await,
    };
    done.unwrap_or_else(|error| {
        eprintln!("cuttle: {error}; nothing was changed unless said above");
        ExitCode::from(exit::BROKER_UNREACHABLE)
    })
}

/// Why `schedule add`'s flags describe no schedule: what to change.
#[derive(Debug, thiserror::Error)]
enum AddError {
    #[error(
        "--secret-env and --secret-env-file are refused for schedules, as for submit --detach: {}",
        ScheduleError::Secrets
    )]
    Secrets,
    #[error("a schedule always runs in the service: leave out --detach")]
    Detach,
    #[error("--max-errors and --abort-on-error are not for schedules: each slot runs on all its targets")]
    Limits,
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Script(#[from] SubmitError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// The schedule `add`'s flags describe, or why there is none. What a schedule cannot hold is
/// refused first.
fn spec_of(args: &ScheduleAddArgs, now: u64) -> Result<ScheduleSpec, AddError> {
    let submit = &args.submit;
    if !submit.secret_env.is_empty() || !submit.secret_env_file.is_empty() {
        return Err(AddError::Secrets);
    }
    if submit.detach {
        return Err(AddError::Detach);
    }
    if submit.max_errors.is_some() || submit.abort_on_error {
        return Err(AddError::Limits);
    }
    let targets = match &submit.select {
        Some(selector) => ScheduleTargets::Select(selector.to_string()),
        None => {
            submit.target.routes()?;
            match &submit.target.pool {
                Some(pool) => ScheduleTargets::Pool(pool.clone()),
                None => ScheduleTargets::Agents(submit.target.target.clone()),
            }
        }
    };
    let spec = super::submit::script_spec(submit)?;
    let retry = &submit.retry;
    let schedule = ScheduleSpec {
        id: uuid::Uuid::new_v4().to_string(),
        name: args.name.clone(),
        cron: args.cron.clone(),
        timezone: args.timezone.clone(),
        targets,
        spec,
        policy: retry.policy.clone(),
        purpose: retry.purpose.map(purpose_name),
        retry_duration_ms: retry.retry_duration.map(|d| d.as_millis() as u64),
        no_retries: retry.no_retries,
        max_parallel: submit.max_parallel,
        missed: args.missed,
        who: cli_user(),
        created_ms: now,
    };
    schedule.check(now)?;
    // The policy asked for must resolve where it can be checked here (this command's --config);
    // the service resolves it again at each slot against its own.
    if let Some(Ok(routes)) = schedule.targets.routes() {
        let config = retry.config().map_err(ScheduleError::Policy)?;
        Plan::new(routes, schedule.spec.clone(), &schedule.choice()?, &config).map_err(ScheduleError::Policy)?;
    }
    Ok(schedule)
}

/// `schedule add`: records the schedule, signed with this dispatcher's key.
async fn add(
    journal: &Journal,
    trust: Option<&DispatcherTrust>,
    args: &ScheduleAddArgs,
) -> Result<ExitCode, JournalError> {
    let now = now_ms();
    let schedule = match spec_of(args, now) {
        Ok(schedule) => schedule,
        Err(e) => return Ok(usage_error(e)),
    };
    let Some(trust) = trust else { return Ok(usage_error(crate::error::RpcError::NoKey)) };
    let record = schedule.to_record();
    let seal = trust.seal_schedule(record.as_bytes());
    let schedules = Schedules::new(journal.clone());
    if let Some(existing) = schedules.add(&schedule, &record, &seal).await? {
        return Ok(usage_error(format!(
            "a schedule named {} exists (id {existing}); `dispatcher schedule remove {}` first to replace it",
            schedule.name, schedule.name
        )));
    }
    let key = trust.public_key().id().to_string();
    warn_unless_run(&schedules, &key).await;
    let added = schedules.get(&schedule.name).await?;
    let shown = match &added {
        Some(added) => Some(view(journal, added, None, now).await?),
        None => None,
    };
    if args.submit.json {
        if let Some(shown) = &shown {
            outln!("{}", serde_json::to_string(shown).expect("a view encodes"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}", schedule.id);
    let next = shown.and_then(|s| s.next_run).unwrap_or_else(|| "none".into());
    eprintln!(
        "cuttle: schedule {} added (--cron {:?} in {}, on {}, missed slots: {}); next run {next}; a `dispatcher serve` on this journal runs each slot once",
        schedule.name,
        schedule.cron,
        schedule.timezone,
        schedule.targets,
        crate::schedule::missed_name(schedule.missed)
    );
    Ok(ExitCode::SUCCESS)
}

/// The replicas that marked this journal lately (running ones mark it every second).
async fn running(schedules: &Schedules) -> Vec<ReplicaSeen> {
    let since = now_ms().saturating_sub(RUNNING_WITHIN.as_millis() as u64);
    schedules.replicas_since(since).await.unwrap_or_default()
}

/// Warns when no service replica runs on this journal (none marked it lately), or none that checks
/// schedules with `key`: what is added would not run.
async fn warn_unless_run(schedules: &Schedules, key: &str) {
    let seen = running(schedules).await;
    if let Some(problem) = not_run_by(&seen, key) {
        eprintln!("cuttle: warning: {problem}");
    }
}

/// Why the replicas `seen` would not run a schedule signed by `key`, if they would not.
fn not_run_by(seen: &[ReplicaSeen], key: &str) -> Option<String> {
    if seen.is_empty() {
        return Some(format!(
            "no `dispatcher serve` replica has run on this journal in the last {}s (running replicas mark it every second): nothing runs a schedule until one does; start one with the same --journal and --journal-prefix",
            RUNNING_WITHIN.as_secs()
        ));
    }
    if seen.iter().any(|replica| replica.key == key) {
        return None;
    }
    let mut keys: Vec<&str> = seen.iter().map(|r| r.key.as_str()).collect();
    keys.dedup();
    Some(format!(
        "the replicas running on this journal check schedules with key {}, not with this schedule's key {key}: they will not run it; add it with their key (--key) or through POST /v1/schedules",
        keys.join(", ")
    ))
}

/// `schedule list`.
async fn list(journal: &Journal, args: &ScheduleListArgs) -> Result<ExitCode, JournalError> {
    let schedules = Schedules::new(journal.clone());
    let all = schedules.all().await?;
    let seen = running(&schedules).await;
    let now = now_ms();
    let mut views = Vec::with_capacity(all.len());
    for schedule in &all {
        // The CLI has not the service's key: it compares key ids with the replicas'.
        let signer = schedule.signer().unwrap_or_else(|| "none".into());
        let refused = if seen.is_empty() { None } else { not_run_by(&seen, &signer) };
        views.push(view(journal, schedule, refused, now).await?);
    }
    if args.json {
        for shown in &views {
            outln!("{}", serde_json::to_string(shown).expect("a view encodes"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if seen.is_empty() && !all.is_empty() {
        eprintln!("cuttle: warning: {}", not_run_by(&seen, "").unwrap_or_default());
    }
    outln!("{:<24} {:<28} {:<24} {:<26} {:<40} {:<7}", "NAME", "WHEN", "TARGETS", "NEXT RUN", "LAST RUN", "STATE");
    for shown in &views {
        let state = match (&shown.refused, shown.paused) {
            (Some(_), _) => "refused",
            (None, true) => "paused",
            (None, false) => "active",
        };
        outln!(
            "{:<24} {:<28} {:<24} {:<26} {:<40} {:<7}",
            terminal::out(&shown.name),
            terminal::out(&format!("{} ({})", shown.cron, shown.timezone)),
            terminal::out(&targets_of(shown)),
            shown.next_run.as_deref().unwrap_or("-"),
            terminal::out(&last_run(shown)),
            state
        );
    }
    for shown in views.iter().filter(|s| s.refused.is_some()) {
        eprintln!(
            "cuttle: {} does not run: {}",
            terminal::err(&shown.name),
            terminal::err(shown.refused.as_deref().unwrap_or_default())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn targets_of(shown: &ScheduleView) -> String {
    match (&shown.pool, &shown.select) {
        (Some(pool), _) => format!("pool {pool}"),
        (_, Some(selector)) => format!("select {selector}"),
        _ => shown.targets.join(","),
    }
}

/// The last run: its slot and how its tickets ended (`completed` for one, counts for several).
fn last_run(shown: &ScheduleView) -> String {
    let Some(run) = shown.runs.first() else { return "-".into() };
    let mut ends: Vec<(String, usize)> = Vec::new();
    for ticket in &run.tickets {
        let end = match (&ticket.outcome, ticket.exit_code) {
            (Some(outcome), Some(code)) if outcome == "completed" && code != 0 => format!("exit {code}"),
            (Some(outcome), _) => outcome.clone(),
            (None, _) => ticket.state.clone(),
        };
        match ends.iter_mut().find(|(e, _)| *e == end) {
            Some((_, n)) => *n += 1,
            None => ends.push((end, 1)),
        }
    }
    let ends = match ends.as_slice() {
        [] => "nothing ran".to_owned(),
        [(end, 1)] => end.clone(),
        _ => ends.iter().map(|(end, n)| format!("{n} {end}")).collect::<Vec<_>>().join(", "),
    };
    format!("{} {ends}", run.slot_time)
}

/// The schedule of `args.name`, or the message that there is none.
fn no_such(name: &str) -> ExitCode {
    usage_error(format!("no schedule named {name} in the journal; `dispatcher schedule list` lists them"))
}

/// `schedule remove`.
async fn remove(journal: &Journal, args: &ScheduleNameArgs) -> Result<ExitCode, JournalError> {
    let Some(removed) = Schedules::new(journal.clone()).remove(&args.name).await? else {
        return Ok(no_such(&args.name));
    };
    eprintln!(
        "cuttle: schedule {} removed (id {}): no slot of it runs from now on; runs already started go on (`dispatcher cancel` stops one by its ticket)",
        args.name, removed.spec.id
    );
    Ok(ExitCode::SUCCESS)
}

/// `schedule pause`, `schedule resume`.
async fn set_paused(journal: &Journal, args: &ScheduleNameArgs, paused: bool) -> Result<ExitCode, JournalError> {
    let schedules = Schedules::new(journal.clone());
    let Some(schedule) = schedules.set_paused(&args.name, paused, now_ms()).await? else {
        return Ok(no_such(&args.name));
    };
    if paused {
        eprintln!(
            "cuttle: schedule {} paused: no slot runs until `dispatcher schedule resume {}`",
            args.name, args.name
        );
    } else {
        let next = Cadence::parse(&schedule.spec.cron, &schedule.spec.timezone, now_ms())
            .ok()
            .and_then(|cadence| cadence.next_after(schedule.cursor_ms).map(|next| cadence.rfc3339(next)));
        eprintln!(
            "cuttle: schedule {} resumed: next run {}; the slots that came while it was paused do not run",
            args.name,
            next.unwrap_or_else(|| "none".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `schedule run-now`: asks the replicas to run it now, under a slot of its own; prints the slot
/// (and the tickets, unless its targets are chosen at the slot by --select).
async fn run_now(journal: &Journal, args: &ScheduleRunArgs) -> Result<ExitCode, JournalError> {
    let schedules = Schedules::new(journal.clone());
    let request = RunRequest::new(&cli_user(), now_ms());
    let Some(schedule) = schedules.request_run(&args.name, &request).await? else { return Ok(no_such(&args.name)) };
    let slot = request.slot();
    let tickets = tickets_of(&schedule, &slot.id);
    if args.json {
        let tickets: Vec<serde_json::Value> =
            tickets.iter().map(|(ticket, target)| json!({"ticket": ticket, "target": target})).collect();
        outln!("{}", json!({"schedule": args.name, "slot": slot.id, "tickets": tickets}));
    } else {
        outln!("{}", slot.id);
        for (ticket, target) in &tickets {
            eprintln!("cuttle: ticket {ticket} on {target}");
        }
    }
    eprintln!(
        "cuttle: run-now of schedule {} asked (slot {}); a `dispatcher serve` replica on this journal runs it within a second",
        args.name, slot.id
    );
    warn_unless_run(&schedules, &schedule.signer().unwrap_or_default()).await;
    Ok(ExitCode::SUCCESS)
}

/// The tickets a slot of `schedule` gets on each target, when its targets are known beforehand.
fn tickets_of(schedule: &StoredSchedule, slot: &str) -> Vec<(String, String)> {
    let Some(Ok(routes)) = schedule.spec.targets.routes() else { return Vec::new() };
    let tickets = Tickets::Slot { schedule: &schedule.spec.id, slot };
    routes.iter().map(|route| (tickets.ticket_for(route).to_string(), route.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_run_only_by_replicas_with_its_key() {
        let seen = |key: &str| ReplicaSeen { replica: "r1".into(), key: key.into(), at_ms: 1 };
        assert!(not_run_by(&[], "k1").unwrap().contains("no `dispatcher serve` replica"));
        assert_eq!(not_run_by(&[seen("k1")], "k1"), None);
        assert!(not_run_by(&[seen("k2")], "k1").unwrap().contains("with key k2, not with this schedule's key k1"));
    }
}
