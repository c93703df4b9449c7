//! `dispatcher submit`: runs a script on one target and follows it to its end, or on several
//! (a fan-out) with prefixed output, a progress bar on a terminal and a summary.

use super::fleet;
use super::status::ticket_flags;
use crate::budget::Limits;
use crate::cli::args::{IsolationArg, SecretArg, ShellArg, SubmitArgs};
use crate::cli::output::printer::{usage_error, Printer};
use crate::cli::output::progress::FanoutProgress;
use crate::cli::signals::interrupt_on_ctrl_c;
use crate::event::JsonEvent;
use crate::fanout::{self, NotStarted, Progress, TargetResult};
use crate::orchestrator::Orchestrator;
use crate::plan::{self, Plan, ScriptDraft, ScriptError, ScriptInputs};
use crate::route::Route;
use crate::rpc::RpcConfig;
use contracts::submission::negotiate::ScriptProtocol;
use contracts::submission::outcome::{Outcome, OutcomeKind};
use contracts::submission::retry::Policies;
use contracts::wire::approvals::check_submitter;
use contracts::wire::messages::{Isolation, ScriptSpec, Shell, MAX_SCRIPT_SPEC_BYTES};
use contracts::wire::ticket::Ticket;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `submit` without `--detach`.
pub(crate) async fn run(orchestrator: &Orchestrator, rpc_config: &RpcConfig, args: SubmitArgs) -> ExitCode {
    // Listened for from the first step that may wait on the broker (`--select` reads the fleet).
    let interrupt = interrupt_on_ctrl_c();
    let routes = match (&args.select, &rpc_config.trust) {
        (Some(selector), Some(trust)) => {
            let resolved = tokio::select! {
                resolved = fleet::resolve(rpc_config, trust, selector, args.json) => resolved,
                _ = interrupt.cancelled() => {
                    let printer = Printer::new(args.json).without_logs();
                    return printer.outcome(&Outcome::not_sent(None, &format!("--select {selector}")));
                }
            };
            match resolved {
                Ok(routes) => routes,
                Err(code) => return code,
            }
        }
        (Some(_), None) => return usage_error(crate::error::RpcError::NoKey),
        (None, _) => match args.target.routes() {
            Ok(routes) => routes,
            Err(e) => return usage_error(e),
        },
    };
    let spec = match script_spec(&args) {
        Ok(spec) => spec,
        Err(e) => return usage_error(e),
    };
    let config = match args.retry.config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let plan = match Plan::new(routes, spec, &args.retry.choice(), &config) {
        Ok(plan) => plan,
        Err(e) => return usage_error(e),
    };
    let (mut spec, planned) = (plan.spec, plan.targets.into_iter().map(|t| (t.route, t.policies)).collect::<Vec<_>>());
    spec.submitter = Some(super::journal::cli_user()).filter(|who| check_submitter(who).is_ok());
    if let [(route, policies)] = planned.as_slice() {
        let printer = Printer::new(args.json);
        let outcome = orchestrator.submit(route, spec, *policies, &|e| printer.event(e), &interrupt).await;
        let code = printer.outcome(&outcome);
        if let (OutcomeKind::Unknown, Some(ticket), false) = (outcome.outcome, &outcome.ticket, args.json) {
            eprintln!("cuttle: {}", unknown_ticket_hint(orchestrator, route, ticket));
        }
        return code;
    }
    let limits =
        Limits { max_parallel: args.max_parallel, max_errors: args.max_errors, abort_on_error: args.abort_on_error };
    if let Err(e) = limits.validate() {
        return usage_error(e);
    }
    fan_out(orchestrator, planned, spec, limits, args.json, &interrupt).await
}

/// Why `submit`'s flags describe no script that can be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("cannot read script file {}: {source}", path.display())]
    Script { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Spec(#[from] ScriptError<InputError>),
}

/// Why the files or secrets of `submit`'s flags cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    #[error("cannot read secret file {}: {source}", path.display())]
    SecretFile { path: PathBuf, source: std::io::Error },
    #[error("{} line {line}: expected NAME=VALUE", path.display())]
    SecretLine { path: PathBuf, line: usize },
    #[error("secret {name} is given twice (again in {from})")]
    SecretTwice { name: String, from: String },
    #[error("{} is {size} bytes, over the {} bytes one command can carry; send it with `dispatcher upload` first", path.display(), MAX_SCRIPT_SPEC_BYTES)]
    FileTooLarge { path: PathBuf, size: u64 },
    #[error("cannot read file {}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
}

