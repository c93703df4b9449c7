//! What the service was asked to run, as its journal records it once, before anything is sent
//! ([`super::journal::Journal::submit`]): the submission, with the schedule slot it serves if a
//! schedule's.

use crate::route::Route;
use contracts::submission::retry::{Policies, RetryPolicy};
use contracts::time::unix_millis;
use contracts::wire::messages::ScriptSpec;
use contracts::wire::ticket::Ticket;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// What was asked: written once, before anything is sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub ticket: Ticket,
    /// The agent id or pool name.
    pub target: String,
    /// `agent` or `pool`.
    pub route: String,
    /// The script, without its secrets' values: those are never journaled.
    pub spec: ScriptSpec,
    /// The names of its secrets (`secret_env`), whose values only the replica that took the
    /// submission holds, in memory.
    #[serde(default)]
    pub secret_names: Vec<String>,
    pub script_digest: String,
    /// The machine policy's name, and its retry durations as resolved at submission.
    pub policy: String,
    pub script_retry_ms: u64,
    pub health_retry_ms: u64,
    pub retries_enabled: bool,
    /// Who asked (the API token's name, or the CLI's user).
    pub who: String,
    pub submitted_ms: u64,
    /// The schedule and slot it runs for, if a schedule's ([`super::schedules`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<SlotOf>,
}

impl Submission {
    /// `spec` on `route`, as `who` asked, signed as submitted by them (a name that cannot be one,
    /// none: the API's token names and the CLI's users are checked where they are given).
    pub fn new(
        ticket: Ticket,
        route: &Route,
        mut spec: ScriptSpec,
        policy: &str,
        policies: Policies,
        who: &str,
    ) -> Self {
        spec.submitter = contracts::wire::approvals::check_submitter(who).is_ok().then(|| who.to_owned());
        Submission {
            ticket,
            target: route.name().to_owned(),
            route: match route {
                Route::Agent(_) => "agent".into(),
                Route::Pool(_) | Route::Worker { .. } => "pool".into(),
            },
            script_digest: spec.digest(),
            secret_names: spec.secret_env.names().map(str::to_owned).collect(),
            spec: ScriptSpec { secret_env: Default::default(), ..spec },
            who: who.to_owned(),
            policy: policy.to_owned(),
            script_retry_ms: policies.script.duration.as_millis() as u64,
            health_retry_ms: policies.health.duration.as_millis() as u64,
            retries_enabled: policies.script.enabled,
            submitted_ms: unix_millis(SystemTime::now()),
            schedule: None,
        }
    }

    pub fn route(&self) -> Result<Route, contracts::wire::topology::NameError> {
        match self.route.as_str() {
            "pool" => Route::pool(&self.target),
            _ => Route::agent(&self.target),
        }
    }

    pub fn policies(&self) -> Policies {
        let policy = |ms| RetryPolicy { enabled: self.retries_enabled, duration: Duration::from_millis(ms) };
        Policies { script: policy(self.script_retry_ms), health: policy(self.health_retry_ms) }
    }
}

/// The schedule slot a ticket runs for, as its submission records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotOf {
    /// The schedule's name and id.
    pub schedule: String,
    pub id: String,
    /// The slot's identity ([`crate::schedule::Slot::id`]) and time (unix ms).
    pub slot: String,
    pub at_ms: u64,
}
