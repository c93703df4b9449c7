//! Machine policies: how long to keep repeating a request that got no answer, by what the
//! command is for and which machine it goes to.
//!
//! Policies come from a local TOML file (the CLI finds its path in `--config` or
//! `CUTTLE_CONFIG`):
//!
//! ```toml
//! # durations are humantime strings: "2m30s", "90s", "10m"
//! [policies.default]          # optional; built-in default: all three 2m30s, retries = true
//! deployment = "2m30s"
//! runbook = "2m30s"
//! health_check = "2m30s"
//! retries = true
//!
//! [policies.edge]             # any field omitted takes the built-in default (2m30s / true)
//! deployment = "10m"
//!
//! [targets]                   # agent id -> policy name
//! web-01 = "edge"
//!
//! [pools]                     # pool name -> policy name
//! workers = "default"
//! ```
//!
//! Parsing checks everything it can up front (syntax, unknown fields, durations, names that
//! targets and pools refer to) so that a mistake is reported with its file, line and field
//! before any request is sent, not discovered halfway through a fleet. The decisions themselves,
//! [`PolicyConfig::policy_for`] and [`resolve`], are plain functions.

use contracts::submission::retry::RetryPolicy;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The name of the policy used when nothing else is chosen.
pub(crate) const DEFAULT_POLICY: &str = "default";

/// Retry duration of the built-in default policy, for every purpose.
pub(crate) const BUILTIN_RETRY_DURATION: Duration = Duration::from_secs(150);

/// What a command is for; each purpose has its own retry duration in a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    Deployment,
    Runbook,
    HealthCheck,
}

/// The name of a purpose as a schedule keeps it and a command is signed with (`deployment`,
/// `runbook`, `health-check`).
pub(crate) fn purpose_name(purpose: Purpose) -> String {
    use clap::ValueEnum;
    purpose.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

/// How requests to a machine are retried, for each purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachinePolicy {
    /// The policy's name in the file (`default` for the built-in one).
    pub name: String,
    pub deployment: Duration,
    pub runbook: Duration,
    pub health_check: Duration,
    /// Whether requests that got no answer are repeated at all.
    pub retries: bool,
}

impl MachinePolicy {
    /// The policy used when no file defines `default`: 2m30s for everything, retries on.
    pub fn builtin_default() -> Self {
        RawPolicy::default().named(DEFAULT_POLICY)
    }

    /// Total time for one request with this purpose, first attempt included.
    pub fn retry_duration(&self, purpose: Purpose) -> Duration {
        match purpose {
            Purpose::Deployment => self.deployment,
            Purpose::Runbook => self.runbook,
            Purpose::HealthCheck => self.health_check,
        }
    }
}

/// The machine a command goes to, as far as choosing a policy is concerned.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One agent, by id.
    Agent(&'a str),
    /// Any worker of a pool, by pool name.
    Pool(&'a str),
}

/// One-command overrides from flags.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Overrides {
    /// `--retry-duration`: replaces the policy's duration for the purpose.
    pub retry_duration: Option<Duration>,
    /// `--no-retries`: a single attempt whatever the policy says.
    pub no_retries: bool,
}

/// The retry policy for one command: retries only if both the policy and the flags allow them,
/// for the overriding duration if one was given, else the policy's duration for the purpose.
pub(crate) fn resolve(policy: &MachinePolicy, purpose: Purpose, overrides: Overrides) -> RetryPolicy {
    RetryPolicy {
        enabled: policy.retries && !overrides.no_retries,
        duration: overrides.retry_duration.unwrap_or_else(|| policy.retry_duration(purpose)),
    }
}

/// The machine policies and which targets and pools use them. The default value is what applies
/// without a file: only the built-in `default` policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Where the policies came from, for messages; `None` without a file.
    origin: Option<String>,
    /// Policies by name, each with every field filled in.
    policies: BTreeMap<String, MachinePolicy>,
    /// Agent id to policy name; every name is in `policies` or is `default`.
    targets: BTreeMap<String, String>,
    /// Pool name to policy name; every name is in `policies` or is `default`.
    pools: BTreeMap<String, String>,
}

