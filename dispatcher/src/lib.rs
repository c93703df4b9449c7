//! The Cuttle dispatcher: sends scripts to agents through RabbitMQ under tickets it makes
//! itself, repeats whatever got no answer until the retry deadline, and follows each script to
//! its end.
//!
//! # Layout
//! - [`rpc`]: request and reply over the broker (confirms, `mandatory`, direct reply-to).
//! - [`retry`]: the one retry executor (backoff with full jitter, deadline, last real error).
//! - [`orchestrator`]: start, follow, cancel and complete a script, driving
//!   `contracts::submission`'s machine (which also keeps the log in order, and says how a
//!   submission ended and with which exit code); [`completes`]: completes to one agent sent
//!   together, one message for many scripts.
//! - [`negotiate`]: capabilities first, then the newest script service both sides support.
//! - [`policy`]: machine policies (retry durations per purpose, targets and pools mapped to them).
//! - [`plan`]: a script request, from the CLI's flags or the API's JSON, made into what runs: routes,
//!   script spec, policies and tickets.
//! - [`route`]: agent or pool targets; [`error`]: what can fail and whether to retry.
//! - [`event`]: the JSON events written under `--json`, in the journal and as server-sent events.
//! - [`trust`]: the dispatcher's key (signs requests) and the agents' pinned keys (answers).
//! - [`fanout`]: one script on many targets, paced by [`budget`]'s limits (parallelism, error
//!   budget), with a result per target.
//! - [`inventory`]: the live fleet, from the agents' announcements on the presence stream;
//!   [`receipts`]: the receipts agents sign as runs end, from the receipts stream and files;
//!   [`stream`]: reading either stream up to the present.
//! - [`bench`]: the `dispatcher bench` load generator; [`metrics`]: the metric families.
//! - [`setup`]: the operator steps `setup-broker`, `enrol-agent` and `enrol-pool` (least privilege).
//! - [`schedule`]: schedules: cron expressions in time zones, their slots, what a pass starts.
//! - [`service`]: `dispatcher serve`: the HTTP API, the journal and crash-safe resume.
//! - [`transfer`]: `upload` and `download` in chunks, resumable and verified.
//! - [`cli`]: the `dispatcher` command line.
#![forbid(unsafe_code)]

mod bench;
mod budget;
pub mod cli;
mod completes;
pub mod error;
pub mod event;
mod fanout;
#[cfg(test)]
mod golden;
pub mod inventory;
pub mod metrics;
mod negotiate;
pub mod orchestrator;
mod plan;
mod policy;
pub mod receipts;
pub mod retry;
pub mod route;
pub mod rpc;
pub mod schedule;
pub mod service;
mod setup;
pub mod stream;
pub mod transfer;
pub mod trust;

/// The broker URL used when none is configured.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
