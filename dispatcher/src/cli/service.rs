//! The commands around the service and its journal: `serve`, `history`, `submit --detach`, and
//! `status TICKET` read from the journal.

use super::{script_spec, terminal, usage_error, SubmitArgs};
use crate::event::JsonEvent;
use crate::orchestrator::Orchestrator;
use crate::outcome::{exit, OutcomeKind};
use crate::plan::{self, Plan, Tickets};
use crate::service::api::{since_millis, TicketView, MAX_HISTORY_LIMIT};
use crate::service::journal::{HistoryQuery, Journal, JournalEvent};
use crate::service::site::{Authority, PublicUrl};
use crate::service::tokens::ApiTokens;
use crate::service::{Service, ServiceConfig};
use clap::Args;
use contracts::Ticket;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the journal is (global flags).
#[derive(Clone, Debug)]
pub struct JournalOptions {
    pub url: Option<String>,
    pub prefix: String,
}

impl JournalOptions {
    /// The journal, or why there is none.
    fn open(&self, retention: Duration) -> Result<Journal, String> {
        let url = self.url.as_deref().ok_or(
            "no journal configured: give --journal redis://HOST:PORT (or CUTTLE_JOURNAL_URL), the one `dispatcher serve` uses",
        )?;
        Journal::open(url, &self.prefix, retention).map_err(|e| e.to_string())
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Without --api-tokens only a loopback address is accepted.
    #[arg(long, env = "CUTTLE_LISTEN", default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// File of `NAME TOKEN` lines: requests to /v1 need `Authorization: Bearer TOKEN`, and the
    /// journal records NAME as who submitted. Without it the API is open to local users only.
    #[arg(long)]
    pub api_tokens: Option<PathBuf>,
    /// How long finished tickets (and their output) stay in the journal.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,
    /// How long a replica's claim on a ticket lasts without renewal: how soon another replica
    /// takes over the tickets of one that died.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// This replica's name in the journal's leases [default: host name and process id]. Restarted
    /// under the same name, a replica resumes its tickets at once rather than after --lease-ttl.
    #[arg(long)]
    pub replica_id: Option<String>,
    /// Machine policies file (TOML), as for `submit`.
    #[arg(long, env = "CUTTLE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A name the service answers to besides its listen address, `NAME[:PORT]` (any port
    /// without one): the name of a proxy in front of it, a DNS name clients use (repeatable; the
    /// variable takes `A,B:8080`). Requests naming another host (Host header) get 421: a web
    /// page whose own name resolves to the service's address cannot read it.
    #[arg(long = "allowed-host", env = "CUTTLE_ALLOWED_HOSTS", value_delimiter = ',', value_parser = Authority::parse)]
    pub allowed_hosts: Vec<Authority>,
    /// The URL browsers reach the service at when a proxy stands in front of it, e.g.
    /// `https://cuttle.example.com`: its host is allowed, its origin is the service's own, and
    /// with https the login cookie is `Secure`.
    #[arg(long, env = "CUTTLE_PUBLIC_URL", value_parser = PublicUrl::parse)]
    pub public_url: Option<PublicUrl>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only tickets of this agent or pool.
    #[arg(long)]
    pub target: Option<String>,
    /// Only tickets that ended so: completed, cancelled, unknown, failed.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only tickets submitted since: a duration ago (`2h`) or unix milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// One JSON object per ticket and line.
    #[arg(long)]
    pub json: bool,
}

/// `dispatcher serve`.
pub async fn serve(orchestrator: &Orchestrator, journal: &JournalOptions, args: ServeArgs) -> ExitCode {
    if args.lease_ttl < Duration::from_secs(1) {
        return usage_error("--lease-ttl must be at least 1s");
    }
    let journal = match journal.open(args.history_retention) {
        Ok(journal) => journal,
        Err(e) => return usage_error(e),
    };
    let tokens = match args.api_tokens.as_deref().map(ApiTokens::load).transpose() {
        Ok(tokens) => tokens,
        Err(e) => return usage_error(e),
    };
    let policies = match plan::load_policies(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let open = tokens.is_none();
    let declared_names = !args.allowed_hosts.is_empty() || args.public_url.is_some();
    let replica = args.replica_id.unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let config = ServiceConfig {
        listen: args.listen,
        tokens,
        journal,
        replica,
        lease_ttl: args.lease_ttl,
        policies,
        allowed_hosts: args.allowed_hosts,
        public_url: args.public_url,
    };
    let shutdown = CancellationToken::new();
    let service = match Service::bind(config, orchestrator.clone(), shutdown.clone()).await {
        Ok(service) => service,
        Err(e) => return usage_error(e),
    };
    let addr = service.local_addr();
    if open {
        eprintln!("cuttle: no --api-tokens: the API is open to anyone on this machine, so it listens on loopback only");
        if declared_names {
            eprintln!(
                "cuttle: warning: no --api-tokens, yet --allowed-host or --public-url names a way in: whoever reaches the service through it can run scripts; give --api-tokens FILE unless only you can"
            );
        }
    }
    eprintln!("cuttle: listening on http://{addr}");
    eprintln!(
        "cuttle: answers to {}; a request naming another host gets 421 (add names with --allowed-host)",
        service.answers_to()
    );
    tokio::spawn(async move {
        stop_signal().await;
        eprintln!("cuttle: stopping; unfinished tickets stay in the journal for the next replica");
        shutdown.cancel();
    });
    match service.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatcher: the service failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "dispatcher".into())
}

/// `submit --detach`: records the submission in the journal and returns; a `dispatcher serve`
/// on the same journal runs and follows it.
pub async fn submit_detached(journal: &JournalOptions, args: &SubmitArgs) -> ExitCode {
    let retry = &args.retry;
    let journal = match journal.open(Duration::ZERO) {
        Ok(journal) => journal,
        Err(e) => return usage_error(format!("--detach needs a journal: {e}")),
    };
    let routes = match args.target.routes() {
        Ok(routes) => routes,
        Err(e) => return usage_error(e),
    };
    let spec = match script_spec(args) {
        Ok(spec) => spec,
        Err(e) => return usage_error(e),
    };
    let config = match retry.config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let plan = match Plan::new(routes, spec, &retry.choice(), &config) {
        Ok(plan) => plan,
        Err(e) => return usage_error(e),
    };
    let who = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    for (submission, target) in plan.submissions(Tickets::Fresh, &who).into_iter().zip(&plan.targets) {
        let route = &target.route;
        // A fresh random ticket: never recorded before.
        if let Err(e) = journal.submit(&submission).await {
            eprintln!("cuttle: {e}");
            return ExitCode::from(exit::BROKER_UNREACHABLE);
        }
        if args.json {
            outln!("{}", JsonEvent::Ticket { ticket: submission.ticket.clone(), target: submission.target.clone() });
        } else {
            outln!("{}", submission.ticket);
            eprintln!(
                "cuttle: ticket {} on {route} recorded; a `dispatcher serve` on this journal runs it",
                submission.ticket
            );
        }
    }
    ExitCode::SUCCESS
}

/// `status TICKET` without a target: the journal's record, its output, and (`--follow`) its
/// events until the end. Exits like `submit` once the ticket has finished.
pub async fn status_from_journal(journal: &JournalOptions, ticket: &Ticket, follow: bool, json: bool) -> ExitCode {
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
        match journal.connection().await {
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
    let view = TicketView::from_record(&record);
    if json {
        let (ticket, target) = (record.submission.ticket.clone(), view.target);
        outln!("{}", JsonEvent::Status { ticket, target, state: view.state });
    } else {
        eprintln!("cuttle: ticket {} is {} on {}", view.ticket, view.state, view.target);
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

/// `dispatcher history`.
pub async fn history(journal: &JournalOptions, args: HistoryArgs) -> ExitCode {
    let journal = match journal.open(Duration::ZERO) {
        Ok(journal) => journal,
        Err(e) => return usage_error(format!("history reads the journal: {e}")),
    };
    let outcome = match args.outcome.as_deref().map(|o| serde_json::from_value::<OutcomeKind>(json!(o))).transpose() {
        Ok(outcome) => outcome,
        Err(_) => return usage_error("--outcome is one of completed, cancelled, unknown, failed"),
    };
    let since_ms = match args.since.as_deref().map(since_millis).transpose() {
        Ok(since) => since,
        Err(e) => return usage_error(e),
    };
    if args.limit == 0 || args.limit > MAX_HISTORY_LIMIT {
        return usage_error(format!("--limit must be 1 to {MAX_HISTORY_LIMIT}"));
    }
    let query = HistoryQuery { target: args.target.clone(), outcome, since_ms, limit: args.limit };
    let records = match journal.history(&query).await {
        Ok(records) => records,
        Err(e) => {
            eprintln!("cuttle: {e}");
            return ExitCode::from(exit::BROKER_UNREACHABLE);
        }
    };
    if !args.json {
        outln!("{:<36} {:<24} {:<9} {:<10} {:>9} {:>8}", "TICKET", "TARGET", "STATE", "OUTCOME", "EXIT CODE", "AGE");
    }
    let now = contracts::unix_millis(std::time::SystemTime::now());
    for record in &records {
        let view = TicketView::from_record(record);
        if args.json {
            outln!("{}", serde_json::to_string(&view).expect("view encodes"));
            continue;
        }
        let age = crate::retry::short(Duration::from_secs(now.saturating_sub(view.submitted_at) / 1000));
        outln!(
            "{:<36} {:<24} {:<9} {:<10} {:>9} {:>8}",
            view.ticket,
            view.target,
            view.state,
            record.finished.as_ref().map_or("-", |f| f.outcome.name()),
            view.exit_code.map_or("-".to_owned(), |c| c.to_string()),
            age.to_string(),
        );
    }
    ExitCode::SUCCESS
}
