//! The documentation agrees with the code, so it cannot drift unseen. Every Markdown document of
//! the repository is checked: every relative link resolves (file and heading) inside the
//! repository, no document or comment refers to design notes kept outside it, every Rust version
//! the docs and Dockerfiles name is the workspace's `rust-version`, and every JSON event the
//! dispatcher writes is documented. Against the built binaries (`cargo build --bins` first) and
//! the code: every `--flag` and `CUTTLE_*` variable the documents name exists, and every one the
//! binaries have is documented; the exit code table is exactly the dispatcher's exit codes; the
//! metrics table is exactly the metrics the agent and the dispatcher register; and the HTTP
//! routes the documents name are exactly those the service and the agent serve.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use tests::{binary, repo, rust_version};

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
fn every_relative_link_in_the_docs_resolves_to_a_file_and_heading_in_the_repository() {
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
            if !resolved.canonicalize().unwrap().starts_with(repo().canonicalize().unwrap()) {
                broken.push(format!("{name}: ({target}): outside the repository"));
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
        ("docs/guide.md", "with Rust ("),
        ("docs/operations.md", "(`--build-arg RUST_VERSION=...`, at least "),
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
fn every_json_event_the_dispatcher_writes_is_documented_with_its_fields() {
    let events = pinned_events();
    let names: BTreeSet<&str> = events.iter().map(|(event, _)| event.name()).collect();
    assert!(names.len() >= 8 && names.contains("result"), "the fixture has {names:?}: is it still right?");
    let docs = all_documents();
    // A target's events on several targets carry its name, which the guide says once for all.
    let targets_said = docs.contains("every event carries its `target`");
    let mut missing = BTreeSet::new();
    for (event, fields) in &events {
        let opening = format!("{{\"event\":\"{}\"", event.name());
        let Some(at) = docs.find(&opening) else {
            missing.insert(format!("{}: in no document", event.name()));
            continue;
        };
        // The documented example of the event, up to the end of its inline code.
        let example = &docs[at..at + docs[at..].find('`').unwrap_or(docs.len() - at)];
        for key in fields.keys().filter(|key| *key != "event") {
            let documented = example.contains(&format!("\"{key}\":")) || (key == "target" && targets_said);
            if !documented {
                missing.insert(format!("{}: field {key} is not in the documented {example}", event.name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "events written under --json but not documented:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

// ---- the documents, and the repository's other text ----

/// Every Markdown document of the repository: its path (relative to the repository) and text.
fn documents() -> Vec<(String, String)> {
    files(repo(), ".md")
        .into_iter()
        .map(|file| {
            let name = file.strip_prefix(repo()).unwrap().display().to_string();
            (name, std::fs::read_to_string(&file).unwrap())
        })
        .collect()
}

/// Every document's text, one after the other.
fn all_documents() -> String {
    documents().into_iter().map(|(_, text)| text).collect::<Vec<_>>().join("\n")
}

/// The text files of the repository that are not Markdown (code, scripts, manifests, settings),
/// outside `target/` and hidden directories.
fn other_text() -> String {
    files(repo(), "")
        .into_iter()
        .filter(|file| file.extension().is_none_or(|e| e != "md"))
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The design notes this repository's comments and documents once cited, kept outside it.
fn outside_notes() -> String {
    ["DESIGN", ".md"].concat()
}

#[test]
fn no_document_or_comment_refers_to_design_notes_outside_the_repository() {
    let notes = outside_notes();
    let mut found = Vec::new();
    for file in files(repo(), "") {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for (n, line) in text.lines().enumerate() {
            let section = line.char_indices().any(|(at, c)| c == '§' && line[at + 2..].starts_with(char::is_numeric));
            if line.contains(&notes) || section {
                found.push(format!("{}:{}: {}", file.strip_prefix(repo()).unwrap().display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these refer to {notes} or its sections, which are not in the repository; cite ARCHITECTURE.md instead:\n{}",
        found.join("\n")
    );
}

// ---- flags and variables ----

/// The words that follow `prefix` in `text`, as far as `allowed` goes, when `prefix` does not
/// continue a word.
fn tokens(text: &str, prefix: &str, allowed: impl Fn(char) -> bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    let mut before = None::<char>;
    while let Some(at) = rest.find(prefix) {
        let prior = rest[..at].chars().next_back().or(if at == 0 { before } else { None });
        let after = &rest[at + prefix.len()..];
        let word: String = after.chars().take_while(|&c| allowed(c)).collect();
        let word = word.trim_end_matches(['-', '_']).to_owned();
        if !prior.is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_') && !word.is_empty() {
            found.insert(format!("{prefix}{word}"));
        }
        before = Some(prefix.chars().next_back().unwrap());
        rest = after;
    }
    found
}

/// The `--flags` a text names.
fn flags_in(text: &str) -> BTreeSet<String> {
    tokens(text, "--", |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        .into_iter()
        .filter(|flag| flag[2..].starts_with(|c: char| c.is_ascii_lowercase()))
        .collect()
}

/// The `CUTTLE_*` variables a text names.
fn variables_in(text: &str) -> BTreeSet<String> {
    tokens(text, "CUTTLE_", |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Flags of other programs the documents show (with the program they belong to), which are no
/// flags of Cuttle's binaries.
const OTHER_PROGRAMS_FLAGS: &[(&str, &str)] = &[
    ("--release", "cargo"),
    ("--bins", "cargo"),
    ("--bin", "cargo"),
    ("--test", "cargo"),
    ("--tests", "cargo"),
    ("--lib", "cargo"),
    ("--example", "cargo"),
    ("--locked", "cargo"),
    ("--features", "cargo"),
    ("--workspace", "cargo"),
    ("--all", "cargo fmt"),
    ("--no-capture", "cargo nextest"),
    ("--from-literal", "kubectl"),
    ("--dry-run", "kubectl"),
    ("--build-arg", "docker"),
    ("--rm", "docker"),
    ("--apply-to", "rabbitmqctl"),
    ("--tls-port", "redis-server"),
    ("--tls-auth-clients", "redis-server"),
    ("--system", "useradd"),
    ("--home-dir", "useradd"),
    ("--now", "systemctl"),
    ("--offline", "systemd-analyze"),
    ("--cert", "websockify"),
    ("--ssl-only", "websockify"),
    ("--ssl-version", "websockify"),
    ("--web", "websockify"),
];

/// The commands a help lists (`help` aside).
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|command| *command != "help")
        .map(str::to_owned)
        .collect()
}

/// A binary's whole help: its own, and that of each of its commands and theirs
/// (`dispatcher schedule add`).
fn help_of(program: &str) -> String {
    let run = |args: &[String]| {
        let output = Command::new(binary(program)).args(args).output().expect("the binary runs");
        assert!(output.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("help is UTF-8")
    };
    let top = run(&["--help".to_owned()]);
    let commands = commands_in(&top);
    assert!(commands.len() >= 3, "{program} --help lists the commands {commands:?}: is the parser still right?");
    let mut help = top;
    let mut pending: Vec<Vec<String>> = commands.into_iter().map(|command| vec![command]).collect();
    while let Some(path) = pending.pop() {
        let text = run(&[path.clone(), vec!["--help".to_owned()]].concat());
        pending.extend(commands_in(&text).into_iter().map(|command| [path.clone(), vec![command]].concat()));
        help.push_str(&text);
    }
    help
}

/// The flags a help defines (its option lines), without `--help` and `--version`.
fn defined_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            // `-h, --help`: a short flag first.
            let line = match line.as_bytes() {
                [b'-', short, b',', b' ', ..] if short.is_ascii_alphabetic() => &line[4..],
                _ => line,
            };
            line.strip_prefix("--")
        })
        .map(|rest| format!("--{}", rest.split([' ', '=', '<', ',']).next().unwrap()))
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// The variables a help names as a flag's (`[env: CUTTLE_X=]`).
fn defined_variables(help: &str) -> BTreeSet<String> {
    tokens(help, "[env: CUTTLE_", |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        .into_iter()
        .map(|token| token.trim_start_matches("[env: ").to_owned())
        .collect()
}

/// The flags of the simulator's command line (`tests/simulation/src/main.rs`).
fn simulator_flags() -> BTreeSet<String> {
    let main = std::fs::read_to_string(repo().join("tests/simulation/src/main.rs")).unwrap();
    flags_in(&main)
}

#[test]
fn every_flag_and_variable_documented_exists_and_every_one_that_exists_is_documented() {
    let help = format!("{}\n{}", help_of("dispatcher"), help_of("worker-agent"));
    let flags = defined_flags(&help);
    let variables = defined_variables(&help);
    assert!(
        flags.contains("--amqp-url") && flags.contains("--claim-replicas") && flags.contains("--select"),
        "the help parser found {flags:?}: is it still right?"
    );
    assert!(variables.contains("CUTTLE_AMQP_URL") && variables.len() > 20, "the help parser found {variables:?}");

    let docs = all_documents();
    let others: BTreeMap<&str, &str> = OTHER_PROGRAMS_FLAGS.iter().copied().collect();
    let simulator = simulator_flags();
    let mut problems = Vec::new();
    for (name, text) in documents() {
        for flag in flags_in(&text) {
            if !flags.contains(&flag) && !others.contains_key(flag.as_str()) && !simulator.contains(&flag) {
                problems.push(format!("{name} names {flag}, which neither binary has (nor the simulator, nor another program this test knows: add it to OTHER_PROGRAMS_FLAGS if it is one)"));
            }
        }
    }
    let repository = other_text();
    let known_variables = variables_in(&repository);
    for (name, text) in documents() {
        for variable in variables_in(&text) {
            if !variables.contains(&variable) && !known_variables.contains(&variable) {
                problems.push(format!(
                    "{name} names {variable}, which neither binary reads and nothing in the repository sets"
                ));
            }
        }
    }
    let documented_flags = flags_in(&docs);
    for flag in &flags {
        if !documented_flags.contains(flag) {
            problems.push(format!("{flag} (in a binary's --help) is in no document"));
        }
    }
    let documented_variables = variables_in(&docs);
    for variable in &variables {
        if !documented_variables.contains(variable) {
            problems.push(format!("{variable} (in a binary's --help) is in no document"));
        }
    }
    for (flag, program) in OTHER_PROGRAMS_FLAGS {
        if flags.contains(*flag) {
            problems.push(format!("{flag} is listed as {program}'s, but a Cuttle binary has it: take it off the list"));
        }
    }
    assert!(problems.is_empty(), "flags and variables:\n{}", problems.join("\n"));
}

// ---- exit codes ----

/// The lines of the Markdown section under `heading` (`## Exit codes`), in the one document
/// that has it.
fn section(heading: &str) -> (String, Vec<String>) {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    let level = heading.split(' ').next().unwrap();
    for (name, text) in documents() {
        let mut lines = text.lines().skip_while(|line| *line != heading);
        if lines.next().is_none() {
            continue;
        }
        let body = lines
            .take_while(|line| {
                let hashes = line.split(' ').next().unwrap_or_default();
                !(hashes.chars().all(|c| c == '#') && !hashes.is_empty() && hashes.len() <= level.len())
            })
            .map(str::to_owned)
            .collect();
        found.push((name, body));
    }
    assert_eq!(
        found.len(),
        1,
        "one document should have the section {heading:?}: {:?}",
        found.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    found.pop().unwrap()
}

/// The first cells of a section's table rows (the header and separator rows left out).
fn first_cells(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("| "))
        .map(|row| row.split(" |").next().unwrap().trim().to_owned())
        .filter(|cell| !cell.starts_with("---") && cell != "code" && cell != "metric" && cell != "route")
        .collect()
}

/// The `pub const NAME: u8 = N;` values of the block that begins with `block` in the Rust
/// sources below `dir`.
fn constants_in_block(dir: &str, block: &str) -> BTreeSet<u32> {
    let mut codes = BTreeSet::new();
    for file in files(&repo().join(dir), ".rs") {
        let code = std::fs::read_to_string(&file).unwrap();
        let Some(at) = code.find(block) else { continue };
        for line in code[at..].lines().skip(1).take_while(|line| line.trim() != "}") {
            if let Some(value) = line.trim().strip_prefix("pub const ").and_then(|l| l.split(": u8 = ").nth(1)) {
                codes.insert(value.trim_end_matches(';').parse().unwrap());
            }
        }
    }
    codes
}

#[test]
fn the_exit_code_table_lists_exactly_the_dispatchers_exit_codes_and_the_agents_are_documented() {
    let help = Command::new(binary("dispatcher")).arg("--help").output().expect("the dispatcher runs");
    let help = String::from_utf8(help.stdout).unwrap();
    let in_help: BTreeSet<u32> = help
        .lines()
        .skip_while(|line| line.trim() != "Exit codes:")
        .skip(1)
        .filter_map(|line| line.strip_prefix("  ")?.split_whitespace().next()?.parse().ok())
        .collect();
    let constants = constants_in_block("contracts/src", "pub mod exit {");
    assert!(
        in_help.contains(&101) && constants.contains(&101),
        "help {in_help:?}, constants {constants:?}: is the scan still right?"
    );

    let (name, lines) = section("## Exit codes");
    let cells = first_cells(&lines);
    assert!(cells.iter().any(|c| c == "0–255"), "{name}: the exit code table lacks the script's own codes (0–255)");
    let documented: BTreeSet<u32> = cells.iter().filter_map(|c| c.parse().ok()).collect();
    let exists: BTreeSet<u32> = in_help.union(&constants).copied().collect();
    let undocumented: Vec<&u32> = exists.difference(&documented).collect();
    let unknown: Vec<&u32> = documented.difference(&exists).collect();
    assert!(undocumented.is_empty(), "{name}: exit codes of the dispatcher missing from its table: {undocumented:?}");
    assert!(unknown.is_empty(), "{name}: exit codes in its table the dispatcher never uses: {unknown:?}");

    // The agent's own exit codes: its `pub const EXIT_*: u8` (0, 1 and clap's 2 aside).
    let agent: BTreeSet<u32> = files(&repo().join("worker-agent/src"), ".rs")
        .iter()
        .flat_map(|file| {
            let code = std::fs::read_to_string(file).unwrap();
            code.lines()
                .filter_map(|line| {
                    let value = line.trim().strip_prefix("pub const EXIT_")?.split(": u8 = ").nth(1)?;
                    value.trim_end_matches(';').parse().ok()
                })
                .collect::<Vec<u32>>()
        })
        .collect();
    assert!(agent.contains(&78), "the agent's exit codes found: {agent:?}: is the scan still right?");
    let text = lines.join("\n");
    for code in agent {
        assert!(
            text.contains(&format!("**{code}**")),
            "{name}: the agent's exit code {code} is not in the section Exit codes"
        );
    }
}

// ---- metrics ----

/// The families a binary registers, by the name its samples carry, with their types (as its
/// registry records them: `contracts::metrics::Registrar`, series or not).
fn registered(described: &[contracts::metrics::Described]) -> BTreeMap<String, String> {
    described.iter().map(|family| (family.name.clone(), family.kind.to_owned())).collect()
}

#[test]
fn the_metrics_table_lists_exactly_the_metrics_the_binaries_register() {
    let agent = registered(worker_agent::metrics::Metrics::default().described());
    let service = registered(dispatcher::metrics::Metrics::default().described());
    assert!(agent.contains_key("cuttle_request_duration_seconds") && service.contains_key("cuttle_rpc_attempts_total"));
    let (name, lines) = section("## Metrics");
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in lines.iter().filter(|line| line.starts_with("| `cuttle_")) {
        // | `metric` | type | labels | agent | service | what |
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let shown = cells[1].trim_matches('`').to_owned();
        let (kind, in_agent, in_service) = (cells[2], cells[4] == "✓", cells[5] == "✓");
        for (binary, families, said) in [("the agent", &agent, in_agent), ("the service", &service, in_service)] {
            match (families.get(&shown), said) {
                (Some(declared), true) if declared != kind => {
                    problems.push(format!("{shown} is a {declared} in {binary}, documented as a {kind}"))
                }
                (Some(_), false) => problems.push(format!("{shown}: {binary} has it, the table says not")),
                (None, true) => problems.push(format!("{shown}: the table says {binary} has it; it does not")),
                _ => {}
            }
        }
        documented.insert(shown);
    }
    for metric in agent.keys().chain(service.keys()) {
        if !documented.contains(metric) {
            problems.push(format!("{metric} is registered but not in the table"));
        }
    }
    assert!(problems.is_empty(), "{name}, section Metrics:\n{}", problems.join("\n"));
}

// ---- HTTP routes ----

/// The routes served, as `(METHOD, path)`: the service's API (`#[utoipa::path(get, path = "/x")]`)
/// and every `.route("/x", get(...).post(...))` of the service and the agent.
fn served_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for dir in ["dispatcher/src", "worker-agent/src"] {
        for file in files(&repo().join(dir), ".rs") {
            let code = std::fs::read_to_string(&file).unwrap();
            for line in code.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("#[utoipa::path(") {
                    let method = rest.split(',').next().unwrap().trim().to_uppercase();
                    let path = rest.split("path = \"").nth(1).and_then(|p| p.split('"').next()).unwrap();
                    routes.insert((method, path.to_owned()));
                } else if let Some(rest) = line.strip_prefix(".route(\"") {
                    let (path, handlers) = rest.split_once('"').unwrap();
                    for method in ["get", "post", "put", "delete", "patch"] {
                        if calls(handlers, method) {
                            routes.insert((method.to_uppercase(), path.to_owned()));
                        }
                    }
                }
            }
        }
    }
    routes
}

/// Whether `code` calls `function` (`get(...)`, `.post(...)`, `axum::routing::get(...)`).
fn calls(code: &str, function: &str) -> bool {
    let call = format!("{function}(");
    code.match_indices(&call).any(|(at, _)| !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Whether a documented path names a served one (`{ticket}` in either matches any segment).
fn same_path(documented: &str, served: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (documented.split('/').collect(), served.split('/').collect());
    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'))
}

/// The inline code spans of the documents' prose and tables.
fn code_spans(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut spans = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            spans.extend(line.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    spans
}

#[test]
fn every_route_served_is_documented_and_every_route_documented_is_served() {
    let routes = served_routes();
    assert!(
        routes.contains(&("POST".into(), "/v1/scripts".into())) && routes.contains(&("GET".into(), "/readyz".into())),
        "the route scan found {routes:?}: is it still right?"
    );
    let mut documented: Vec<(Option<String>, String, String)> = Vec::new();
    for (name, text) in documents() {
        for span in code_spans(&text) {
            let (method, rest) = match span.split_once(' ') {
                Some((m, r)) if ["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&m) => (Some(m.to_owned()), r),
                _ => (None, span.as_str()),
            };
            if rest.starts_with('/') && !rest.contains(' ') {
                let path = rest.split('?').next().unwrap().to_owned();
                documented.push((method, path, name.clone()));
            }
        }
    }
    let mut problems = Vec::new();
    for (method, path, name) in documented.iter().filter(|d| d.0.is_some()) {
        let method = method.as_ref().unwrap();
        if !routes.iter().any(|(m, p)| m == method && same_path(path, p)) {
            problems.push(format!("{name} documents {method} {path}, which neither the service nor the agent serves"));
        }
    }
    for (method, path) in &routes {
        let named = documented.iter().any(|(m, p, _)| m.as_ref().is_none_or(|m| m == method) && same_path(p, path));
        if !named {
            problems.push(format!("{method} {path} is served but documented nowhere"));
        }
    }
    assert!(problems.is_empty(), "HTTP routes:\n{}", problems.join("\n"));
}

#[test]
fn the_generated_reference_is_current() {
    let mut stale = Vec::new();
    let files = tests::reference::generate();
    for (path, text) in &files {
        if std::fs::read_to_string(repo().join(path)).ok().as_deref() != Some(text.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    let pages: Vec<std::fs::DirEntry> =
        std::fs::read_dir(repo().join("docs/reference/man")).map(|e| e.flatten().collect()).unwrap_or_default();
    for entry in pages {
        let path = entry.path().strip_prefix(repo()).unwrap().to_path_buf();
        if !files.iter().any(|(p, _)| *p == path) {
            stale.push(format!("{} (of no command now)", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "the generated reference differs from the code in:\n{}\nrun `{}` and commit what it writes",
        stale.join("\n"),
        tests::reference::COMMAND
    );
}