/// The script spec `submit`'s flags describe: the script file read, then (once the script is
/// checked) the files and secret files.
pub(crate) fn script_spec(args: &SubmitArgs) -> Result<ScriptSpec, SubmitError> {
    let script = match &args.script {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|source| SubmitError::Script { path: path.clone(), source })?
        }
        None => args.command.join(" "),
    };
    let draft = ScriptDraft {
        script,
        shell: match args.shell {
            ShellArg::Sh => Shell::Sh,
            ShellArg::Bash => Shell::Bash,
        },
        args: args.args.clone(),
        env: args.env.iter().cloned().collect(),
        isolation: match args.isolation {
            IsolationArg::None => Isolation::None,
            IsolationArg::Full => Isolation::Full,
        },
        mutex: args.mutex.clone(),
        run_as: args.bounds.run_as.clone(),
        limits: contracts::wire::messages::ScriptLimits {
            memory_max: args.bounds.memory_max,
            cpu_max: args.bounds.cpu_max,
            tasks_max: args.bounds.tasks_max,
            file_size_max: args.bounds.file_size_max,
        },
    };
    let spec = plan::script_spec(draft, || {
        let files = files_of(args)?;
        let secret_env = secrets_of(args)?;
        Ok(ScriptInputs { files, secret_env, mutex_timeout: args.mutex_timeout, timeout: args.timeout })
    })?;
    Ok(spec)
}

/// The secrets of `--secret-env` and `--secret-env-file`; a name given twice is refused.
fn secrets_of(args: &SubmitArgs) -> Result<contracts::wire::messages::Secrets, InputError> {
    let mut given: Vec<(String, String, String)> = args
        .secret_env
        .iter()
        .map(|SecretArg { name, value }| (name.clone(), value.clone(), "--secret-env".to_owned()))
        .collect();
    for path in &args.secret_env_file {
        let text =
            std::fs::read_to_string(path).map_err(|source| InputError::SecretFile { path: path.clone(), source })?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) =
                line.split_once('=').ok_or_else(|| InputError::SecretLine { path: path.clone(), line: number + 1 })?;
            given.push((name.trim().to_owned(), value.to_owned(), path.display().to_string()));
        }
    }
    let mut secrets = contracts::wire::messages::Secrets::default();
    for (name, value, from) in given {
        if secrets.insert(name.clone(), value).is_some() {
            return Err(InputError::SecretTwice { name, from });
        }
    }
    Ok(secrets)
}

/// The files of `--file`, read whole (each must fit in one command).
fn files_of(args: &SubmitArgs) -> Result<Vec<contracts::wire::messages::ScriptFile>, InputError> {
    let mut files = Vec::with_capacity(args.files.len());
    for file in &args.files {
        let size = std::fs::metadata(&file.local).map(|m| m.len()).unwrap_or(0);
        if size > MAX_SCRIPT_SPEC_BYTES as u64 {
            return Err(InputError::FileTooLarge { path: file.local.clone(), size });
        }
        let content =
            std::fs::read(&file.local).map_err(|source| InputError::File { path: file.local.clone(), source })?;
        files.push(contracts::wire::messages::ScriptFile { name: file.name.clone(), content });
    }
    Ok(files)
}

/// What the user can do about a ticket whose outcome is unknown: follow it to its end from
/// another command, or stop it (as `--protocol v1` for a legacy agent's ticket).
fn unknown_ticket_hint(orchestrator: &Orchestrator, route: &Route, ticket: &Ticket) -> String {
    let protocol = match orchestrator.script_protocol_of(route) {
        ScriptProtocol::V1 => " --protocol v1",
        ScriptProtocol::V2 => "",
    };
    let on = ticket_flags(route);
    format!(
        "`dispatcher{protocol} status {ticket} {on} --follow` follows it to its end; `dispatcher{protocol} cancel {ticket} {on}` stops it"
    )
}

