//! Golden files for tests: output that must not change unseen (`--help`, the OpenAPI document,
//! the `--json` events) is pinned in `dispatcher/tests/fixtures/`. After a deliberate change,
//! `CUTTLE_BLESS=1 cargo test -p dispatcher --lib` writes the new text, to be reviewed in the diff.

use std::path::PathBuf;

/// The fixture at `name` (a path below `dispatcher/tests/fixtures/`).
pub(crate) fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Fails unless `actual` is the fixture's text (or writes it, under `CUTTLE_BLESS=1`).
pub(crate) fn check(name: &str, actual: &str) {
    let path = path(name);
    if std::env::var_os("CUTTLE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("a fixture has a directory")).expect("fixtures directory");
        std::fs::write(&path, actual).expect("fixture written");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (CUTTLE_BLESS=1 writes it)", path.display()));
    assert!(
        expected == actual,
        "{} changed; if that is meant, run with CUTTLE_BLESS=1 and review the diff\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}
