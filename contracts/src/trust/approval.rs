//! Approvals the agent itself enforces (ARCHITECTURE.md, Approvals): its trusted-keys file may
//! name keys and require, for the commands a rule selects, approvals by several of them
//! (`require 2 of release-manager oncall security for purpose=deployment`). An [`Approval`] is one
//! key's detached signature over the command's digest ([`command_digest`]: the script with its
//! files, arguments and environment, its user and limits, its purpose and submitter, the names
//! of its secrets and its target) and the approval's own expiry, so approvals can be collected
//! before the start is signed and sent, and hold for that command alone.
//!
//! [`Rule`] is one `require` line; [`check_approvals`] is the agent's decision, a plain function:
//! a command that lacks enough distinct valid approvals for any rule selecting it is refused
//! ([`Unapproved`] names what is missing), and nothing runs.

use super::keys::{KeyId, PublicKey, SecretKey};
use crate::time::short;
use crate::wire::approvals::{check_name, Approval, Approver, RequiredApprovals, MAX_APPROVALS};
use crate::wire::labels::{Selectable, Selector};
use crate::wire::messages::ScriptSpec;
use crate::wire::topology::CLOCK_SKEW_ALLOWANCE_MS;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// What a command's digest covers before the command.
pub const COMMAND_CONTEXT: &[u8] = b"cuttle command v1\0";
/// What an approval's signature covers before the digest, so no approval is a signature of a
/// command, an answer or a receipt.
pub const APPROVAL_CONTEXT: &[u8] = b"cuttle approval v1\0";
/// Longest an approval may be valid: an approval expiring later is not counted.
pub const MAX_APPROVAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The digest approvals sign, in hex: the command's script, shell, files, arguments,
/// environment, isolation, timeouts, user, limits, purpose and submitter (`ScriptSpec::digest`),
/// the names of its secrets (their values are not the approvers' to see), and its target (an
/// agent id, or `pool:<name>`). Any change to one of them is another command.
pub fn command_digest(spec: &ScriptSpec, target: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(COMMAND_CONTEXT);
    hasher.update(spec.digest().as_bytes());
    hasher.update([0]);
    hasher.update(target.as_bytes());
    for name in spec.secret_env.names() {
        hasher.update([0]);
        hasher.update(name.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn approval_parts(digest: &str, expires_at: u64) -> [Vec<u8>; 3] {
    [APPROVAL_CONTEXT.to_vec(), digest.as_bytes().to_vec(), expires_at.to_be_bytes().to_vec()]
}

/// `key`'s approval of the command whose [`command_digest`] is `digest`, valid until `expires_at`
/// (unix ms).
pub fn approve(key: &SecretKey, digest: &str, expires_at: u64) -> Approval {
    let signature = key.sign(&approval_parts(digest, expires_at).concat()).to_vec();
    Approval { digest: digest.to_owned(), key: key.id().to_string(), expires_at, signature }
}

/// Why an approval does not count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("it approves another command ({0}), not this one")]
    OtherCommand(String),
    #[error("its key {0} is not one the rules name")]
    UnnamedKey(String),
    #[error("{0}'s signature does not verify")]
    BadSignature(String),
    #[error("{0}'s approval expired")]
    Expired(String),
    #[error("{name}'s approval is valid for longer than the {} allowed", short(MAX_APPROVAL_TTL))]
    TooLong { name: String },
}

/// One `require` line of a trusted-keys file: `require <N> of <name>... [for purpose=<P>] [on
/// <selector>]`. It selects the commands of that purpose (every command without `for`) on the
/// agents its selector matches (every agent without `on`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub need: u32,
    pub names: Vec<String>,
    pub purpose: Option<String>,
    pub on: Option<Selector>,
}

/// Why a `require` line cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("expected `require <N> of <name>... [for purpose=<P>] [on <selector>]`")]
    Shape,
    #[error("`require {need} of` names {names} key(s): N must be from 1 to the number of names")]
    Count { need: u32, names: usize },
    #[error("{0} is named twice in one rule")]
    NameTwice(String),
    #[error(transparent)]
    Name(#[from] crate::wire::approvals::NameError),
    #[error(transparent)]
    Selector(#[from] crate::wire::labels::LabelError),
}

impl Rule {
    /// Parses the words of a `require` line, `require` itself first.
    pub fn parse(words: &[&str]) -> Result<Rule, RuleError> {
        let [_, need, of, rest @ ..] = words else { return Err(RuleError::Shape) };
        let need: u32 = need.parse().map_err(|_| RuleError::Shape)?;
        if *of != "of" {
            return Err(RuleError::Shape);
        }
        let end = rest.iter().position(|w| *w == "for" || *w == "on").unwrap_or(rest.len());
        let (names, mut tail) = rest.split_at(end);
        let mut seen = BTreeSet::new();
        for name in names {
            check_name("approver name", name)?;
            if !seen.insert(*name) {
                return Err(RuleError::NameTwice((*name).to_owned()));
            }
        }
        if need == 0 || need as usize > names.len() {
            return Err(RuleError::Count { need, names: names.len() });
        }
        let mut rule = Rule { need, names: names.iter().map(|n| (*n).to_owned()).collect(), purpose: None, on: None };
        while let [word, value, more @ ..] = tail {
            match (*word, value.strip_prefix("purpose=")) {
                ("for", Some(purpose)) if rule.purpose.is_none() => {
                    check_name("purpose", purpose)?;
                    rule.purpose = Some(purpose.to_owned());
                }
                ("on", _) if rule.on.is_none() => rule.on = Some(Selector::parse(value)?),
                _ => return Err(RuleError::Shape),
            }
            tail = more;
        }
        if !tail.is_empty() {
            return Err(RuleError::Shape);
        }
        Ok(rule)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "require {} of {}", self.need, self.names.join(" "))?;
        if let Some(purpose) = &self.purpose {
            write!(f, " for purpose={purpose}")?;
        }
        if let Some(on) = &self.on {
            write!(f, " on {on}")?;
        }
        Ok(())
    }
}

/// The named keys and the rules of a trusted-keys file, as the checks read them.
#[derive(Clone, Debug, Default)]
pub struct Approvers {
    /// By name; every name is one key, every key one name.
    pub(crate) named: BTreeMap<String, PublicKey>,
    pub(crate) rules: Vec<Rule>,
    /// Rules an agent reported: it kept those whose selector matches it.
    selected: bool,
}

impl Approvers {
    fn name_of(&self, key: &str) -> Option<(&str, &PublicKey)> {
        self.named.iter().find(|(_, k)| k.id().to_string() == key).map(|(name, k)| (name.as_str(), k))
    }

    /// The rules an agent reported ([`Approvers::in_force`]), for the dispatcher to check a
    /// command against before sending it; `None` if the report is not one an agent makes.
    pub fn reported(rules: &[RequiredApprovals]) -> Option<Approvers> {
        let mut approvers = Approvers::default();
        for reported in rules {
            for approver in &reported.approvers {
                let key = PublicKey::parse(&approver.key).ok()?;
                if *approvers.named.entry(approver.name.clone()).or_insert(key) != key {
                    return None;
                }
            }
            let rule = Rule::parse(&reported.rule.split_whitespace().collect::<Vec<_>>()).ok()?;
            let names: Vec<String> = reported.approvers.iter().map(|a| a.name.clone()).collect();
            if rule.need != reported.need || rule.names != names || rule.purpose != reported.purpose {
                return None;
            }
            approvers.rules.push(rule);
        }
        approvers.selected = true;
        Some(approvers)
    }

    /// Keeps of `approvals` those a rule could count, once per key, at most [`MAX_APPROVALS`]:
    /// the others would only be ignored by the agent, or, past the most a start may carry, make
    /// it refuse the start.
    pub fn keep_countable(&self, approvals: &mut Vec<Approval>) {
        let mut seen = BTreeSet::new();
        approvals.retain(|approval| self.name_of(&approval.key).is_some() && seen.insert(approval.key.clone()));
        approvals.truncate(MAX_APPROVALS);
    }

    /// Whether `rule` holds on the agent `me`.
    fn on(&self, rule: &Rule, me: Selectable<'_>) -> bool {
        self.selected || rule.on.as_ref().is_none_or(|s| s.matches(me))
    }

    /// The rules that select agent `me`, as its capabilities reply reports them.
    pub fn in_force(&self, me: Selectable<'_>) -> Vec<RequiredApprovals> {
        let on_me = self.rules.iter().filter(|rule| self.on(rule, me));
        on_me
            .map(|rule| RequiredApprovals {
                need: rule.need,
                approvers: rule
                    .names
                    .iter()
                    .map(|name| Approver { name: name.clone(), key: self.named[name].to_string() })
                    .collect(),
                purpose: rule.purpose.clone(),
                rule: rule.to_string(),
            })
            .collect()
    }
}

/// Why a command does not have the approvals its agent's rules require.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unapproved {
    /// More approvals than a start may carry.
    TooMany(usize),
    /// A rule that selects the command is not met.
    Missing { rule: String, need: u32, approved: Vec<String>, missing: Vec<String>, ignored: Vec<Ignored> },
}

