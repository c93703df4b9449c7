//! What the approval check costs an agent per start, against what it already spends on every
//! start (hashing the command, `ScriptSpec::digest`), in one run on this machine:
//! - no rule in force (every agent without `require` lines): the check alone;
//! - a rule selecting the start, with the two approvals it requires: the command hashed again,
//!   two signatures verified;
//! - the same with a 1 MiB file in the command.
//!
//! `cargo run --release -p contracts --example approval_cost -- [iterations, default 2000]`

use contracts::entropy::Seeded;
use contracts::trust::approval::{approve, check_approvals, command_digest};
use contracts::trust::files::TrustedKeys;
use contracts::trust::keys::SecretKey;
use contracts::wire::labels::{Labels, Selectable};
use contracts::wire::messages::{ScriptFile, ScriptSpec};
use std::time::Instant;

/// Mean microseconds of `f` over `n` calls.
fn micros(n: u32, mut f: impl FnMut()) -> f64 {
    let began = Instant::now();
    for _ in 0..n {
        f();
    }
    began.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let keys: Vec<SecretKey> = (1..=3).map(|seed| SecretKey::generate(&mut Seeded::new(seed)).unwrap()).collect();
    let file = format!(
        "{} name=release-manager\n{} name=oncall\n{} name=security\n",
        keys[0].public(),
        keys[1].public(),
        keys[2].public()
    );
    let none = TrustedKeys::parse(&file).unwrap();
    let ruled = TrustedKeys::parse(&format!("{file}require 2 of release-manager oncall security\n")).unwrap();
    let labels = Labels::new();
    let me = Selectable { id: "web-01", pool: None, labels: &labels };
    let now = contracts::time::unix_millis(std::time::SystemTime::now());
    let approved = |spec: ScriptSpec| {
        let digest = command_digest(&spec, "web-01");
        let approvals = keys[..2].iter().map(|key| approve(key, &digest, now + 3_600_000)).collect();
        ScriptSpec { approvals, ..spec }
    };
    let small = ScriptSpec {
        script: "./deploy.sh --version 1.2.3".into(),
        purpose: Some("deployment".into()),
        ..Default::default()
    };
    let large =
        ScriptSpec { files: vec![ScriptFile { name: "app.tgz".into(), content: vec![7; 1 << 20] }], ..small.clone() };
    println!(
        "approval check per start, mean of {n} (microseconds; ratio to hashing the command, which every start does)"
    );
    for (what, trusted, spec) in [
        ("no rule, small command", &none, small.clone()),
        ("rule, 2 approvals, small command", &ruled, approved(small.clone())),
        ("rule, 2 approvals, 1 MiB file", &ruled, approved(large.clone())),
    ] {
        let n = if spec.files.is_empty() { n } else { (n / 20).max(10) };
        let digest = micros(n, || drop(std::hint::black_box(spec.digest())));
        let check = micros(n, || {
            let counted = check_approvals(trusted.approvers(), &spec, "web-01", me, now).expect("approved");
            std::hint::black_box(counted);
        });
        println!("{what:<34} check {check:>9.1}  command digest {digest:>9.1}  ratio {:>5.2}", check / digest);
    }
}
