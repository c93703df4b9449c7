//! What `deploy/local/quickstart.sh` and `test.sh` check first on a fresh machine (their shared
//! `check_toolchain` in `services.sh`), run by bash with a PATH holding only what is given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace")
}

/// The workspace's `rust-version`.
fn rust_version() -> String {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let line = manifest.lines().find(|l| l.starts_with("rust-version")).expect("rust-version in Cargo.toml");
    line.split('"').nth(1).expect("a quoted version").to_owned()
}

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
