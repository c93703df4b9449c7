//! One way in for every script, whichever front door it comes through: `submit`'s flags and
//! `POST /v1/scripts`' JSON are each made into the same neutral request, and this module makes
//! that into what runs: the routes, the script spec, each target's machine policy and retry
//! policies, and (for what is recorded before it is sent) its ticket.
//!
//! The front doors keep what is theirs: their wording of a missing target, reading files or
//! decoding base64, and the order in which they report mistakes (each step here is called in
//! that order). What a script is, and which policy applies, is decided only here.

use crate::policy::{self, MachinePolicy, Overrides, PolicyConfig, PolicyError, Purpose, Target};
use crate::route::Route;
use crate::service::submission::Submission;
use contracts::submission::retry::Policies;
use contracts::submission::retry::RetryPolicy;
use contracts::wire::messages::{Isolation, ScriptFile, ScriptLimits, ScriptSpec, Secrets, Shell, SpecError};
use contracts::wire::ticket::Ticket;
use contracts::wire::topology::NameError;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Where a script goes, as a front door was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Targets {
    /// Agents by id; `given_as` is how the front door names one in messages (`--target`).
    Agents { ids: Vec<String>, given_as: &'static str },
    /// Any worker of a pool.
    Pool(String),
}

/// What can make a request impossible to plan; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    /// An agent id or pool name that cannot be one.
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{given_as} {agent} is given twice")]
    Twice { given_as: &'static str, agent: String },
}

/// The routes of `targets`, each agent once.
pub(crate) fn routes(targets: Targets) -> Result<Vec<Route>, PlanError> {
    match targets {
        Targets::Pool(pool) => Ok(vec![Route::pool(&pool)?]),
        Targets::Agents { ids, given_as } => {
            let mut routes: Vec<Route> = Vec::with_capacity(ids.len());
            for agent in ids {
                let route = Route::agent(&agent)?;
                if routes.contains(&route) {
                    return Err(PlanError::Twice { given_as, agent });
                }
                routes.push(route);
            }
            Ok(routes)
        }
    }
}

/// Why a script cannot be sent; `E` is why its inputs (files, secrets, time limits) could not be
/// read, which each front door says in its own words.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScriptError<E> {
    #[error("the script is empty")]
    Empty,
    #[error(transparent)]
    Mutex(#[from] NameError),
    #[error("{0}")]
    Inputs(#[source] E),
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// The script itself, as given: checked before anything else about it is read.
#[derive(Clone, Debug)]
pub(crate) struct ScriptDraft {
    pub script: String,
    pub shell: Shell,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub isolation: Isolation,
    pub mutex: Option<String>,
    /// The user the script runs as on the agent, when not the one the agent chooses.
    pub run_as: Option<String>,
    /// Bounds on the script's resources, within the agent's caps.
    pub limits: ScriptLimits,
}

/// What a front door reads or decodes only once the script passed its checks: the files, the
/// secrets and the time limits.
#[derive(Clone, Debug, Default)]
pub(crate) struct ScriptInputs {
    pub files: Vec<ScriptFile>,
    pub secret_env: Secrets,
    pub mutex_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
}

/// The script spec: the draft checked (not empty, a valid mutex name), then `inputs` read, then
/// the whole checked and measured against what one command can carry.
pub(crate) fn script_spec<E>(
    draft: ScriptDraft,
    inputs: impl FnOnce() -> Result<ScriptInputs, E>,
) -> Result<ScriptSpec, ScriptError<E>> {
    if draft.script.trim().is_empty() {
        return Err(ScriptError::Empty);
    }
    if let Some(mutex) = &draft.mutex {
        contracts::wire::topology::validate_name("mutex name", mutex)?;
    }
    let inputs = inputs().map_err(ScriptError::Inputs)?;
    let millis = |d: Duration| d.as_millis() as u64;
    let spec = ScriptSpec {
        script: draft.script,
        shell: draft.shell,
        args: draft.args,
        env: draft.env,
        files: inputs.files,
        isolation: draft.isolation,
        mutex_name: draft.mutex,
        mutex_timeout: inputs.mutex_timeout.map(millis),
        execution_timeout: inputs.timeout.map(millis),
        secret_env: inputs.secret_env,
        sealed_secret_env: Vec::new(),
        run_as: draft.run_as,
        limits: draft.limits,
        purpose: None,
        submitter: None,
        approvals: Vec::new(),
    };
    spec.validate()?;
    spec.check_size()?;
    Ok(spec)
}

/// The machine policies file at `path`, or the built-in `default` alone without one.
pub(crate) fn load_policies(path: Option<&Path>) -> Result<PolicyConfig, PolicyError> {
    match path {
        Some(path) => PolicyConfig::load(path),
        None => Ok(PolicyConfig::default()),
    }
}

/// Which machine policy and retry durations a request asks for: a policy by name instead of the
/// one its target maps to, what it is for, and one-command overrides (`--retry-duration`,
/// `--no-retries`).
#[derive(Clone, Debug, Default)]
pub(crate) struct PolicyChoice {
    pub policy: Option<String>,
    pub purpose: Option<Purpose>,
    pub overrides: Overrides,
}

impl PolicyChoice {
    /// The machine policy of `route`: the one asked for by name, else the one it maps to.
    pub(crate) fn machine(&self, config: &PolicyConfig, route: &Route) -> Result<MachinePolicy, PolicyError> {
        let target = match route {
            Route::Agent(id) => Target::Agent(id),
            Route::Pool(pool) | Route::Worker { pool, .. } => Target::Pool(pool),
        };
        config.policy_for(self.policy.as_deref(), target)
    }

    /// The retry policy for requests to `route`, for the purpose asked for, else `default`.
    pub(crate) fn retry(
        &self,
        config: &PolicyConfig,
        route: &Route,
        default: Purpose,
    ) -> Result<RetryPolicy, PolicyError> {
        Ok(self.resolve(&self.machine(config, route)?, self.purpose.unwrap_or(default)))
    }

    /// A script's policies on `route` (the script's, for the purpose asked for or deployment,
    /// and the health check's for its capabilities), with the machine policy they come from.
    pub(crate) fn policies(
        &self,
        config: &PolicyConfig,
        route: &Route,
    ) -> Result<(MachinePolicy, Policies), PolicyError> {
        let machine = self.machine(config, route)?;
        let policies = Policies {
            script: self.resolve(&machine, self.purpose.unwrap_or(Purpose::Deployment)),
            health: self.resolve(&machine, Purpose::HealthCheck),
        };
        Ok((machine, policies))
    }

    fn resolve(&self, machine: &MachinePolicy, purpose: Purpose) -> RetryPolicy {
        policy::resolve(machine, purpose, self.overrides)
    }
}

/// One target of a plan.
#[derive(Clone, Debug)]
pub(crate) struct PlannedTarget {
    pub route: Route,
    /// The machine policy's name, as the journal records it.
    pub policy: String,
    pub policies: Policies,
}

/// What runs: the script, and each target with its policies.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub spec: ScriptSpec,
    pub targets: Vec<PlannedTarget>,
}

/// Where the tickets of what is recorded before it is sent come from. (`submit` without
/// `--detach` records nothing: the orchestrator makes its ticket as it starts.)
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tickets<'a> {
    /// A new random ticket each.
    Fresh,
    /// The same ticket for the same caller, key and target (`Idempotency-Key`), so that a repeat
    /// finds what was recorded the first time.
    Idempotent { who: &'a str, key: &'a str },
    /// The ticket of one slot of a schedule on one target: the same for every replica that
    /// fires the slot, and never one of another schedule (its id is made at `add`) or slot.
    Slot { schedule: &'a str, slot: &'a str },
}

impl Tickets<'_> {
    pub(crate) fn ticket_for(&self, route: &Route) -> Ticket {
        match self {
            Tickets::Fresh => edge::entropy::ticket(),
            Tickets::Idempotent { who, key } => idempotent_ticket(who, key, route),
            Tickets::Slot { schedule, slot } => {
                digest_ticket(&format!("cuttle schedule slot\0{schedule}\0{slot}\0{route}"))
            }
        }
    }
}

