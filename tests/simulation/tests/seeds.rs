//! The simulator keeps every invariant over many seeds, replays a seed exactly, and its binary
//! does what its flags say.

use simulation::world::Exclude;
use std::process::Command;

/// Every fault on, the store's failovers and restarts without persistence included.
#[test]
fn a_thousand_seeds_keep_every_invariant() {
    let summary = simulation::run(0, 1_000, &Exclude::default());
    if let Some(failure) = &summary.failure {
        panic!("seed {} violates {:?}:\n{}", failure.seed, failure.violations, failure.trace.join("\n"));
    }
    assert_eq!(summary.seeds, 1_000);
    let c = summary.counts;
    assert!(c.scripts > 1_000 && c.dropped > 0 && c.duplicated > 0 && c.reordered > 0 && c.crashes > 0, "{c:?}");
    assert!(c.store_losses > 0, "{c:?}");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let exclude = Exclude::default();
    let first = simulation::run(40, 30, &exclude);
    let again = simulation::run(40, 30, &exclude);
    assert_eq!(first.json(), again.json());
    assert_ne!(simulation::run(41, 30, &exclude).trace_digest, first.trace_digest);
    assert_eq!(simulation::simulate(42, &exclude).trace, simulation::simulate(42, &exclude).trace);
}

#[test]
fn store_losses_are_simulated_when_not_excluded() {
    let summary = simulation::run(0, 40, &Exclude::default());
    assert!(summary.counts.store_losses > 0, "{:?}", summary.counts);
}

fn simulator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_simulation")).args(args).output().expect("the simulation binary runs")
}

fn field(json: &str, name: &str) -> String {
    let start =
        json.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("{name} missing from {json}")) + name.len() + 3;
    json[start..].split([',', '}']).next().unwrap().trim_matches('"').to_owned()
}

#[test]
fn the_binary_reports_one_json_line_and_replays_a_seed() {
    let run = simulator(&["--seeds", "25", "--first-seed", "100", "--json", "--exclude", "failover,restart-empty"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let json = String::from_utf8(run.stdout).unwrap();
    assert_eq!(json.lines().count(), 1, "{json}");
    for name in [
        "seeds",
        "scripts",
        "dropped",
        "duplicated",
        "reordered",
        "crashes",
        "store_losses",
        "violations",
        "trace_digest",
    ] {
        field(&json, name);
    }
    assert_eq!(field(&json, "seeds"), "25");
    assert_eq!(field(&json, "violations"), "0");
    assert_eq!(field(&json, "store_losses"), "0", "--exclude leaves the store's losses out");
    let again = simulator(&["--seeds", "25", "--first-seed", "100", "--json", "--exclude", "failover,restart-empty"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), json);
    let other = simulator(&["--seeds", "25", "--first-seed", "101", "--json", "--exclude", "failover,restart-empty"]);
    assert_ne!(field(&String::from_utf8(other.stdout).unwrap(), "trace_digest"), field(&json, "trace_digest"));
}

#[test]
fn the_binary_prints_a_trace_and_refuses_bad_flags() {
    let trace = simulator(&["--seeds", "1", "--first-seed", "7", "--trace"]);
    assert!(trace.status.success());
    let text = String::from_utf8(trace.stdout).unwrap();
    assert!(text.lines().count() > 5 && text.lines().all(|l| l.starts_with("7 ")), "{text}");
    assert!(text.contains("submission 0 of sim-7-0"), "{text}");
    let plain = simulator(&["--seeds", "3"]);
    assert!(String::from_utf8(plain.stdout).unwrap().starts_with("3 seeds from 0:"));
    for bad in [&["--json"][..], &["--seeds", "x"], &["--seeds", "1", "--exclude", "nothing"], &["--what"]] {
        let refused = simulator(bad);
        assert_eq!(refused.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8(refused.stderr).unwrap().contains("usage: simulation"), "{bad:?}");
    }
}

/// The simulator built with the simulation-only `feature` (a build of its own beside this one:
/// the mutations share one target dir, one build at a time), run with `args`.
fn mutated_simulator(feature: &str, args: &[&str]) -> std::process::Output {
    static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("the target dir").join("sim-mutations");
    let binary = target.join(format!("simulation-{feature}"));
    {
        let _one_build_at_a_time = BUILDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--locked", "-p", "simulation", "--features", feature, "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(built.success(), "the {feature} build failed");
        std::fs::copy(target.join("debug/simulation"), &binary).expect("the build's binary");
    }
    Command::new(&binary).args(args).output().expect("the mutated simulator runs")
}

/// Asserts that the simulator `run` failed on a seed with `violation`, said so and how to replay
/// it; the seed.
fn found_violation(run: std::process::Output, violation: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(violation) && stderr.contains("violates an invariant"), "{stderr}");
    assert!(stderr.contains("replay: --seeds 1 --first-seed"), "{stderr}");
    assert_ne!(field(&String::from_utf8(run.stdout).unwrap(), "violations"), "0");
    let seed = stderr.split("seed ").nth(1).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse().ok());
    seed.unwrap_or_else(|| panic!("no seed named: {stderr}"))
}

/// With the claim switched off (`--features break-claim`, a build of its own beside this one),
/// the simulator finds a ticket run twice within a few hundred seeds, and says which seed.
#[test]
fn the_simulator_finds_a_double_run_when_the_claim_is_switched_off() {
    let run = mutated_simulator("break-claim", &["--seeds", "300", "--json", "--exclude", "failover,restart-empty"]);
    let seed = found_violation(run, "runs twice");
    println!("break-claim: a double run at seed {seed}");
}

/// A step of the agent's flow broken, not a decision (`--features break-flow-epoch`): after the
/// store restarted empty, a start first issued before is claimed in the new data without being
/// checked against it, and runs a second time. The simulator finds it (seed 88), every fault on.
#[test]
fn the_simulator_finds_a_double_run_when_the_flow_skips_the_check_after_a_store_loss() {
    let seed = found_violation(mutated_simulator("break-flow-epoch", &["--seeds", "400", "--json"]), "runs twice");
    println!("break-flow-epoch: a double run at seed {seed}");
}

/// A step of the agent's flow broken (`--features break-flow-confirm`): the script starts before
/// the replicas confirmed its claim, a failover loses the claim, and a repeat of the start claims
/// and runs it again. The simulator finds it (seed 175), every fault on.
#[test]
fn the_simulator_finds_a_double_run_when_the_flow_launches_before_the_confirmation() {
    let seed = found_violation(mutated_simulator("break-flow-confirm", &["--seeds", "400", "--json"]), "runs twice");
    println!("break-flow-confirm: a double run at seed {seed}");
}

/// Sessions are simulated as the dispatcher's RPC and the agent make them: agreed in signed
/// requests, used, lost when an agent crashes, refused then, and the request sent again signed.
#[test]
fn sessions_are_agreed_and_lost_with_a_crash_and_the_refused_request_goes_again_signed() {
    let trace: Vec<String> = (0..200).flat_map(|seed| simulation::simulate(seed, &Exclude::default()).trace).collect();
    let seen = |what: &str| trace.iter().any(|line| line.contains(what));
    assert!(seen("agrees a session"));
    assert!(seen("MAC'd in a session this agent does not hold"), "a crash lost a session in use");
    assert!(seen("the agent lost the session; the request goes again, signed"));
}
