//! `dispatcher bench`.

use crate::bench;
use crate::cli::args::BenchArgs;
use crate::cli::output::printer::{usage_error, Printer};
use crate::error::RpcError;
use crate::orchestrator::Orchestrator;
use crate::policy::Purpose;
use contracts::submission::outcome::Outcome;
use std::process::ExitCode;

/// `dispatcher bench`: many `echo hello` scripts over the whole path, with latency and throughput.
pub(crate) async fn run(orchestrator: &Orchestrator, args: BenchArgs) -> ExitCode {
    let route = match args.target.route() {
        Ok(route) => route,
        Err(e) => return usage_error(e),
    };
    if args.count == 0 {
        return usage_error("--count must be at least 1");
    }
    let policy = match args.retry.policy(&route, Purpose::Deployment) {
        Ok(policy) => policy,
        Err(e) => return usage_error(e),
    };
    // Connect first, so that an unreachable broker is one clear error rather than N.
    if let Err(gave_up) = orchestrator.capabilities(&route, policy, &|_| {}).await {
        if !matches!(gave_up.error, RpcError::Agent { .. }) {
            return Printer::new(false).without_logs().outcome(&Outcome::from_error(
                None,
                route.name(),
                &gave_up.error,
                gave_up.to_string(),
                false,
            ));
        }
    }
    let report = bench::run(orchestrator, &route, args.count, args.concurrency, policy).await;
    if args.json {
        outln!("{}", serde_json::to_string(&report).expect("report encodes"));
    } else {
        outln!("scripts:     {} ({} at a time) on {route}", report.count, report.concurrency);
        outln!("latency:     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms", report.p50_ms, report.p90_ms, report.p99_ms);
        outln!("throughput:  {:.1} scripts/s", report.throughput_per_s);
        outln!("errors:      {}", report.errors);
    }
    if let Some(error) = &report.first_error {
        eprintln!("cuttle: first error: {error}");
    }
    if report.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
