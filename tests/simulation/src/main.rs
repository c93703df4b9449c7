//! `simulation --seeds N [--first-seed S] [--json]`: simulates N seeds; on a violation prints
//! the seed and the end of its trace and exits 1. `--trace` prints every event of the seeds;
//! `--exclude` leaves out store faults whose findings are still open (see CONTRIBUTING.md, "The
//! simulator").
#![forbid(unsafe_code)]

use std::process::ExitCode;

const USAGE: &str =
    "usage: simulation --seeds N [--first-seed S] [--json] [--trace] [--exclude failover,restart-empty]";

fn main() -> ExitCode {
    let mut seeds = None;
    let mut first = 0;
    let mut json = false;
    let mut trace = false;
    let mut exclude = simulation::world::Exclude::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| match args.next().map(|v| v.parse::<u64>()) {
            Some(Ok(n)) => Ok(n),
            _ => Err(format!("{name} needs a number")),
        };
        let parsed = match arg.as_str() {
            "--seeds" => number("--seeds").map(|n| seeds = Some(n)),
            "--first-seed" => number("--first-seed").map(|n| first = n),
            "--json" => {
                json = true;
                Ok(())
            }
            "--exclude" => match args.next().map(|list| simulation::world::Exclude::parse(&list)) {
                Some(Ok(parsed)) => {
                    exclude = parsed;
                    Ok(())
                }
                Some(Err(error)) => Err(error),
                None => Err("--exclude needs a list of faults".into()),
            },
            "--trace" => {
                trace = true;
                Ok(())
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(error) = parsed {
            eprintln!("simulation: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(seeds) = seeds else {
        eprintln!("simulation: --seeds is required\n{USAGE}");
        return ExitCode::from(2);
    };
    if trace {
        for seed in first..first.saturating_add(seeds) {
            for line in simulation::simulate(seed, &exclude).trace {
                println!("{seed} {line}");
            }
        }
        return ExitCode::SUCCESS;
    }
    let summary = simulation::run(first, seeds, &exclude);
    if json {
        println!("{}", summary.json());
    } else {
        let c = &summary.counts;
        println!(
            "{} seeds from {first}: {} scripts, {} dropped, {} duplicated, {} reordered, {} crashes, {} store losses, {} violations (trace digest {:016x})",
            summary.seeds, c.scripts, c.dropped, c.duplicated, c.reordered, c.crashes, c.store_losses, summary.violations, summary.trace_digest
        );
    }
    let Some(failure) = summary.failure else { return ExitCode::SUCCESS };
    eprintln!("simulation: seed {} violates an invariant:", failure.seed);
    for violation in &failure.violations {
        eprintln!("  {violation}");
    }
    eprintln!(
        "last {} events of seed {} (replay: --seeds 1 --first-seed {}):",
        failure.trace.len(),
        failure.seed,
        failure.seed
    );
    for line in &failure.trace {
        eprintln!("  {line}");
    }
    ExitCode::FAILURE
}
