//! The operating system's random source, as the [`Entropy`] `contracts` takes wherever it makes
//! a fresh secret (a key, a session's share, a sealing's share) or name (a ticket, a message
//! id).

use contracts::entropy::{Entropy, EntropyError};
use contracts::wire::ticket::Ticket;

/// The operating system's random source (`getrandom`), through rand's `SysRng`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, bytes: &mut [u8]) -> Result<(), EntropyError> {
        use rand::TryRng;
        rand::rngs::SysRng.try_fill_bytes(bytes).map_err(EntropyError::new)
    }
}

/// A new ticket (a UUID v4) from the operating system's random source. Panics when the system
/// gives no random bytes, as every maker of UUIDs does: nothing could be signed either.
pub fn ticket() -> Ticket {
    Ticket::generate(&mut OsEntropy).unwrap_or_else(|error| panic!("no random bytes for a ticket: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_fresh_uuids() {
        let (a, b) = (ticket(), ticket());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 36);
    }
}
