//! `dispatcher submit --detach`.

use super::journal::JournalOptions;
use crate::cli::args::SubmitArgs;
use crate::cli::output::printer::usage_error;
use crate::event::JsonEvent;
use crate::plan::{Plan, Tickets};
use contracts::submission::outcome::exit;
use std::process::ExitCode;
use std::time::Duration;

/// `submit --detach`: records the submission in the journal and returns; a `dispatcher serve`
/// on the same journal runs and follows it.
pub(crate) async fn run(journal: &JournalOptions, args: &SubmitArgs) -> ExitCode {
    let retry = &args.retry;
    let journal = match journal.open(Duration::ZERO) {
        Ok(journal) => journal,
        Err(e) => return usage_error(format!("--detach needs a journal: {e}")),
    };
    let routes = match args.target.routes() {
        Ok(routes) => routes,
        Err(e) => return usage_error(e),
    };
    let spec = match super::submit::script_spec(args) {
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
    let who = super::journal::cli_user();
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
