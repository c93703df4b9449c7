//! Agent labels (`worker-agent run --label KEY=VALUE`) and the selectors that pick agents by
//! them (`dispatcher agents --select EXPR`, `submit --select EXPR`).
//!
//! A label key is 1 to 63 characters of `[A-Za-z0-9._/-]`, a value 0 to 63 of `[A-Za-z0-9._-]`;
//! an agent has at most [`MAX_LABELS`]. The keys `id` and `pool` are reserved: in a selector
//! they match the agent's id and pool. A selector is comma-separated terms, `key=value` (the
//! agent has that value) and `key!=value` (it has another value, or no such label), all of
//! which must hold: `env=prod,role=web,id!=web-03`.

use std::collections::BTreeMap;
use std::fmt;

/// Labels an agent may carry at most.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;
/// Selector keys that stand for the agent's id and pool, not for labels.
pub const RESERVED_KEYS: [&str; 2] = ["id", "pool"];

/// An agent's labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("expected KEY=VALUE, got {0:?}")]
    NotKeyValue(String),
    #[error("label key {0:?} must be 1 to 63 characters of [A-Za-z0-9._/-]")]
    BadKey(String),
    #[error("label value {0:?} must be at most 63 characters of [A-Za-z0-9._-]")]
    BadValue(String),
    #[error("label key {0:?} is reserved (selectors use it for the agent's id or pool)")]
    Reserved(String),
    #[error("label {0:?} is given twice")]
    Duplicate(String),
    #[error("at most {MAX_LABELS} labels")]
    TooMany,
    #[error("empty selector: give terms such as env=prod,role!=db")]
    EmptySelector,
    #[error("selector term {0:?} is not key=value or key!=value")]
    BadTerm(String),
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_key(key: &str) -> Result<(), LabelError> {
    if key.is_empty() || key.len() > MAX_LABEL_LEN || !key.chars().all(is_key_char) {
        return Err(LabelError::BadKey(key.to_owned()));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), LabelError> {
    if value.len() > MAX_LABEL_LEN || !value.chars().all(is_value_char) {
        return Err(LabelError::BadValue(value.to_owned()));
    }
    Ok(())
}

/// Parses one `KEY=VALUE` label.
pub fn parse_label(raw: &str) -> Result<(String, String), LabelError> {
    let (key, value) = raw.split_once('=').ok_or_else(|| LabelError::NotKeyValue(raw.to_owned()))?;
    check_key(key)?;
    check_value(value)?;
    if RESERVED_KEYS.contains(&key) {
        return Err(LabelError::Reserved(key.to_owned()));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Collects labels, refusing duplicates and more than [`MAX_LABELS`].
pub fn collect_labels(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Labels, LabelError> {
    let mut labels = Labels::new();
    for (key, value) in pairs {
        if labels.contains_key(&key) {
            return Err(LabelError::Duplicate(key));
        }
        labels.insert(key, value);
        if labels.len() > MAX_LABELS {
            return Err(LabelError::TooMany);
        }
    }
    Ok(labels)
}

/// Checks labels received from elsewhere (an announcement): the same rules as given ones.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    for (key, value) in labels {
        parse_label(&format!("{key}={value}"))?;
    }
    Ok(())
}

/// One selector term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub value: String,
    /// `key=value` when true, `key!=value` when false.
    pub equal: bool,
}

/// Terms that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub terms: Vec<Term>,
}

/// What a selector looks at in an agent.
#[derive(Debug, Clone, Copy)]
pub struct Selectable<'a> {
    pub id: &'a str,
    pub pool: Option<&'a str>,
    pub labels: &'a Labels,
}

impl Selector {
    /// Parses `key=value,key!=value,...` (spaces around terms are ignored).
    pub fn parse(raw: &str) -> Result<Selector, LabelError> {
        if raw.trim().is_empty() {
            return Err(LabelError::EmptySelector);
        }
        let mut terms = Vec::new();
        for part in raw.split(',') {
            let part = part.trim();
            let bad = || LabelError::BadTerm(part.to_owned());
            let (key, value, equal) = match part.split_once("!=") {
                Some((key, value)) => (key, value, false),
                None => part.split_once('=').map(|(k, v)| (k, v, true)).ok_or_else(bad)?,
            };
            let (key, value) = (key.trim(), value.trim());
            check_key(key).map_err(|_| bad())?;
            check_value(value).map_err(|_| bad())?;
            terms.push(Term { key: key.to_owned(), value: value.to_owned(), equal });
        }
        Ok(Selector { terms })
    }