impl PolicyConfig {
    /// Reads the policies file at `path` and parses it.
    pub fn load(path: &Path) -> Result<PolicyConfig, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| PolicyError::Read { path: path.display().to_string(), error })?;
        PolicyConfig::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a policies file; `origin` names it in messages (usually its path).
    pub fn parse(text: &str, origin: &str) -> Result<PolicyConfig, PolicyError> {
        let document = DeTable::parse(text).map_err(|error| PolicyError::Syntax {
            origin: origin.to_owned(),
            line: error.span().map(|span| line_of(text, span.start)),
            message: error.message().trim_end().to_owned(),
        })?;
        // Deserialize from the parsed tree rather than the text: the tree is kept to find the
        // field an error is about, which the toml error only gives as a byte span.
        let raw = RawConfig::deserialize(toml::de::Deserializer::from(document.clone())).map_err(|error| {
            let span = error.span();
            PolicyError::Invalid {
                origin: origin.to_owned(),
                line: span.as_ref().map(|span| line_of(text, span.start)),
                field: span.and_then(|span| field_at(document.get_ref(), span.start)),
                message: error.message().trim_end().to_owned(),
            }
        })?;

        let policies: BTreeMap<String, MachinePolicy> =
            raw.policies.into_iter().map(|(name, policy)| (name.clone(), policy.named(&name))).collect();
        let mut config = PolicyConfig { origin: Some(origin.to_owned()), policies, ..PolicyConfig::default() };
        config.targets = config.check_references("targets", raw.targets, text)?;
        config.pools = config.check_references("pools", raw.pools, text)?;
        Ok(config)
    }

    /// The `[targets]` or `[pools]` map, once every policy name in it is known to exist: a
    /// misspelt name would otherwise only show up when a command goes to that machine.
    fn check_references(
        &self,
        section: &str,
        raw: BTreeMap<String, Spanned<String>>,
        text: &str,
    ) -> Result<BTreeMap<String, String>, PolicyError> {
        let mut map = BTreeMap::new();
        for (key, name) in raw {
            let line = line_of(text, name.span().start);
            let name = name.into_inner();
            if !self.is_defined(&name) {
                return Err(PolicyError::UndefinedReference {
                    origin: self.origin.clone().unwrap_or_default(),
                    line: Some(line),
                    field: format!("{section}.{}", key_segment(&key)),
                    name,
                    defined: self.defined_names(),
                });
            }
            map.insert(key, name);
        }
        Ok(map)
    }

    /// The policy for a target: the `explicit` name (`--policy`) if given, else the one its
    /// agent id or pool is mapped to in `[targets]` / `[pools]`, else `default` (from the file,
    /// else built-in).
    pub fn policy_for(&self, explicit: Option<&str>, target: Target<'_>) -> Result<MachinePolicy, PolicyError> {
        if let Some(name) = explicit {
            return self.policy(name).ok_or_else(|| PolicyError::UnknownPolicy {
                name: name.to_owned(),
                origin: self.origin.clone(),
                defined: self.defined_names(),
            });
        }
        let (section, key, mapped) = match target {
            Target::Agent(id) => ("targets", id, self.targets.get(id)),
            Target::Pool(pool) => ("pools", pool, self.pools.get(pool)),
        };
        let name = mapped.map_or(DEFAULT_POLICY, String::as_str);
        // Parsing made sure mapped names exist; the error only guards a broken invariant.
        self.policy(name).ok_or_else(|| PolicyError::UndefinedReference {
            origin: self.origin.clone().unwrap_or_default(),
            line: None,
            field: format!("{section}.{}", key_segment(key)),
            name: name.to_owned(),
            defined: self.defined_names(),
        })
    }

    /// Every policy in force by name, the built-in `default` included when the file has none.
    pub fn policies(&self) -> Vec<MachinePolicy> {
        let mut policies: Vec<MachinePolicy> = self.policies.values().cloned().collect();
        if !self.policies.contains_key(DEFAULT_POLICY) {
            policies.insert(0, MachinePolicy::builtin_default());
        }
        policies
    }

    /// Agent ids and pools mapped to a policy: `(section, name, policy)`, targets first.
    pub fn mappings(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        let targets = self.targets.iter().map(|(k, v)| ("target", k.as_str(), v.as_str()));
        targets.chain(self.pools.iter().map(|(k, v)| ("pool", k.as_str(), v.as_str())))
    }

    /// The file the policies came from, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    fn policy(&self, name: &str) -> Option<MachinePolicy> {
        match self.policies.get(name) {
            Some(policy) => Some(policy.clone()),
            None if name == DEFAULT_POLICY => Some(MachinePolicy::builtin_default()),
            None => None,
        }
    }

    fn is_defined(&self, name: &str) -> bool {
        name == DEFAULT_POLICY || self.policies.contains_key(name)
    }

    /// The names that may be used, for messages: the file's, plus the built-in `default`.
    fn defined_names(&self) -> String {
        let names: BTreeSet<&str> =
            self.policies.keys().map(String::as_str).chain(std::iter::once(DEFAULT_POLICY)).collect();
        names.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// Why the policies could not be read or used. Each message names the file and, when it is
/// about the file's content, the line and field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policies file {path}: {}", io_reason(error))]
    Read { path: String, error: io::Error },
    /// The file is not valid TOML.
    #[error("{}: invalid TOML: {message}", location(origin, *line))]
    Syntax { origin: String, line: Option<usize>, message: String },
    /// The TOML is valid but a field is unknown, of the wrong type or has a bad value.
    #[error("{}: {}{message}", location(origin, *line), field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Invalid { origin: String, line: Option<usize>, field: Option<String>, message: String },
    /// `[targets]` or `[pools]` maps something to a policy the file does not define.
    #[error("{}: {field} names policy {name:?}, which is not defined (defined: {defined})", location(origin, *line))]
    UndefinedReference { origin: String, line: Option<usize>, field: String, name: String, defined: String },
    /// The policy asked for by name (`--policy`) does not exist.
    #[error("no policy named {name:?} {} (defined: {defined})", match origin { Some(origin) => format!("in {origin}"), None => "and no policies file was given".to_owned() })]
    UnknownPolicy { name: String, origin: Option<String>, defined: String },
}