/// A ticket made from who asked, their key and the target: a UUID's shape from their digest.
fn idempotent_ticket(who: &str, key: &str, route: &Route) -> Ticket {
    digest_ticket(&format!("{who}\0{key}\0{route}"))
}

/// A ticket in a UUID's shape, from the SHA-256 of `text`.
fn digest_ticket(text: &str) -> Ticket {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let hex = hex::encode(&digest[..16]);
    let uuid = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    Ticket::parse(&uuid).expect("hex digits make a valid ticket")
}

impl Plan {
    /// `spec` on every route, each under the policies `choice` resolves in `config`, signed with
    /// the purpose the script's retries are chosen by (`--purpose`, deployment unless given), so
    /// that the agents' approval rules select it by the same.
    pub(crate) fn new(
        routes: Vec<Route>,
        mut spec: ScriptSpec,
        choice: &PolicyChoice,
        config: &PolicyConfig,
    ) -> Result<Plan, PolicyError> {
        spec.purpose = Some(crate::policy::purpose_name(choice.purpose.unwrap_or(Purpose::Deployment)));
        let mut targets = Vec::with_capacity(routes.len());
        for route in routes {
            let (machine, policies) = choice.policies(config, &route)?;
            targets.push(PlannedTarget { route, policy: machine.name, policies });
        }
        Ok(Plan { spec, targets })
    }

