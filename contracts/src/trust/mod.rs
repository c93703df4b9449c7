//! Trust (ARCHITECTURE.md, Trust): commands signed by a dispatcher key the agent trusts, answers
//! signed by the agent key the dispatcher pinned; the broker is a transport, never an authority.
//! Its modules depend one way, each only on those listed before it:
//!
//! - [`keys`]: Ed25519 keys, their ids, and the text a secret key file holds;
//! - [`seal`]: what vouches for a message (a signature, or a session's MAC) and the AMQP headers
//!   that carry it, and what each seal covers;
//! - [`session`]: a key agreed under both signatures once, then a MAC per message;
//! - [`approval`]: approvals of a command by named keys, and the rules that require them;
//! - [`files`]: the trusted-keys and known-agents file formats;
//! - [`verify`]: the agent's checks of commands, the dispatcher's of answers and announcements;
//! - [`sessions`]: the sessions each side keeps (the agent's table, the dispatcher's cache);
//! - [`sealed`]: secrets sealed to the target's key, so only it reads them;
//! - `amqp` (feature `amqp`): a seal in and out of lapin's message properties.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod approval;
pub mod files;
pub mod keys;
pub mod seal;
pub mod sealed;
pub mod session;
pub mod sessions;
pub mod verify;
