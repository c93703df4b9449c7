//! `dispatcher cancel TICKET`.

use crate::cli::args::TicketArgs;
use crate::cli::output::printer::{usage_error, Printer};
use crate::orchestrator::Orchestrator;
use crate::policy::Purpose;
use contracts::submission::outcome::OutcomeKind;
use std::process::ExitCode;

/// `dispatcher cancel TICKET`: cancels the script and follows it until it has stopped.
pub(crate) async fn run(orchestrator: &Orchestrator, args: TicketArgs) -> ExitCode {
    let route = match args.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    let policy = match args.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    let printer = Printer::new(args.json).without_logs();
    let outcome = orchestrator.cancel(&route, &args.ticket, policy, &|e| printer.event(e)).await;
    if !args.json && outcome.outcome == OutcomeKind::Completed {
        eprintln!("cuttle: the script had already ended with exit code {}", outcome.exit_code.unwrap_or_default());
    }
    printer.outcome(&outcome)
}
