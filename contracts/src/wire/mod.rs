//! The wire: what travels between dispatchers and agents, and where. Its modules depend one way,
//! each only on those listed before it:
//!
//! - [`ticket`]: script tickets, made by the dispatcher, compared case-insensitively;
//! - [`error`]: typed error replies (transient or permanent) and codec errors;
//! - [`exit_code`]: the negative exit codes of outcomes that are not the script's own;
//! - [`labels`]: agent labels and the selectors that pick agents by them;
//! - [`approvals`]: approvals of a command as they travel, and the rules agents report;
//! - [`endpoints`]: the broker URLs of a cluster and which one to try next;
//! - [`topology`]: exchange, queue, stream and routing names, queue arguments, broker
//!   permissions and protocol limits;
//! - [`messages`]: the request and reply bodies of every service, and the service names;
//! - [`status`]: [`status::ScriptStatus`], the answer to every script request, with its log lines;
//! - [`transfer`]: file transfer in chunks (upload, download), resumable and verified;
//! - [`envelope`]: the versioned envelope every message travels in, its msgpack codec (named
//!   maps, so old and new readers tolerate each other's fields) and the answer binding;
//! - [`presence`]: agents' announcements of themselves on the presence stream.

pub mod approvals;
pub mod endpoints;
pub mod envelope;
pub mod error;
pub mod exit_code;
pub mod labels;
pub mod messages;
pub mod presence;
pub mod status;
pub mod ticket;
pub mod topology;
pub mod transfer;