    /// Whether every term holds for `agent`.
    pub fn matches(&self, agent: Selectable<'_>) -> bool {
        self.terms.iter().all(|term| {
            let actual = match term.key.as_str() {
                "id" => Some(agent.id),
                "pool" => agent.pool,
                label => agent.labels.get(label).map(String::as_str),
            };
            (actual == Some(term.value.as_str())) == term.equal
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            let op = if term.equal { "=" } else { "!=" };
            write!(f, "{}{}{op}{}", if i > 0 { "," } else { "" }, term.key, term.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn labels_are_validated() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("team/app=a.b_c-1"), Ok(("team/app".into(), "a.b_c-1".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), "".into())));
        assert!(matches!(parse_label("env"), Err(LabelError::NotKeyValue(_))));
        assert!(matches!(parse_label("=x"), Err(LabelError::BadKey(_))));
        assert!(matches!(parse_label("e nv=x"), Err(LabelError::BadKey(_))));
        assert!(matches!(parse_label("env=a=b"), Err(LabelError::BadValue(_))));
        assert!(matches!(parse_label("env=a,b"), Err(LabelError::BadValue(_))));
        assert!(matches!(parse_label(&format!("k={}", "v".repeat(64))), Err(LabelError::BadValue(_))));
        assert!(matches!(parse_label("id=x"), Err(LabelError::Reserved(_))));
        assert!(matches!(parse_label("pool=x"), Err(LabelError::Reserved(_))));
        let twice = [("a".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())];
        assert_eq!(collect_labels(twice), Err(LabelError::Duplicate("a".into())));
        let many = (0..=MAX_LABELS).map(|i| (format!("k{i}"), String::new()));
        assert_eq!(collect_labels(many), Err(LabelError::TooMany));
    }

    #[test]
    fn every_term_must_hold() {
        let prod_web = labels(&[("env", "prod"), ("role", "web")]);
        let agent = Selectable { id: "web-01", pool: None, labels: &prod_web };
        let select = |raw: &str| Selector::parse(raw).unwrap().matches(agent);
        assert!(select("env=prod"));
        assert!(select("env=prod, role=web"));
        assert!(!select("env=prod,role=db"));
        assert!(select("env!=staging"));
        assert!(select("zone!=eu"), "an absent label differs from any value");
        assert!(!select("zone=eu"));
        assert!(select("id=web-01") && !select("id!=web-01"));
        assert!(!select("pool=workers") && select("pool!=workers"));
        let pooled = Selectable { pool: Some("workers"), ..agent };
        assert!(Selector::parse("pool=workers").unwrap().matches(pooled));
    }

    #[test]
    fn bad_selectors_are_refused() {
        assert_eq!(Selector::parse(" "), Err(LabelError::EmptySelector));
        for bad in ["env", "env=prod,", ",env=prod", "env==prod", "=prod", "env=pr od", "env=prod;rm"] {
            assert!(matches!(Selector::parse(bad), Err(LabelError::BadTerm(_))), "{bad:?} is refused");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(raw in ".{0,80}") {
            let _ = Selector::parse(&raw);
            let _ = parse_label(&raw);
        }

        #[test]
        fn a_selector_prints_and_parses_back(
            terms in proptest::collection::vec(("[a-z][a-z0-9./_-]{0,10}", "[a-z0-9._-]{0,10}", any::<bool>()), 1..6)
        ) {
            let selector = Selector {
                terms: terms.into_iter().map(|(key, value, equal)| Term { key, value, equal }).collect(),
            };
            prop_assert_eq!(Selector::parse(&selector.to_string()), Ok(selector));
        }

        #[test]
        fn an_agent_matches_its_own_labels_and_not_their_negation(
            pairs in proptest::collection::btree_map("[a-z][a-z0-9]{0,6}", "[a-z0-9]{0,6}", 1..8)
        ) {
            let pairs: Labels = pairs.into_iter().filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str())).collect();
            prop_assume!(!pairs.is_empty());
            let agent = Selectable { id: "a", pool: None, labels: &pairs };
            let all: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            prop_assert!(Selector::parse(&all.join(",")).unwrap().matches(agent));
            let (key, value) = pairs.iter().next().unwrap();
            let negated = Selector::parse(&format!("{key}!={value}")).unwrap();
            prop_assert!(!negated.matches(agent));
        }
    }
}
