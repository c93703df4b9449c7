//! What each `dispatcher` command does, given its parsed arguments; each gives the process's exit
//! code.

pub(super) mod bench;
pub(super) mod broker;
pub(super) mod cancel;
pub(super) mod completions;
pub(super) mod detach;
pub(super) mod fleet;
pub(super) mod health;
pub(super) mod history;
pub(super) mod journal;
pub(super) mod keys;
pub(super) mod receipts;
pub(super) mod schedule;
pub(super) mod serve;
pub(super) mod status;
pub(super) mod submit;
pub(super) mod transfer;
