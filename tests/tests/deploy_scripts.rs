//! What `deploy/local/quickstart.sh` and `test.sh` check first on a fresh machine (their shared
//! `check_toolchain` in `services.sh`), run by bash with a PATH holding only what is given; and
//! tests that need what a machine lacks (servers of their own, root) skipping with the reason,
//! which `test.sh` lists after the run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tests::{repo, rust_version};

/// A directory for PATH with the few real tools the check uses and fake `programs` (name, what
/// the fake prints).
fn path_with(programs: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(tests::unique("path"));
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["sed", "head", "sort"] {
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} on PATH"));
        std::os::unix::fs::symlink(real, dir.join(tool)).unwrap();
    }
    for (name, prints) in programs {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{prints}'\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Runs the check with only `path` on PATH: its exit code and what it said.
fn check_toolchain(path: &Path) -> (Option<i32>, String) {
    let out = Command::new("/bin/bash")
        .args(["-c", "source deploy/local/services.sh && check_toolchain"])
        .current_dir(repo())
        .env_clear()
        .env("PATH", path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(path);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_rust_is_named_with_its_version_and_how_to_install_it() {
    let (code, said) = check_toolchain(&path_with(&[]));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("Rust is missing") && said.contains(&rust_version()), "{said}");
    assert!(said.contains("https://sh.rustup.rs"), "{said}");
}

#[test]
fn a_rust_older_than_the_workspace_asks_for_an_update() {
    let (code, said) =
        check_toolchain(&path_with(&[("cargo", "cargo 1.70.0"), ("rustc", "rustc 1.70.0 (aaaa 2023-06-01)")]));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("rustc 1.70.0 is older than this workspace's rust-version {}", rust_version())),
        "{said}"
    );
    assert!(said.contains("rustup update stable"), "{said}");
}

#[test]
fn a_missing_c_compiler_is_named_with_the_package_to_install() {
    let rust = [("cargo", "cargo 9.0.0"), ("rustc", "rustc 9.0.0 (aaaa 2030-01-01)")];
    let (code, said) = check_toolchain(&path_with(&rust));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("no C compiler") && said.contains("build-essential"), "{said}");
    let (code, said) = check_toolchain(&path_with(&[rust[0], rust[1], ("cc", "cc")]));
    assert_eq!((code, said.as_str()), (Some(0), ""), "a good toolchain passes quietly");
}

/// The newest built test binary of `name` (`deps/<name>-<hash>`), beside this test's own.
fn test_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let prefix = format!("{name}-");
    std::fs::read_dir(&deps)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.file_name().to_string_lossy().strip_prefix(&prefix).is_some_and(|hash| !hash.contains('.')))
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("the {name} test binary is not built (cargo test -p tests --no-run)"))
        .path()
}

/// Runs one test of a test binary as `test.sh` would (skips logged to `CUTTLE_SKIPPED_LOG`),
/// changed by `adjust`: whether it passed, what it said, and what it logged as skipped.
fn run_test(binary: &str, test: &str, adjust: impl FnOnce(&mut Command)) -> (bool, String, String) {
    let log = std::env::temp_dir().join(tests::unique("skipped"));
    let mut command = Command::new(test_binary(binary));
    command.args(["--exact", test, "--nocapture"]).env("CUTTLE_SKIPPED_LOG", &log);
    adjust(&mut command);
    let out = command.output().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), logged)
}

#[test]
fn tests_that_need_servers_of_their_own_skip_saying_why_where_they_cannot_run() {
    // No redis-server on the PATH: the failover tests cannot start Redis with a replica.
    let test = "a_repeated_start_confirms_the_earlier_claim_then_runs_it_once";
    let (passed, said, logged) = run_test("failover", test, |c| {
        c.env("PATH", "/nonexistent");
    });
    let reason = format!("skipped: {test}: redis-server and redis-cli not installed");
    assert!(passed && said.contains(&reason), "{said}");
    assert!(logged.contains(&format!("{test}: redis-server and redis-cli not installed")), "{logged}");

    // Not root: no RabbitMQ node of its own for the cluster tests (run as `nobody` when root).
    let test = "the_node_in_use_stopped_mid_batch_loses_no_script_and_runs_none_twice";
    let root = nix::unistd::geteuid().is_root();
    let (passed, said, logged) = run_test("cluster", test, |c| {
        if root {
            std::os::unix::process::CommandExt::uid(c, 65534);
            c.env("HOME", "/nonexistent").current_dir("/");
        }
    });
    assert!(passed && said.contains(&format!("skipped: {test}: ")), "{said}");
    assert!(said.contains("needs root") || said.contains("not installed"), "{said}");
    assert!(logged.contains(test), "{logged}");
}
