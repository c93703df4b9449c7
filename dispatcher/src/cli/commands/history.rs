//! `dispatcher history`: tickets from the service's journal, newest first.

use super::journal::JournalOptions;
use crate::cli::args::HistoryArgs;
use crate::cli::output::printer::usage_error;
use crate::service::api::{since_millis, TicketView, MAX_HISTORY_LIMIT};
use crate::service::journal::HistoryQuery;
use contracts::submission::outcome::{exit, OutcomeKind};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// `dispatcher history`.
pub(crate) async fn run(journal: &JournalOptions, args: HistoryArgs) -> ExitCode {
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
    let now = contracts::time::unix_millis(std::time::SystemTime::now());
    for record in &records {
        let view = TicketView::from_record(record);
        if args.json {
            outln!("{}", serde_json::to_string(&view).expect("view encodes"));
            continue;
        }
        let age = contracts::time::short(Duration::from_secs(now.saturating_sub(view.submitted_at) / 1000));
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
