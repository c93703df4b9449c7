//! What the service last heard from each target it ran a script on, as the journal's `agents`
//! hash keeps it: `GET /v1/agents` answers the records as they are stored, and the web view reads
//! them back into [`AgentSeen`].

use crate::event::sorted_json;
use crate::retry::GaveUp;
use contracts::submission::negotiate::AgentKind;
use serde::{Deserialize, Serialize};

/// A target's capabilities when the service last asked (before each script), or why it could
/// not be asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeen {
    /// The agent id or pool name.
    pub target: String,
    /// `agent` or `pool`.
    pub route: String,
    pub reachable: bool,
    #[serde(flatten)]
    pub answer: AgentAnswer,
    /// Unix milliseconds when the service asked.
    pub seen_ms: u64,
}

/// What the target answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentAnswer {
    /// What it supports; a legacy agent does not say its version (`null`).
    Capabilities {
        protocol: String,
        services: Vec<String>,
        agent_version: Option<String>,
    },
    Unreachable {
        error: String,
    },
}

impl AgentSeen {
    /// The record of `target` (of route kind `route`) after asking it at `seen_ms`.
    pub fn new(target: &str, route: &str, answer: &Result<AgentKind, GaveUp>, seen_ms: u64) -> AgentSeen {
        let answer = match answer {
            Ok(AgentKind::Current(caps)) => AgentAnswer::Capabilities {
                protocol: if caps.supports(contracts::wire::messages::SERVICE_SCRIPT_V2) { "v2" } else { "v1" }.into(),
                services: caps.services.clone(),
                agent_version: Some(caps.agent_version.clone()),
            },
            Ok(AgentKind::Legacy) => AgentAnswer::Capabilities {
                protocol: "v1".into(),
                services: vec![contracts::wire::messages::SERVICE_SCRIPT_V1.into()],
                agent_version: None,
            },
            Err(gave_up) => AgentAnswer::Unreachable { error: gave_up.to_string() },
        };
        let reachable = matches!(answer, AgentAnswer::Capabilities { .. });
        AgentSeen { target: target.to_owned(), route: route.to_owned(), reachable, answer, seen_ms }
    }

    /// The record as the journal stores it (keys in alphabetical order, as always).
    pub fn to_json(&self) -> String {
        sorted_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records as the service wrote them before they were typed (its `json!` literals).
    const STORED: [&str; 3] = [
        r#"{"agent_version":"1.2.3","protocol":"v2","reachable":true,"route":"agent","seen_ms":1700000000000,"services":["script/v1","script/v2"],"target":"web-01"}"#,
        r#"{"agent_version":null,"protocol":"v1","reachable":true,"route":"agent","seen_ms":1700000000001,"services":["script/v1"],"target":"old-01"}"#,
        r#"{"error":"no answer","reachable":false,"route":"pool","seen_ms":1700000000002,"target":"workers"}"#,
    ];

    #[test]
    fn records_are_stored_and_read_back_as_before() {
        let capabilities = |protocol: &str, services: &[&str], version: Option<&str>| AgentAnswer::Capabilities {
            protocol: protocol.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            agent_version: version.map(str::to_owned),
        };
        let seen = |target: &str, route: &str, reachable, answer, seen_ms| AgentSeen {
            target: target.into(),
            route: route.into(),
            reachable,
            answer,
            seen_ms,
        };
        let records = [
            seen(
                "web-01",
                "agent",
                true,
                capabilities("v2", &["script/v1", "script/v2"], Some("1.2.3")),
                1_700_000_000_000,
            ),
            seen("old-01", "agent", true, capabilities("v1", &["script/v1"], None), 1_700_000_000_001),
            seen("workers", "pool", false, AgentAnswer::Unreachable { error: "no answer".into() }, 1_700_000_000_002),
        ];
        for (record, stored) in records.iter().zip(STORED) {
            assert_eq!(record.to_json(), stored);
            assert_eq!(&serde_json::from_str::<AgentSeen>(stored).unwrap(), record);
        }
    }
}
