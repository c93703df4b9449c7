//! The flags of the operator's broker steps: `setup-broker`, `enrol-agent`, `enrol-pool`.

use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub(in crate::cli) struct SetupBrokerArgs {
    /// Messages `cuttle.dead` keeps at most; the oldest go first.
    #[arg(long, default_value_t = 100_000)]
    pub dead_max_length: u32,
    /// How long a message stays in `cuttle.dead`.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub dead_ttl: Duration,
    /// How long the receipts stream `cuttle.receipts` keeps receipts, in RabbitMQ's form
    /// (`30D`, `12h`, `90m`); set when the stream is first declared.
    #[arg(long, default_value = contracts::wire::topology::RECEIPTS_MAX_AGE, value_parser = parse_stream_age)]
    pub receipts_max_age: String,
    /// Bytes the receipts stream keeps at most (the oldest segments go first); set when the
    /// stream is first declared.
    #[arg(long, default_value_t = contracts::wire::topology::RECEIPTS_MAX_BYTES)]
    pub receipts_max_bytes: i64,
}

/// A stream's `x-max-age`: a number and one of RabbitMQ's units, Y, M, D, h, m or s.
fn parse_stream_age(raw: &str) -> Result<String, String> {
    let (number, unit) = raw.split_at(raw.len().saturating_sub(1));
    match (number.parse::<u32>(), unit) {
        (Ok(n), "Y" | "M" | "D" | "h" | "m" | "s") if n > 0 => Ok(raw.to_owned()),
        _ => Err("a positive number and a unit, one of Y, M, D, h, m, s (e.g. 30D)".into()),
    }
}

#[derive(Args, Debug)]
pub(in crate::cli) struct EnrolAgentArgs {
    /// The agent's id.
    pub agent_id: String,
    /// The pool the agent serves as well (its queues are declared and its permissions include them).
    #[arg(long)]
    pub pool: Option<String>,
    /// The agent's broker user, for the printed command [default: the agent id].
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Args, Debug)]
pub(in crate::cli) struct EnrolPoolArgs {
    /// The pool's name.
    pub pool: String,
    /// The broker user all the pool's workers share, for the printed command [default:
    /// cuttle-pool-POOL].
    #[arg(long)]
    pub user: Option<String>,
}
