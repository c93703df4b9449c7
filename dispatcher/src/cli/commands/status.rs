//! `dispatcher status TICKET`: from the agent (`--target`, `--pool`), or from the service's
//! journal without them; `--follow` follows the script to its end.

use super::journal::JournalOptions;
use crate::cli::args::StatusArgs;
use crate::cli::output::printer::{usage_error, Printer};
use crate::cli::output::terminal;
use crate::cli::signals::sigint;
use crate::event::JsonEvent;
use crate::orchestrator::{Event, Orchestrator};
use crate::policy::Purpose;
use crate::route::Route;
use crate::service::journal::JournalEvent;
use contracts::submission::follow::LogFollower;
use contracts::submission::outcome::{exit, Outcome, OutcomeKind};
use contracts::wire::ticket::Ticket;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `status TICKET --target ID` (or `--pool P`): asks the agent; with `--follow`, follows the
/// script to its end.
pub(crate) async fn on_agent(orchestrator: &Orchestrator, args: StatusArgs) -> ExitCode {
    let t = &args.ticket;
    // Following: Ctrl-C detaches, from before the first line is shown.
    let mut ctrl_c = args.follow.then(sigint);
    let route = match t.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    let policy = match t.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    let printer = Printer::new(t.json);
    let events = |e| printer.event(e);
    let status = match orchestrator.status(&route, &t.ticket, policy, &events).await {
        Ok(status) => status,
        Err(gave_up) => {
            return printer.outcome(&Outcome::from_error(
                Some(t.ticket.clone()),
                route.name(),
                &gave_up.error,
                gave_up.to_string(),
                false,
            ))
        }
    };
    let mut follower = LogFollower::after(0);
    for line in follower.accept(&status) {
        events(Event::Log(line.clone()));
    }
    if args.follow || status.is_complete() {
        let protocol = orchestrator.status_protocol();
        let never = CancellationToken::new();
        let follow = orchestrator.follow_to_end(&route, &t.ticket, follower, status, policy, protocol, &events, &never);
        if !args.follow {
            let outcome = follow.await;
            if !t.json && outcome.outcome == OutcomeKind::Completed {
                let code = outcome.exit_code.unwrap_or_default();
                eprintln!("cuttle: ticket {} on {route} completed with exit code {code}", t.ticket);
            }
            return printer.outcome(&outcome);
        }
        return tokio::select! {
            outcome = follow => printer.outcome(&outcome),
            _ = async { ctrl_c.as_mut().expect("a handler while following").recv().await } => {
                let stop = ticket_flags(&route);
                eprintln!("cuttle: detached from ticket {}; the script goes on (`dispatcher cancel {} {stop}` stops it)", t.ticket, t.ticket);
                ExitCode::from(exit::DETACHED)
            }
        };
    }
    if t.json {
        let state = format!("{:?}", status.state).to_lowercase();
        outln!("{}", JsonEvent::Status { ticket: t.ticket.clone(), target: route.name().to_owned(), state });
    } else {
        eprintln!("cuttle: ticket {} is {:?} on {route}", t.ticket, status.state);
    }
    ExitCode::SUCCESS
}

/// The flags that name `route` to `status` and `cancel`.
pub(crate) fn ticket_flags(route: &Route) -> String {
    match route {
        Route::Agent(id) => format!("--target {id}"),
        Route::Pool(pool) | Route::Worker { pool, .. } => format!("--pool {pool}"),
    }
}

/// `status TICKET` without a target: the journal's record, its output, and (`--follow`) its
/// events until the end. Exits like `submit` once the ticket has finished.
pub(crate) async fn from_journal(journal: &JournalOptions, ticket: &Ticket, follow: bool, json: bool) -> ExitCode {
    let journal = match journal.open(Duration::ZERO) {
        Ok(journal) => journal,
        Err(e) => return usage_error(format!("status without --target reads the journal: {e}")),
    };
    let record = match journal.ticket(ticket).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            eprintln!(
                "cuttle: no ticket {ticket} in the journal (finished tickets are kept for the history retention)"
            );
            return ExitCode::from(exit::UNKNOWN_TICKET);
        }
        Err(e) => {
            eprintln!("cuttle: {e}");
            return ExitCode::from(exit::BROKER_UNREACHABLE);
        }
    };
    let mut after = "0".to_owned();
    let mut con = if follow {
        match journal.blocking_connection().await {
            Ok(con) => Some(con),
            Err(e) => {
                eprintln!("cuttle: {e}");
                return ExitCode::from(exit::BROKER_UNREACHABLE);
            }
        }
    } else {
        None
    };
    loop {
        let events = match &mut con {
            Some(con) => journal.wait_events(con, ticket, &after, Duration::from_secs(5)).await,
            None => journal.events(ticket, &after, 1000).await,
        };
        let events = match events {
            Ok(events) => events,
            Err(e) => {
                eprintln!("cuttle: {e}");
                return ExitCode::from(exit::BROKER_UNREACHABLE);
            }
        };
        if events.is_empty() && con.is_none() {
            break;
        }
        if let Some(last) = events.last() {
            after = last.id.clone();
        }
        if print_events(&events, json) {
            // The exit code `submit` would have given, as recorded with the result.
            let finished = journal.ticket(ticket).await.ok().flatten().and_then(|r| r.finished);
            return ExitCode::from(finished.map_or(exit::NO_ANSWER, |f| f.process_exit));
        }
    }
    // Not finished (without --follow): say where it stands.
    let (ticket, target, state) = (record.submission.ticket, record.submission.target, record.state);
    if json {
        outln!("{}", JsonEvent::Status { ticket, target, state });
    } else {
        eprintln!("cuttle: ticket {ticket} is {state} on {target}");
    }
    ExitCode::SUCCESS
}

/// Prints journal events as `submit` prints events; gives whether the result was among them.
fn print_events(events: &[JournalEvent], json: bool) -> bool {
    for JournalEvent { event, .. } in events {
        if json {
            outln!("{event}");
        } else {
            match event {
                JsonEvent::Log { stream, text, .. } => match stream.as_str() {
                    "stdout" => {
                        let _ = writeln!(std::io::stdout().lock(), "{}", terminal::out(text));
                    }
                    "stderr" => eprintln!("{}", terminal::err(text)),
                    _ => eprintln!("cuttle: [agent] {}", terminal::err(text)),
                },
                JsonEvent::Retry { request, attempt, error, .. } => {
                    eprintln!("cuttle: {request} failed (attempt {attempt}), retrying: {}", terminal::err(error))
                }
                JsonEvent::Notice { message, .. } => eprintln!("cuttle: {}", terminal::err(message)),
                JsonEvent::Warning { message, .. } => eprintln!("cuttle: warning: {}", terminal::err(message)),
                JsonEvent::Result { outcome, error, .. } if *outcome != OutcomeKind::Completed => eprintln!(
                    "cuttle: {}: {}",
                    outcome.name(),
                    terminal::err(error.as_deref().unwrap_or("no reason given"))
                ),
                _ => {}
            }
        }
        if matches!(event, JsonEvent::Result { .. }) {
            return true;
        }
    }
    false
}
