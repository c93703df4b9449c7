//! Script tickets. The dispatcher makes them (script v2) so that a repeated start names the same
//! script; the agent makes them only for legacy script v1.

use crate::entropy::{draw, Entropy, EntropyError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest ticket accepted; keeps store keys and log fields bounded.
pub const MAX_TICKET_LEN: usize = 128;

/// Why a text is not a ticket.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket must be 1 to {MAX_TICKET_LEN} characters")]
    Length,
    #[error("ticket {0:?} has characters outside [A-Za-z0-9_-]")]
    Characters(String),
}

/// A script ticket. Tickets compare and hash case-insensitively: the store key is
/// [`Ticket::store_key`], the ticket in lower case.
///
/// One strict format everywhere, checked whenever a ticket is decoded (from the wire, a store or
/// a journal) as well as parsed: 1 to 128 characters of `[A-Za-z0-9_-]`. No `.` (so never `.` or
/// `..`), no `/`, no control characters: a ticket names a workspace directory and store keys.
#[derive(Clone, Debug, Serialize, Deserialize, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct Ticket(String);

impl Ticket {
    /// A new random ticket (UUID v4, hyphenated, lower case) from `entropy`; fails only when it
    /// does.
    pub fn generate(entropy: &mut dyn Entropy) -> Result<Self, EntropyError> {
        let bytes = draw::<16>(entropy)?;
        Ok(Ticket(uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()))
    }

    /// Parses a ticket given by a user or a peer: 1 to 128 characters of `[A-Za-z0-9_-]`.
    pub fn parse(raw: &str) -> Result<Self, TicketError> {
        let ticket = Ticket(raw.to_owned());
        ticket.validate()?;
        Ok(ticket)
    }

    /// Checks the format (done by [`Ticket::parse`] and by decoding).
    pub fn validate(&self) -> Result<(), TicketError> {
        if self.0.is_empty() || self.0.len() > MAX_TICKET_LEN {
            return Err(TicketError::Length);
        }
        if !self.0.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) {
            return Err(TicketError::Characters(self.0.clone()));
        }
        Ok(())
    }

    /// The ticket normalised to lower case, as it is keyed in the ticket store.
    pub fn store_key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Ticket {
    type Error = TicketError;
    fn try_from(raw: String) -> Result<Self, TicketError> {
        let ticket = Ticket(raw);
        ticket.validate()?;
        Ok(ticket)
    }
}

impl From<Ticket> for String {
    fn from(ticket: Ticket) -> String {
        ticket.0
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl std::hash::Hash for Ticket {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.store_key().hash(state)
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Ticket {
    type Err = TicketError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ticket::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_compare_case_insensitively() {
        let a = Ticket::parse("AbC-1").unwrap();
        let b = Ticket::parse("abc-1").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.store_key(), "abc-1");
    }

    #[test]
    fn generated_tickets_are_valid_and_distinct() {
        let entropy = &mut crate::entropy::Seeded::new(7);
        let a = Ticket::generate(entropy).unwrap();
        assert!(a.validate().is_ok());
        assert_eq!(a.as_str().len(), 36, "a hyphenated UUID");
        assert_eq!(&a.as_str()[14..15], "4", "version 4");
        assert_ne!(a, Ticket::generate(entropy).unwrap());
    }

    #[test]
    fn bad_tickets_are_refused() {
        assert!(Ticket::parse("").is_err());
        assert!(Ticket::parse("a b").is_err());
        assert!(Ticket::parse(&"x".repeat(MAX_TICKET_LEN + 1)).is_err());
        for hostile in [".", "..", "a.b", "../x", "a/b", "a\u{1b}[2J", "a\nb", "a\0"] {
            assert!(Ticket::parse(hostile).is_err(), "{hostile:?} is refused");
        }
    }

    #[test]
    fn decoding_checks_the_format() {
        let encoded = rmp_serde::to_vec("..").unwrap();
        assert!(rmp_serde::from_slice::<Ticket>(&encoded).is_err());
        let encoded = rmp_serde::to_vec("Ok-1").unwrap();
        assert_eq!(rmp_serde::from_slice::<Ticket>(&encoded).unwrap(), Ticket::parse("ok-1").unwrap());
    }
}
