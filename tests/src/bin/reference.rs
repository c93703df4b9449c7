//! Writes the generated reference, `docs/reference/` (see `tests::reference`): every command,
//! flag, exit code, `--json` event, metric and HTTP route, and the man pages, from the code.
//!
//! ```sh
//! cargo run -p tests --bin reference
//! ```

fn main() {
    let root = tests::repo();
    let files = tests::reference::generate();
    // Pages of commands that no longer exist go with them.
    let man = root.join("docs/reference/man");
    if let Ok(entries) = std::fs::read_dir(&man) {
        for entry in entries.flatten() {
            if !files.iter().any(|(path, _)| root.join(path) == entry.path()) {
                std::fs::remove_file(entry.path()).expect("remove a stale man page");
            }
        }
    }
    for (path, text) in &files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("create docs/reference");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    println!("wrote {} files of docs/reference", files.len());
}
