//! Where a request goes: one agent, any worker of a pool, or one worker of a pool on its own
//! queue (a transfer stays with the worker that answered it first).

use contracts::wire::messages::Kind;
use contracts::wire::topology::{self, NameError};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Agent(String),
    Pool(String),
    /// One worker of a pool, on its own queue, believed under the pool's pin (its commands
    /// are addressed to the pool, which every worker of it accepts).
    Worker {
        pool: String,
        agent: String,
    },
}

impl Route {
    pub fn agent(id: &str) -> Result<Route, NameError> {
        topology::validate_name("agent id", id)?;
        Ok(Route::Agent(id.to_owned()))
    }

    pub fn pool(name: &str) -> Result<Route, NameError> {
        topology::validate_name("pool name", name)?;
        Ok(Route::Pool(name.to_owned()))
    }

    /// Where a request of `kind` goes: an agent's queue, or for a pool its work queue (starts)
    /// or its service queue (everything else).
    pub fn routing_key(&self, kind: Kind) -> String {
        match self {
            Route::Agent(id) | Route::Worker { agent: id, .. } => id.clone(),
            Route::Pool(pool) if matches!(kind, Kind::StartScriptV2 | Kind::StartScriptV1) => {
                topology::pool_routing_key(pool)
            }
            Route::Pool(pool) => topology::pool_service_routing_key(pool),
        }
    }

    /// The queue requests of `kind` end in (see [`Route::routing_key`]).
    pub fn queue(&self, kind: Kind) -> String {
        match self {
            Route::Agent(id) | Route::Worker { agent: id, .. } => topology::agent_queue(id),
            Route::Pool(pool) if matches!(kind, Kind::StartScriptV2 | Kind::StartScriptV1) => {
                topology::pool_queue(pool)
            }
            Route::Pool(pool) => topology::pool_service_queue(pool),
        }
    }

    /// The agent id or pool name, as the user gave it.
    pub fn name(&self) -> &str {
        match self {
            Route::Agent(id) | Route::Pool(id) | Route::Worker { pool: id, .. } => id,
        }
    }

    /// The envelope's `target`, which the agent checks, and the name of its pin in the known
    /// agents: the agent id, or `pool:<name>` (which no agent id can be).
    pub fn target(&self) -> String {
        match self {
            Route::Agent(id) => id.clone(),
            Route::Pool(pool) | Route::Worker { pool, .. } => topology::pool_routing_key(pool),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Agent(id) => write!(f, "agent {id}"),
            Route::Pool(pool) => write!(f, "pool {pool}"),
            Route::Worker { pool, agent } => write!(f, "worker {agent} of pool {pool}"),
        }
    }
}