/// `file:line`, or just `file` when the line is unknown.
fn location(origin: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{origin}:{line}"),
        None => origin.to_owned(),
    }
}

/// The OS's description without the `(os error N)` suffix, which tells the user nothing more.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => text.strip_suffix(&format!(" (os error {code})")).unwrap_or(&text).to_owned(),
        None => text,
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The dotted path of the deepest key whose key or value holds `offset`, e.g.
/// `policies.edge.deployment`. toml's errors carry only a span, and its own key list is not
/// public, so the path is found again in the parsed tree.
fn field_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    fn walk(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
        for (key, value) in table {
            path.push(key_segment(key.get_ref()));
            // Children first: a table's span may cover the whole section, its keys included.
            if let DeValue::Table(inner) = value.get_ref() {
                if walk(inner, offset, path) {
                    return true;
                }
            }
            if key.span().contains(&offset) || value.span().contains(&offset) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = Vec::new();
    walk(table, offset, &mut path).then(|| path.join("."))
}

/// A key as written in a dotted path: bare if TOML allows it, else quoted, so that a key with a
/// dot in it cannot be mistaken for two.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// The file as written. `deny_unknown_fields` turns a typo such as `deploymnt` into an error
/// instead of a silently ignored setting: this is a local file, not a wire type that must accept
/// newer senders.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    policies: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pools: BTreeMap<String, Spanned<String>>,
}

/// One policy as written; omitted fields take the built-in default.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPolicy {
    #[serde(deserialize_with = "duration")]
    deployment: Duration,
    #[serde(deserialize_with = "duration")]
    runbook: Duration,
    #[serde(deserialize_with = "duration")]
    health_check: Duration,
    retries: bool,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            deployment: BUILTIN_RETRY_DURATION,
            runbook: BUILTIN_RETRY_DURATION,
            health_check: BUILTIN_RETRY_DURATION,
            retries: true,
        }
    }
}

impl RawPolicy {
    fn named(self, name: &str) -> MachinePolicy {
        MachinePolicy {
            name: name.to_owned(),
            deployment: self.deployment,
            runbook: self.runbook,
            health_check: self.health_check,
            retries: self.retries,
        }
    }
}

/// A humantime duration string. The message carries the bad value; toml adds its span, from
/// which [`PolicyConfig::parse`] finds the line and field.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"2m30s\"")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
            parse_duration(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Visitor)
}