impl fmt::Display for Unapproved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unapproved::TooMany(count) => {
                write!(f, "{count} approvals, more than the {MAX_APPROVALS} a start may carry")
            }
            Unapproved::Missing { rule, need, approved, missing, ignored } => {
                let have = match approved.as_slice() {
                    [] => "none".to_owned(),
                    names => format!("{} by {}", names.len(), names.join(", ")),
                };
                let more = *need as usize - approved.len();
                write!(
                    f,
                    "not approved as `{rule}` requires: approvals {have}; {more} more needed of {}",
                    missing.join(", ")
                )?;
                for why in ignored {
                    write!(f, "; ignored: {why}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Unapproved {}

/// The agent's decision: whether `spec`, addressed to `target`, has the approvals every rule of
/// `approvers` selecting it (by its purpose, and the agent `me`; a command without a purpose is
/// selected by every rule) requires, at `now_ms`. An
/// approval counts once per key, for the command it names alone, by a key a rule names, and
/// until its expiry. `Ok` holds the ids of the keys whose approvals counted.
pub fn check_approvals(
    approvers: &Approvers,
    spec: &ScriptSpec,
    target: &str,
    me: Selectable<'_>,
    now_ms: u64,
) -> Result<Vec<KeyId>, Unapproved> {
    if spec.approvals.len() > MAX_APPROVALS {
        return Err(Unapproved::TooMany(spec.approvals.len()));
    }
    let mut valid: BTreeMap<&str, KeyId> = BTreeMap::new();
    let mut ignored = Vec::new();
    // Hashing the command again (its files may be megabytes) only when there is something to check.
    let digest = if spec.approvals.is_empty() { String::new() } else { command_digest(spec, target) };
    for approval in &spec.approvals {
        match check_one(approvers, approval, &digest, now_ms) {
            Ok((name, key)) => {
                valid.insert(name, key);
            }
            Err(why) => ignored.push(why),
        }
    }
    // A command that names no purpose (a dispatcher from before purposes were signed) is
    // selected by every rule: saying nothing must not escape one.
    let purpose = spec.purpose.as_deref();
    let of_purpose = |rule: &Rule| rule.purpose.as_deref().is_none_or(|p| purpose.is_none_or(|q| q == p));
    let selected = |rule: &&Rule| of_purpose(rule) && approvers.on(rule, me);
    for rule in approvers.rules.iter().filter(selected) {
        let approved: Vec<String> = rule.names.iter().filter(|n| valid.contains_key(n.as_str())).cloned().collect();
        if approved.len() < rule.need as usize {
            let missing = rule.names.iter().filter(|n| !valid.contains_key(n.as_str())).cloned().collect();
            return Err(Unapproved::Missing { rule: rule.to_string(), need: rule.need, approved, missing, ignored });
        }
    }
    Ok(valid.into_values().collect())
}

/// One approval's name and key, if it counts.
fn check_one<'a>(
    approvers: &'a Approvers,
    approval: &Approval,
    digest: &str,
    now_ms: u64,
) -> Result<(&'a str, KeyId), Ignored> {
    if approval.digest != digest {
        return Err(Ignored::OtherCommand(approval.digest.chars().take(16).collect()));
    }
    let (name, public) = approvers.name_of(&approval.key).ok_or_else(|| Ignored::UnnamedKey(approval.key.clone()))?;
    let signature: &[u8; 64] =
        approval.signature.as_slice().try_into().map_err(|_| Ignored::BadSignature(name.to_owned()))?;
    let parts = approval_parts(digest, approval.expires_at);
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    if !public.verifies(&parts, signature) {
        return Err(Ignored::BadSignature(name.to_owned()));
    }
    if now_ms > approval.expires_at.saturating_add(CLOCK_SKEW_ALLOWANCE_MS) {
        return Err(Ignored::Expired(name.to_owned()));
    }
    let latest = now_ms + MAX_APPROVAL_TTL.as_millis() as u64 + CLOCK_SKEW_ALLOWANCE_MS;
    if approval.expires_at > latest {
        return Err(Ignored::TooLong { name: name.to_owned() });
    }
    Ok((name, public.id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::keys::tests::key;
    use crate::wire::labels::Labels;

    const NOW: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn approvers(rules: &[&str]) -> Approvers {
        let named = [("release-manager", 1), ("oncall", 2), ("security", 3)]
            .into_iter()
            .map(|(name, seed)| (name.to_owned(), *key(seed).public()))
            .collect();
        let rules = rules.iter().map(|r| Rule::parse(&r.split_whitespace().collect::<Vec<_>>()).unwrap()).collect();
        Approvers { named, rules, selected: false }
    }

    fn deployment() -> ScriptSpec {
        ScriptSpec { script: "./deploy.sh".into(), purpose: Some("deployment".into()), ..Default::default() }
    }

    fn me(labels: &Labels) -> Selectable<'_> {
        Selectable { id: "web-01", pool: None, labels }
    }

    fn approved_by(spec: &ScriptSpec, seeds: &[u8]) -> ScriptSpec {
        let digest = command_digest(spec, "web-01");
        let approvals = seeds.iter().map(|seed| approve(&key(*seed), &digest, NOW + HOUR)).collect();
        ScriptSpec { approvals, ..spec.clone() }
    }

    const TWO_OF_THREE: &str = "require 2 of release-manager oncall security for purpose=deployment";

    #[test]
    fn a_command_runs_with_enough_distinct_approvals_and_not_with_fewer() {
        let (rules, labels) = (approvers(&[TWO_OF_THREE]), Labels::new());
        let two = approved_by(&deployment(), &[1, 3]);
        assert_eq!(check_approvals(&rules, &two, "web-01", me(&labels), NOW).unwrap().len(), 2);
        let twice = approved_by(&deployment(), &[2, 2]);
        let refused = check_approvals(&rules, &twice, "web-01", me(&labels), NOW).unwrap_err().to_string();
        assert_eq!(
            refused,
            format!("not approved as `{TWO_OF_THREE}` requires: approvals 1 by oncall; 1 more needed of release-manager, security")
        );
        let none = check_approvals(&rules, &deployment(), "web-01", me(&labels), NOW).unwrap_err();
        assert!(none.to_string().contains("approvals none; 2 more needed"), "{none}");
        let runbook = ScriptSpec { purpose: Some("runbook".into()), ..deployment() };
        assert!(check_approvals(&rules, &runbook, "web-01", me(&labels), NOW).is_ok(), "another purpose");
        let unsaid = ScriptSpec { purpose: None, ..deployment() };
        assert!(check_approvals(&rules, &unsaid, "web-01", me(&labels), NOW).is_err(), "no purpose: every rule");
    }

    #[test]
    fn forged_foreign_expired_and_misdirected_approvals_do_not_count() {
        let (rules, labels) = (approvers(&["require 1 of oncall"]), Labels::new());
        let spec = deployment();
        let digest = command_digest(&spec, "web-01");
        let refused = |approval: Approval| {
            let spec = ScriptSpec { approvals: vec![approval], ..spec.clone() };
            match check_approvals(&rules, &spec, "web-01", me(&labels), NOW) {
                Err(Unapproved::Missing { ignored, .. }) => ignored[0].clone(),
                other => panic!("{other:?}"),
            }
        };
        let mut forged = approve(&key(2), &digest, NOW + HOUR);
        forged.expires_at += 1;
        assert_eq!(refused(forged), Ignored::BadSignature("oncall".into()));
        assert_eq!(refused(approve(&key(9), &digest, NOW + HOUR)), Ignored::UnnamedKey(key(9).id().to_string()));
        let expired = approve(&key(2), &digest, NOW - CLOCK_SKEW_ALLOWANCE_MS - 1);
        assert_eq!(refused(expired), Ignored::Expired("oncall".into()));
        let forever = approve(&key(2), &digest, NOW + MAX_APPROVAL_TTL.as_millis() as u64 + HOUR);
        assert_eq!(refused(forever), Ignored::TooLong { name: "oncall".into() });
        let elsewhere = command_digest(&spec, "web-02");
        assert!(matches!(refused(approve(&key(2), &elsewhere, NOW + HOUR)), Ignored::OtherCommand(_)));
        let mut relabelled = approve(&key(2), &elsewhere, NOW + HOUR);
        relabelled.digest = digest.clone();
        assert_eq!(refused(relabelled), Ignored::BadSignature("oncall".into()), "a digest changed under the signature");
    }

    #[test]
    fn any_change_to_what_was_approved_is_another_command() {
        let spec = deployment();
        let digest = command_digest(&spec, "web-01");
        let changes = [
            ScriptSpec { script: "./deploy.sh --force".into(), ..spec.clone() },
            ScriptSpec { run_as: Some("root".into()), ..spec.clone() },
            ScriptSpec { purpose: Some("runbook".into()), ..spec.clone() },
            ScriptSpec { submitter: Some("mallory".into()), ..spec.clone() },
            ScriptSpec { args: vec!["--all".into()], ..spec.clone() },
        ];
        for changed in changes {
            assert_ne!(command_digest(&changed, "web-01"), digest, "{changed:?}");
        }
        assert_ne!(command_digest(&spec, "pool:web"), digest);
        let mut with_secret = spec.clone();
        with_secret.secret_env.insert("LD_PRELOAD".into(), "x".into());
        assert_ne!(command_digest(&with_secret, "web-01"), digest, "a secret's name is approved");
        let mut other_value = spec.clone();
        other_value.secret_env.insert("LD_PRELOAD".into(), "y".into());
        assert_eq!(command_digest(&other_value, "web-01"), command_digest(&with_secret, "web-01"), "not its value");
        let approved = approved_by(&spec, &[1]);
        assert_eq!(command_digest(&approved, "web-01"), digest, "approvals are not part of what they approve");
    }

    #[test]
    fn rules_select_by_purpose_and_agent_and_read_back_as_written() {
        let rules = approvers(&["require 1 of security on env=prod,role!=db", TWO_OF_THREE]);
        let prod: Labels = [("env".to_owned(), "prod".to_owned())].into();
        let dev: Labels = [("env".to_owned(), "dev".to_owned())].into();
        let runbook = ScriptSpec { purpose: Some("runbook".into()), ..deployment() };
        assert!(check_approvals(&rules, &runbook, "web-01", me(&dev), NOW).is_ok());
        let refused = check_approvals(&rules, &runbook, "web-01", me(&prod), NOW).unwrap_err();
        assert!(refused.to_string().contains("`require 1 of security on env=prod,role!=db`"), "{refused}");
        let on_prod = rules.in_force(me(&prod));
        assert_eq!(on_prod.len(), 2);
        assert_eq!(on_prod[1].rule, TWO_OF_THREE);
        assert_eq!(
            on_prod[1].approvers[0],
            Approver { name: "release-manager".into(), key: key(1).public().to_string() }
        );
        let reported = Approvers::reported(&on_prod).unwrap();
        assert_eq!(reported.in_force(me(&dev)), on_prod, "the dispatcher reads back what the agent reports");
        assert_eq!(rules.in_force(me(&dev)).len(), 1);
        for bad in [
            "require",
            "require two of a",
            "require 0 of a",
            "require 3 of a b",
            "require 1 of",
            "require 1 from a",
            "require 1 of a a",
            "require 1 of a for deployment",
            "require 1 of a for purpose=x for purpose=y",
            "require 1 of a on",
            "require 1 of a on =x",
            "require 1 of a/b",
        ] {
            assert!(Rule::parse(&bad.split_whitespace().collect::<Vec<_>>()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_approvals_a_rule_could_count_are_kept_once_each() {
        let rules = approvers(&[TWO_OF_THREE]);
        let digest = command_digest(&deployment(), "web-01");
        let mut approvals: Vec<Approval> =
            [2, 9, 2, 3, 8].iter().map(|seed| approve(&key(*seed), &digest, NOW + HOUR)).collect();
        rules.keep_countable(&mut approvals);
        let kept: Vec<String> = approvals.iter().map(|a| a.key.clone()).collect();
        assert_eq!(kept, [key(2).id().to_string(), key(3).id().to_string()]);
    }

    #[test]
    fn too_many_approvals_are_refused_unread() {
        let (rules, labels) = (approvers(&[]), Labels::new());
        let spec = approved_by(&deployment(), &[1; MAX_APPROVALS + 1]);
        assert_eq!(check_approvals(&rules, &spec, "web-01", me(&labels), NOW), Err(Unapproved::TooMany(17)));
    }
}
