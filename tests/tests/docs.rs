//! The documentation agrees with the code, so it cannot drift unseen: every relative link in the
//! Markdown files resolves (file and heading), every Rust version the docs and Dockerfiles name is
//! the workspace's `rust-version`, and every JSON event the dispatcher writes is in the README
//! with each of its fields.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tests::{repo, rust_version};

/// Files below `dir` whose name ends with `suffix`, outside `target/` and hidden directories.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            if !name.starts_with('.') && name != "target" {
                found.extend(files(&path, suffix));
            }
        } else if name.ends_with(suffix) {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The lines of a Markdown file outside fenced code blocks, with inline code removed.
fn prose(markdown: &str) -> Vec<String> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push(line.split('`').step_by(2).collect::<Vec<_>>().join(""));
        }
    }
    lines
}

/// The anchors of a Markdown file's headings, as GitHub makes them: lowercase, punctuation
/// dropped, spaces as hyphens, `-1`, `-2`... for repeats.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let Some(heading) = line.strip_prefix('#').filter(|_| !fenced) else { continue };
        let text = heading.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    anchors
}

/// The targets of the inline links `[text](target)` in a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        targets.push(after[..end].split_whitespace().next().unwrap_or_default().to_owned());
        rest = &after[end..];
    }
    targets
}

#[test]
fn every_relative_link_in_the_docs_resolves_to_a_file_and_heading() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in files(repo(), ".md") {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in prose(&text).iter().flat_map(|line| link_targets(line)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').map_or((target.as_str(), None), |(p, a)| (p, Some(a)));
            let resolved = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            let name = file.strip_prefix(repo()).unwrap().display();
            if !resolved.exists() {
                broken.push(format!("{name}: ({target}): no such file {}", resolved.display()));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| resolved.extension().is_some_and(|e| e == "md")) {
                if !anchors(&std::fs::read_to_string(&resolved).unwrap()).contains(anchor) {
                    broken.push(format!("{name}: ({target}): no heading #{anchor} in {}", resolved.display()));
                }
            }
        }
    }
    assert!(checked > 10, "only {checked} relative links found: is the link parser still right?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The version (`1.90`) right after the first `before` in `file`.
fn version_after(file: &str, before: &str) -> String {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let at = text.find(before).unwrap_or_else(|| panic!("{file} no longer says {before:?}: update this test"));
    text[at + before.len()..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect()
}

#[test]
fn every_minimum_rust_version_the_docs_name_is_the_workspaces() {
    let places = [
        ("README.md", "the workspace's `rust-version`, "),
        ("deploy/README.md", "at least "),
        ("deploy/docker/README.md", "It must be **"),
        ("deploy/docker/worker-agent.Dockerfile", "# Rust >= "),
        ("deploy/docker/dispatcher.Dockerfile", "# Rust >= "),
    ];
    let wanted = rust_version();
    for (file, before) in places {
        assert_eq!(version_after(file, before), wanted, "{file} names another minimum Rust than the workspace");
    }
}

/// The JSON events the dispatcher writes, one line per kind (and per optional field), as the
/// dispatcher's own tests pin them: its `JsonEvent` writes exactly these lines and has no kind
/// without one.
fn pinned_events() -> Vec<(dispatcher::event::JsonEvent, serde_json::Map<String, serde_json::Value>)> {
    let fixture = std::fs::read_to_string(repo().join("dispatcher/tests/fixtures/events.jsonl")).unwrap();
    let events = fixture.lines().map(|line| {
        let event = dispatcher::event::JsonEvent::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let serde_json::Value::Object(fields) = serde_json::from_str(line).unwrap() else { panic!("{line}") };
        (event, fields)
    });
    events.collect()
}

#[test]
fn every_json_event_the_dispatcher_writes_is_in_the_readme() {
    let events = pinned_events();
    let names: BTreeSet<&str> = events.iter().map(|(event, _)| event.name()).collect();
    assert!(names.len() >= 8 && names.contains("result"), "the fixture has {names:?}: is it still right?");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    // A target's events on several targets carry its name, which the README says once for all.
    let targets_said = readme.contains("every event carries its `target`");
    let mut missing = BTreeSet::new();
    for (event, fields) in &events {
        let opening = format!("{{\"event\":\"{}\"", event.name());
        let Some(at) = readme.find(&opening) else {
            missing.insert(format!("{}: not in the README", event.name()));
            continue;
        };
        // The README's example of the event, up to the end of its inline code.
        let example = &readme[at..at + readme[at..].find('`').unwrap_or(readme.len() - at)];
        for key in fields.keys().filter(|key| *key != "event") {
            let documented = example.contains(&format!("\"{key}\":")) || (key == "target" && targets_said);
            if !documented {
                missing.insert(format!("{}: field {key} is not in the README's {example}", event.name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "events written under --json but not in the README:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}