/// A policy's duration that cannot be one.
#[derive(Debug, thiserror::Error)]
enum DurationError {
    #[error("invalid duration {0:?}: must be more than zero")]
    Zero(String),
    #[error("invalid duration {value:?}: {source}")]
    Unreadable { value: String, source: humantime::DurationError },
}

fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    match humantime::parse_duration(value) {
        // A zero deadline would fail every request before its first attempt.
        Ok(duration) if duration.is_zero() => Err(DurationError::Zero(value.to_owned())),
        Ok(duration) => Ok(duration),
        Err(source) => Err(DurationError::Unreadable { value: value.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"# durations are humantime strings
[policies.default]
deployment = "2m"
runbook = "90s"
health_check = "30s"
retries = true

[policies.edge]
deployment = "10m"
runbook = "5m"
health_check = "1m"
retries = false

[targets]
web-01 = "edge"
db-01 = "default"

[pools]
workers = "edge"
"#;

    fn parse(text: &str) -> Result<PolicyConfig, PolicyError> {
        PolicyConfig::parse(text, "policies.toml")
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("the file should be rejected").to_string()
    }

    fn policy(name: &str, deployment: u64, runbook: u64, health_check: u64, retries: bool) -> MachinePolicy {
        MachinePolicy {
            name: name.to_owned(),
            deployment: Duration::from_secs(deployment),
            runbook: Duration::from_secs(runbook),
            health_check: Duration::from_secs(health_check),
            retries,
        }
    }

    #[test]
    fn without_a_file_everything_uses_the_builtin_default() {
        let config = PolicyConfig::default();
        let builtin = policy("default", 150, 150, 150, true);
        assert_eq!(MachinePolicy::builtin_default(), builtin);
        assert_eq!(config.policy_for(None, Target::Agent("web-01")).unwrap(), builtin);
        assert_eq!(config.policy_for(None, Target::Pool("workers")).unwrap(), builtin);
        assert_eq!(config.policy_for(Some("default"), Target::Agent("web-01")).unwrap(), builtin);
        // An empty file is the same as none.
        assert_eq!(parse("").unwrap().policy_for(None, Target::Agent("web-01")).unwrap(), builtin);
    }

    #[test]
    fn a_full_file_is_read_as_written() {
        let config = parse(FULL).unwrap();
        let default = policy("default", 120, 90, 30, true);
        let edge = policy("edge", 600, 300, 60, false);
        assert_eq!(config.origin.as_deref(), Some("policies.toml"));
        assert_eq!(config.policies, BTreeMap::from([("default".into(), default), ("edge".into(), edge)]));
        assert_eq!(
            config.targets,
            BTreeMap::from([("web-01".into(), "edge".into()), ("db-01".into(), "default".into())])
        );
        assert_eq!(config.pools, BTreeMap::from([("workers".into(), "edge".into())]));
    }

    #[test]
    fn omitted_fields_take_the_builtin_default() {
        let config = parse("[policies.edge]\ndeployment = \"10m\"\n\n[policies.quiet]\nretries = false\n").unwrap();
        assert_eq!(config.policy_for(Some("edge"), Target::Agent("a")).unwrap(), policy("edge", 600, 150, 150, true));
        assert_eq!(
            config.policy_for(Some("quiet"), Target::Agent("a")).unwrap(),
            policy("quiet", 150, 150, 150, false)
        );
        // The built-in value, not the file's `default`: each policy reads on its own.
        let config = parse("[policies.default]\nrunbook = \"1m\"\n[policies.edge]\n").unwrap();
        assert_eq!(config.policy_for(Some("edge"), Target::Agent("a")).unwrap(), policy("edge", 150, 150, 150, true));
        // Inline tables work like sections.
        let config = parse("policies = { edge = { runbook = \"1h\" } }").unwrap();
        assert_eq!(config.policy_for(Some("edge"), Target::Agent("a")).unwrap(), policy("edge", 150, 3600, 150, true));
    }

    #[test]
    fn targets_and_pools_map_to_their_policies() {
        let config = parse(FULL).unwrap();
        let name = |target| config.policy_for(None, target).unwrap().name;
        assert_eq!(name(Target::Agent("web-01")), "edge");
        assert_eq!(name(Target::Agent("db-01")), "default");
        assert_eq!(name(Target::Pool("workers")), "edge");
        // Unmapped targets, and a pool named like a mapped agent, get the default.
        assert_eq!(name(Target::Agent("web-02")), "default");
        assert_eq!(name(Target::Pool("web-01")), "default");
        assert_eq!(name(Target::Agent("workers")), "default");
        assert_eq!(config.policy_for(None, Target::Agent("web-02")).unwrap(), policy("default", 120, 90, 30, true));
    }

    #[test]
    fn a_mapping_to_default_works_without_defining_it() {
        let config = parse("[pools]\nworkers = \"default\"\n").unwrap();
        assert_eq!(config.policy_for(None, Target::Pool("workers")).unwrap(), MachinePolicy::builtin_default());
    }

    #[test]
    fn an_explicit_policy_wins() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.policy_for(Some("default"), Target::Agent("web-01")).unwrap().name, "default");
        assert_eq!(config.policy_for(Some("edge"), Target::Pool("other")).unwrap().name, "edge");
    }

    #[test]
    fn an_unknown_explicit_policy_is_an_error() {
        let config = parse(FULL).unwrap();
        let error = config.policy_for(Some("nope"), Target::Agent("web-01")).unwrap_err();
        assert_eq!(error.to_string(), r#"no policy named "nope" in policies.toml (defined: default, edge)"#);
        let error = PolicyConfig::default().policy_for(Some("nope"), Target::Agent("web-01")).unwrap_err();
        assert_eq!(error.to_string(), r#"no policy named "nope" and no policies file was given (defined: default)"#);
    }

    #[test]
    fn a_mapping_to_an_unknown_policy_is_an_error() {
        let text = "[policies.edge]\n\n[targets]\nweb-01 = \"nope\"\n";
        assert_eq!(
            error(text),
            r#"policies.toml:4: targets.web-01 names policy "nope", which is not defined (defined: default, edge)"#
        );
        assert_eq!(
            error("[pools]\n\"eu.workers\" = \"edge\"\n"),
            r#"policies.toml:2: pools."eu.workers" names policy "edge", which is not defined (defined: default)"#
        );
    }

    #[test]
    fn an_invalid_duration_names_line_field_and_value() {
        let text = "[policies.default]\n\n[policies.edge]\ndeployment = \"10 parsecs\"\n";
        let message = error(text);
        assert!(
            message.starts_with(
                r#"policies.toml:4: policies.edge.deployment: invalid duration "10 parsecs": unknown time unit "parsecs""#
            ),
            "{message}"
        );
        // Also inside an inline table.
        let message = error("[policies]\nedge = { runbook = \"soon\" }\n");
        assert!(
            message.starts_with(r#"policies.toml:2: policies.edge.runbook: invalid duration "soon": "#),
            "{message}"
        );
        // A number is not a duration: the unit would be a guess.
        assert_eq!(
            error("[policies.edge]\nhealth_check = 90\n"),
            r#"policies.toml:2: policies.edge.health_check: invalid type: integer `90`, expected a duration such as "2m30s""#
        );
    }

    #[test]
    fn a_zero_duration_is_rejected() {
        assert_eq!(
            error("[policies.default]\nrunbook = \"0s\"\n"),
            r#"policies.toml:2: policies.default.runbook: invalid duration "0s": must be more than zero"#
        );
    }

    #[test]
    fn an_unknown_field_names_line_and_field() {
        let message = error("[policies.edge]\ndeployment = \"10m\"\ndeploymnt = \"10m\"\n");
        assert!(
            message.starts_with("policies.toml:3: policies.edge.deploymnt: unknown field `deploymnt`, expected one of"),
            "{message}"
        );
        let message = error("[policies.edge]\n\n[target]\nweb-01 = \"edge\"\n");
        assert!(message.starts_with("policies.toml:3: target: unknown field `target`, expected one of"), "{message}");
        assert_eq!(
            error("[policies.edge]\nretries = \"no\"\n"),
            r#"policies.toml:2: policies.edge.retries: invalid type: string "no", expected a boolean"#
        );
    }

    #[test]
    fn a_syntax_error_has_a_line() {
        let message = error("[policies.edge]\ndeployment = \"10m\"\nrunbook = \n");
        assert!(message.starts_with("policies.toml:3: invalid TOML: "), "{message}");
        let message = error("[policies.edge]\ndeployment = \"1m\"\ndeployment = \"2m\"\n");
        assert!(message.starts_with("policies.toml:3: invalid TOML: "), "{message}");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let path = Path::new("/nonexistent/cuttle/policies.toml");
        assert_eq!(
            PolicyConfig::load(path).unwrap_err().to_string(),
            "cannot read policies file /nonexistent/cuttle/policies.toml: No such file or directory"
        );
    }

    #[test]
    fn load_reads_the_file() {
        let path = std::env::temp_dir().join(format!("cuttle-policy-test-{}.toml", std::process::id()));
        std::fs::write(&path, FULL).unwrap();
        let loaded = PolicyConfig::load(&path);
        std::fs::remove_file(&path).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.origin.as_deref(), Some(path.display().to_string().as_str()));
        assert_eq!(loaded.policies, parse(FULL).unwrap().policies);
    }

    #[test]
    fn the_purpose_picks_the_duration() {
        let edge = policy("edge", 600, 300, 60, true);
        let duration = |purpose| resolve(&edge, purpose, Overrides::default()).duration;
        assert_eq!(duration(Purpose::Deployment), Duration::from_secs(600));
        assert_eq!(duration(Purpose::Runbook), Duration::from_secs(300));
        assert_eq!(duration(Purpose::HealthCheck), Duration::from_secs(60));
        assert!(resolve(&edge, Purpose::Runbook, Overrides::default()).enabled);
    }

    #[test]
    fn an_override_duration_wins() {
        let edge = policy("edge", 600, 300, 60, true);
        let overrides = Overrides { retry_duration: Some(Duration::from_secs(5)), no_retries: false };
        assert_eq!(
            resolve(&edge, Purpose::Deployment, overrides),
            RetryPolicy { enabled: true, duration: Duration::from_secs(5) }
        );
    }

    #[test]
    fn no_retries_disables_retrying() {
        let edge = policy("edge", 600, 300, 60, true);
        let overrides = Overrides { retry_duration: None, no_retries: true };
        assert!(!resolve(&edge, Purpose::Deployment, overrides).enabled);
    }

    #[test]
    fn a_policy_without_retries_disables_retrying() {
        let quiet = policy("quiet", 600, 300, 60, false);
        assert!(!resolve(&quiet, Purpose::Runbook, Overrides::default()).enabled);
        // A duration override does not turn retries back on.
        let overrides = Overrides { retry_duration: Some(Duration::from_secs(5)), no_retries: false };
        assert!(!resolve(&quiet, Purpose::Runbook, overrides).enabled);
    }

    #[test]
    fn purposes_have_kebab_case_names_on_the_command_line() {
        use clap::ValueEnum;
        let names: Vec<String> =
            Purpose::value_variants().iter().map(|p| p.to_possible_value().unwrap().get_name().to_owned()).collect();
        assert_eq!(names, ["deployment", "runbook", "health-check"]);
    }

    proptest! {
        /// Whatever humantime prints, the file reads back to the same duration.
        #[test]
        fn durations_round_trip(secs in 0u64..10_000_000, nanos in 0u32..1_000_000_000, purpose in 0..3usize) {
            let written = Duration::new(secs, nanos);
            prop_assume!(!written.is_zero());
            let field = ["deployment", "runbook", "health_check"][purpose];
            let text = format!("[policies.p]\n{field} = \"{}\"\n", humantime::format_duration(written));
            let policy = parse(&text).unwrap().policy_for(Some("p"), Target::Agent("a")).unwrap();
            let purpose = [Purpose::Deployment, Purpose::Runbook, Purpose::HealthCheck][purpose];
            prop_assert_eq!(policy.retry_duration(purpose), written);
        }

        /// The line reported is the line the bad value is on, however many lines come before.
        #[test]
        fn error_lines_follow_the_text(blank in 0usize..40) {
            let text = format!("{}[policies.edge]\nruntime = 1\n", "# note\n".repeat(blank));
            let expected = format!("policies.toml:{}: policies.edge.runtime: ", blank + 2);
            let message = error(&text);
            prop_assert!(message.starts_with(&expected), "{}", message);
        }
    }
}