    /// The journal's record of each target, under a ticket from `tickets`, as asked by `who`.
    pub(crate) fn submissions(&self, tickets: Tickets<'_>, who: &str) -> Vec<Submission> {
        let submission = |target: &PlannedTarget| {
            let ticket = tickets.ticket_for(&target.route);
            Submission::new(ticket, &target.route, self.spec.clone(), &target.policy, target.policies, who)
        };
        self.targets.iter().map(submission).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(ids: &[&str]) -> Targets {
        Targets::Agents { ids: ids.iter().map(|id| id.to_string()).collect(), given_as: "--target" }
    }

    fn draft(script: &str) -> ScriptDraft {
        ScriptDraft {
            script: script.into(),
            shell: Shell::Sh,
            args: Vec::new(),
            env: BTreeMap::new(),
            isolation: Isolation::None,
            mutex: None,
            run_as: None,
            limits: ScriptLimits::default(),
        }
    }

    #[test]
    fn each_agent_is_a_route_once_in_the_order_given() {
        assert_eq!(routes(agents(&["a", "b"])).unwrap(), vec![Route::Agent("a".into()), Route::Agent("b".into())]);
        assert_eq!(routes(Targets::Pool("p".into())).unwrap(), vec![Route::Pool("p".into())]);
        let twice = routes(agents(&["a", "b", "a"])).unwrap_err();
        assert_eq!(twice.to_string(), "--target a is given twice");
        assert!(matches!(routes(agents(&["a b"])), Err(PlanError::Name(_))));
    }

    #[test]
    fn the_script_is_checked_before_its_inputs_are_read() {
        let unread = || -> Result<ScriptInputs, std::io::Error> { panic!("inputs read for a script refused first") };
        assert_eq!(script_spec(draft("  \n"), unread).unwrap_err().to_string(), "the script is empty");
        let bad_mutex = ScriptDraft { mutex: Some("a b".into()), ..draft("true") };
        assert!(script_spec(bad_mutex, unread).unwrap_err().to_string().contains("mutex name"));
        let failing = script_spec(draft("true"), || Err(std::io::Error::other("cannot read file x")));
        assert_eq!(failing.unwrap_err().to_string(), "cannot read file x");
        let timed =
            || Ok::<_, std::io::Error>(ScriptInputs { timeout: Some(Duration::from_secs(2)), ..Default::default() });
        assert_eq!(script_spec(draft("true"), timed).unwrap().execution_timeout, Some(2000));
    }

    #[test]
    fn a_script_gets_its_purposes_duration_and_the_health_checks_for_capabilities() {
        let config = PolicyConfig::parse(
            "[policies.edge]\ndeployment = \"10m\"\nhealth_check = \"20s\"\n[targets]\nweb = \"edge\"\n",
            "p.toml",
        )
        .unwrap();
        let web = Route::agent("web").unwrap();
        let (machine, policies) = PolicyChoice::default().policies(&config, &web).unwrap();
        assert_eq!(machine.name, "edge");
        assert_eq!(
            (policies.script.duration, policies.health.duration),
            (Duration::from_secs(600), Duration::from_secs(20))
        );
        let runbook = PolicyChoice { purpose: Some(Purpose::Runbook), ..Default::default() };
        assert_eq!(runbook.policies(&config, &web).unwrap().1.script.duration, policy::BUILTIN_RETRY_DURATION);
        let overridden = PolicyChoice {
            overrides: Overrides { retry_duration: Some(Duration::from_secs(3)), no_retries: true },
            ..Default::default()
        };
        let retry = overridden.retry(&config, &web, Purpose::HealthCheck).unwrap();
        assert_eq!((retry.duration, retry.enabled), (Duration::from_secs(3), false));
        let unknown = PolicyChoice { policy: Some("nope".into()), ..Default::default() };
        assert!(unknown.machine(&config, &web).is_err());
    }

    #[test]
    fn idempotent_tickets_depend_on_who_key_and_target() {
        let (a, b) = (Route::agent("a").unwrap(), Route::agent("b").unwrap());
        let ticket = idempotent_ticket("ci", "deploy-42", &a);
        assert_eq!(ticket, idempotent_ticket("ci", "deploy-42", &a));
        assert_ne!(ticket, idempotent_ticket("ci", "deploy-42", &b));
        assert_ne!(ticket, idempotent_ticket("bot", "deploy-42", &a));
        assert_ne!(ticket, idempotent_ticket("ci", "deploy-43", &a));
        assert_ne!(idempotent_ticket("ci", "k", &Route::pool("a").unwrap()), idempotent_ticket("ci", "k", &a));
    }

    #[test]
    fn slot_tickets_depend_on_schedule_slot_and_target_and_are_no_idempotent_ones() {
        let (a, b) = (Route::agent("a").unwrap(), Route::agent("b").unwrap());
        let slot = |schedule, slot| Tickets::Slot { schedule, slot };
        let ticket = slot("id-1", "1767225600000").ticket_for(&a);
        assert_eq!(ticket, slot("id-1", "1767225600000").ticket_for(&a), "every replica makes the same");
        assert_ne!(ticket, slot("id-1", "1767225600000").ticket_for(&b));
        assert_ne!(ticket, slot("id-1", "1767225602000").ticket_for(&a));
        assert_ne!(ticket, slot("id-2", "1767225600000").ticket_for(&a), "a schedule added again has a new id");
        assert_ne!(ticket, Tickets::Idempotent { who: "id-1", key: "1767225600000" }.ticket_for(&a));
    }

    #[test]
    fn a_plan_records_each_target_under_its_policy_and_ticket() {
        let routes = routes(agents(&["a", "b"])).unwrap();
        let spec = script_spec(draft("true"), || Ok::<_, std::io::Error>(ScriptInputs::default())).unwrap();
        let plan = Plan::new(routes, spec, &PolicyChoice::default(), &PolicyConfig::default()).unwrap();
        let tickets = Tickets::Idempotent { who: "ci", key: "k" };
        let records = plan.submissions(tickets, "ci");
        let named: Vec<(&str, &str, &str)> =
            records.iter().map(|s| (s.target.as_str(), s.policy.as_str(), s.who.as_str())).collect();
        assert_eq!(named, [("a", "default", "ci"), ("b", "default", "ci")]);
        assert_eq!(records[0].ticket, tickets.ticket_for(&Route::agent("a").unwrap()));
    }
}
