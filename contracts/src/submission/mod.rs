//! The dispatcher's submission (capabilities, start, follow, cancel, complete, with retries) as
//! a state machine with no I/O, and what it is made of. Its modules depend one way, each on
//! those listed before it:
//!
//! - [`error`]: what a failed request's error says ([`error::CallError`]);
//! - [`retry`]: retry policies, attempt timeouts and the backoff schedule;
//! - [`negotiate`]: what an agent said of itself, and the script service to drive it with;
//! - [`follow`]: a script's log, each line once and in order;
//! - [`outcome`]: how a submission ended, and the process exit code that says so;
//! - [`requests`]: the start, cancel and complete requests, and the status a reply carries;
//! - [`machine`]: the state machine ([`machine::Submission`]) that drives them all.

pub mod error;
pub mod follow;
pub mod machine;
pub mod negotiate;
pub mod outcome;
pub mod requests;
pub mod retry;
