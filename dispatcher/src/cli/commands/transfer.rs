//! `dispatcher upload` and `dispatcher download`.

use crate::cli::args::TransferTarget;
use crate::cli::output::printer::{usage_error, Printer};
use crate::cli::output::progress::transfer_bar;
use crate::orchestrator::Orchestrator;
use crate::policy::Purpose;
use std::path::Path;
use std::process::ExitCode;

/// `upload` (`up`) or `download`, with a progress bar on a terminal and a summary line.
pub(crate) async fn run(
    orchestrator: &Orchestrator,
    on: &TransferTarget,
    local: &Path,
    remote: &str,
    up: bool,
) -> ExitCode {
    let route = match on.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    let policy = match on.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    let bar = transfer_bar();
    let printer = Printer::new(false).without_logs();
    let events = |event| bar.suspend(|| printer.event(event));
    let progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let run_as = on.run_as.as_deref();
    let peer =
        crate::transfer::Peer { orchestrator, route: &route, policy, events: &events, progress: &progress, run_as };
    let result = match up {
        true => crate::transfer::upload(&peer, local, remote).await,
        false => crate::transfer::download(&peer, remote, local).await,
    };
    bar.finish_and_clear();
    match result {
        Ok(done) => {
            let seconds = done.elapsed.as_secs_f64().max(0.001);
            let mib = done.size as f64 / (1024.0 * 1024.0);
            eprintln!(
                "cuttle: {} {} bytes {} {}:{remote} in {seconds:.1}s ({:.1} MiB/s), sha256 {}{}",
                if up { "uploaded" } else { "downloaded" },
                done.size,
                if up { "to" } else { "from" },
                done.route,
                (mib - done.resumed_at as f64 / (1024.0 * 1024.0)) / seconds,
                done.sha256,
                match done.resumed_at {
                    0 => String::new(),
                    at => format!(", resumed at byte {at}"),
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            let again = if error.resumable() { "; run the same command again to resume" } else { "" };
            eprintln!("cuttle: {} failed: {error}{again}", if up { "upload" } else { "download" });
            ExitCode::from(error.exit_code(&route))
        }
    }
}