/// Runs one script on several targets: prefixed output, a progress bar on a terminal, and a
/// summary table (or, with `--json`, one `result` event per target and a `summary` last).
async fn fan_out(
    orchestrator: &Orchestrator,
    planned: Vec<(Route, Policies)>,
    spec: ScriptSpec,
    limits: Limits,
    json: bool,
    interrupt: &CancellationToken,
) -> ExitCode {
    let resolved = limits.resolve(planned.len());
    eprintln!(
        "cuttle: {} targets, {} at a time{}",
        planned.len(),
        resolved.parallel,
        match resolved.tolerated_failures {
            None => String::new(),
            Some(tolerated) => format!(
                ", no new target once more than {tolerated} failed{}",
                if limits.abort_on_error { " (running ones cancelled)" } else { "" }
            ),
        }
    );
    let bar = if json { None } else { FanoutProgress::on_terminal(planned.len()) };
    let sink_for = |route: &Route| -> fanout::TargetSink {
        let printer = Printer::new(json).for_target(Some(route.name().to_owned())).with_progress(bar.clone());
        Arc::new(move |event| printer.event(event))
    };
    let progress: Arc<dyn Fn(Progress) + Send + Sync> = {
        let bar = bar.clone();
        Arc::new(move |change: Progress| {
            match &change {
                Progress::Finished(report) if json => {
                    Printer::new(json).without_logs().outcome(&report.outcome);
                }
                Progress::NotStarted { target, reason } if json => {
                    outln!("{}", JsonEvent::Skipped { target: target.clone(), reason: *reason });
                }
                _ => {}
            }
            if let Some(bar) = &bar {
                bar.update(&change);
            }
        })
    };
    let results = fanout::submit_many(orchestrator, planned, spec, limits, sink_for, progress, interrupt).await;
    if let Some(bar) = &bar {
        bar.finish();
    }
    let failed = results.iter().filter(|r| matches!(r, TargetResult::Ran(report) if fanout::failed(report))).count();
    let skipped = results.iter().filter(|r| matches!(r, TargetResult::NotStarted { .. })).count();
    if json {
        outln!("{}", JsonEvent::Summary { targets: results.len(), failed, skipped });
    } else {
        print_summary(&results);
        let reason = results.iter().find_map(|r| match r {
            TargetResult::NotStarted { reason: NotStarted::ErrorBudget, .. } => Some(" (error budget spent)"),
            TargetResult::NotStarted { reason: NotStarted::Interrupted, .. } => Some(" (interrupted)"),
            TargetResult::Ran(_) => None,
        });
        eprintln!("{} targets, {failed} failed, {skipped} not started{}", results.len(), reason.unwrap_or_default());
    }
    ExitCode::from(fanout::exit_code(&results))
}

/// The fan-out's summary table on stderr: one row per target, in the order given.
fn print_summary(results: &[TargetResult]) {
    eprintln!("{:<24} {:<11} {:>9} {:>10} {:>7}", "TARGET", "OUTCOME", "EXIT CODE", "DURATION", "RETRIES");
    for result in results {
        let r = match result {
            TargetResult::Ran(report) => report,
            TargetResult::NotStarted { target, reason } => {
                eprintln!("{:<24} {:<11} {:>9} {:>10} {:>7}", target, "not started", "-", "-", "-");
                eprintln!("  {target}: {}", reason.describe());
                continue;
            }
        };
        let outcome = format!("{:?}", r.outcome.outcome).to_lowercase();
        // The process exit code it stands for, never the agent's negative wire code.
        let code = r.outcome.process_exit;
        let duration = format!("{:.1}s", r.duration.as_secs_f64());
        eprintln!("{:<24} {:<11} {:>9} {:>10} {:>7}", r.target, outcome, code, duration, r.retries);
        if let (true, Some(error)) = (fanout::failed(r), &r.outcome.error) {
            eprintln!("  {}: {error}", r.target);
        }
    }
}
