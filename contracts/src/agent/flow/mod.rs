//! The agent's flow: what it does with one delivery, from its bytes and seal to the reply, sealed
//! as so and naming its request. The trust checks first (size, seal, decoding, envelope, the
//! session offered), then the request: capabilities; a start with its claim, the replicas'
//! confirmation and the launch; a status with its long poll; a cancel; a complete. The decisions
//! are the plain functions of [`crate::agent`]; this is the order they are taken in and what is
//! done with their answers, once, for the agent and for the simulation alike.
//!
//! Everything outside is the [`environment::Environment`]'s: the ticket store, the clock and the waiting, the
//! scripts (launched, cancelled, their output awaited), the broker's admission of a delivery (a
//! place for a script), a fault hook, and the notes it takes of each step (the agent logs them,
//! the simulation traces them and checks its invariants on them). `worker-agent` is the real
//! environment, over RabbitMQ and Redis (or its embedded store) with real processes; the
//! simulator (`tests/simulation`) is another, over its broker, [`crate::store::memory::MemoryStore`] and
//! clock. The flow reads no clock, file, network or randomness of its own.
//!
//! Nothing here is ever pending in the simulation: every wait is a call into the environment,
//! which the simulator answers at once (a long poll is answered by noting how long its reply is
//! held), and [`crate::store::memory::MemoryStore`]'s futures are always ready.
//!
//! Its modules depend one way: [`environment`] (what the flow and its environment talk in),
//! [`script`] (the script requests), [`serve`] (one delivery, from its bytes to its reply).

pub mod environment;
pub mod script;
pub mod serve;
