//! Waiting between attempts: the one doubling, capped backoff every retry loop uses (the
//! submission's retries, the agent's reconnects to the broker and its writes to the ticket store,
//! the service's journal writes). Each loop keeps its own numbers (first pause, cap, jitter or
//! not), said where it makes its [`Backoff`].
//!
//! With full jitter each pause is a random part of the current ceiling, so that many clients that
//! lost a server together do not come back in step. The randomness is passed in as a seed (the
//! drivers give theirs: a fixed one replays the same pauses), as everywhere in this crate.

use std::time::Duration;

/// The pauses between attempts: the ceiling starts at `first` and doubles after each pause, up
/// to `max`; each pause is the ceiling itself, or with full jitter a random part of it.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
    /// The source of the jitter's draws; `None` pauses for the whole ceiling.
    jitter: Option<fastrand::Rng>,
}

impl Backoff {
    /// Pauses of `first`, then twice as long each time, up to `max`.
    pub fn doubling(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, ceiling: first, jitter: None }
    }

    /// Full jitter: each pause is a random part of a ceiling that starts at `first` and doubles
    /// up to `max`; `seed` decides the draws.
    pub fn full_jitter(first: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff { jitter: Some(fastrand::Rng::with_seed(seed)), ..Backoff::doubling(first, max) }
    }

    /// The longest the next pause can be.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The pause before the next attempt; the ceiling doubles (up to the cap) for the one after.
    pub fn next_pause(&mut self) -> Duration {
        let pause = match &mut self.jitter {
            Some(rng) => self.ceiling.mul_f64(rng.f64()),
            None => self.ceiling,
        };
        self.ceiling = (self.ceiling * 2).min(self.max);
        pause
    }

    /// Starts again from the first pause: what was failing worked.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_cap() {
        let mut backoff = Backoff::doubling(200 * MS, 5000 * MS);
        let pauses: Vec<_> = (0..7).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn a_reset_starts_from_the_first_pause() {
        let mut backoff = Backoff::doubling(50 * MS, 2000 * MS);
        backoff.next_pause();
        backoff.next_pause();
        assert_eq!(backoff.ceiling(), 200 * MS);
        backoff.reset();
        assert_eq!(backoff.next_pause(), 50 * MS);
    }

    #[test]
    fn full_jitter_pauses_stay_under_the_doubling_ceiling() {
        let mut backoff = Backoff::full_jitter(100 * MS, 1000 * MS, 7);
        for ceiling in [100, 200, 400, 800, 1000, 1000, 1000] {
            assert_eq!(backoff.ceiling(), ceiling * MS);
            let pause = backoff.next_pause();
            assert!(pause < ceiling * MS, "{pause:?} under {ceiling} ms");
        }
    }

    #[test]
    fn full_jitter_draws_a_random_part_of_the_ceiling_from_its_seed() {
        let pauses = |seed| {
            let mut backoff = Backoff::full_jitter(100 * MS, 2000 * MS, seed);
            (0..20).map(|_| backoff.next_pause()).collect::<Vec<_>>()
        };
        assert_eq!(pauses(3), pauses(3), "the same seed, the same pauses");
        assert_ne!(pauses(3), pauses(4));
        // The draw is the ceiling times a uniform fraction: the same as drawing it by hand.
        let mut rng = fastrand::Rng::with_seed(3);
        let by_hand: Vec<_> =
            [100, 200, 400, 800, 1600].iter().map(|&ceiling| (ceiling * MS).mul_f64(rng.f64())).collect();
        assert_eq!(pauses(3)[..5], by_hand[..]);
        let distinct: std::collections::BTreeSet<_> = pauses(3).into_iter().collect();
        assert!(distinct.len() > 15, "random parts, not the ceiling: {distinct:?}");
    }
}
