//! What each `dispatcher` command does, given its parsed arguments; each gives the process's exit
//! code.

pub mod bench;
pub mod broker;
pub mod cancel;
pub mod completions;
pub mod detach;
pub mod fleet;
pub mod health;
pub mod history;
pub mod journal;
pub mod keys;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod submit;
pub mod transfer;
