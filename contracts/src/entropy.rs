//! Randomness, passed in: nothing in this crate draws any of its own. Whatever makes a fresh
//! secret (a key, a session's share, a sealing's share) or a fresh name (a ticket, a message
//! id) takes an [`Entropy`]: the binaries give the operating system's random source
//! (`edge::entropy`), the simulation and tests a [`Seeded`] one, so that a seed replays exactly.

/// Where fresh random bytes come from.
pub trait Entropy: Send {
    /// Fills `bytes` with random bytes; fails only when the source does.
    fn fill(&mut self, bytes: &mut [u8]) -> Result<(), EntropyError>;
}

/// The random source failed: its own error, told in its own words. Shared (`Arc`), so that the
/// errors that carry it can be cloned.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct EntropyError(#[source] pub std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl EntropyError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EntropyError {
        EntropyError(std::sync::Arc::from(error.into()))
    }
}

/// The same failure (one error, shared), so that the errors carrying it compare as before.
impl PartialEq for EntropyError {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for EntropyError {}

/// `N` bytes drawn from `entropy`.
pub(crate) fn draw<const N: usize>(entropy: &mut dyn Entropy) -> Result<[u8; N], EntropyError> {
    let mut bytes = [0u8; N];
    entropy.fill(&mut bytes)?;
    Ok(bytes)
}

/// Random bytes from a seeded generator (not a cryptographic one): the same seed gives the same
/// bytes. For the simulation and tests only, never for a real key.
#[derive(Clone, Debug)]
pub struct Seeded(pub fastrand::Rng);

impl Seeded {
    pub fn new(seed: u64) -> Seeded {
        Seeded(fastrand::Rng::with_seed(seed))
    }
}

impl Entropy for Seeded {
    fn fill(&mut self, bytes: &mut [u8]) -> Result<(), EntropyError> {
        bytes.iter_mut().for_each(|byte| *byte = self.0.u8(..));
        Ok(())
    }
}

/// A [`Seeded`] source no other call of this process got the seed of: fresh keys and names in
/// tests, the same in every run.
#[cfg(test)]
pub(crate) fn fresh() -> Seeded {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Seeded::new(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}
