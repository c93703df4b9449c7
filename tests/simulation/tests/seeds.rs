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

/// With the claim switched off (`--features break-claim`, a build of its own beside this one),
/// the simulator finds a ticket run twice within a few hundred seeds, and says which seed.
#[test]
fn the_simulator_finds_a_double_run_when_the_claim_is_switched_off() {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("the target dir").join("sim-break-claim");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--locked", "-p", "simulation", "--features", "break-claim", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(built.success(), "the break-claim build failed");
    let run = Command::new(target.join("debug/simulation"))
        .args(["--seeds", "300", "--json", "--exclude", "failover,restart-empty"])
        .output()
        .expect("the break-claim simulator runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("runs twice") && stderr.contains("violates an invariant"), "{stderr}");
    assert!(stderr.contains("replay: --seeds 1 --first-seed"), "{stderr}");
    assert_ne!(field(&String::from_utf8(run.stdout).unwrap(), "violations"), "0");
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
