//! Retries: how long each request is repeated ([`RetryPolicy`], [`Policies`]), how long one
//! attempt waits ([`Timing`], [`attempt_timeout`]), and the schedule between attempts
//! ([`Retry`]: full-jitter exponential backoff until the deadline). Times are durations since
//! any origin the driver keeps; the jitter comes from a seed the driver gives.

use super::error::CallError;
use crate::backoff::Backoff;
use crate::time::short;
use std::fmt;
use std::time::Duration;

/// First backoff ceiling; attempt n waits a random time up to `INITIAL_DELAY * 2^n`.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Largest backoff ceiling.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Whether and for how long to retry one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub enabled: bool,
    /// Total time for the request, first attempt included.
    pub duration: Duration,
}

impl RetryPolicy {
    pub const fn new(duration: Duration) -> Self {
        RetryPolicy { enabled: true, duration }
    }

    /// A single attempt, for requests that must not be repeated.
    pub const fn once() -> Self {
        RetryPolicy { enabled: false, duration: Duration::ZERO }
    }
}

/// A retry about to happen, for the user to see.
#[derive(Clone, Debug)]
pub struct RetryNotice<E> {
    /// The attempt that just failed (1 is the first).
    pub attempt: u32,
    pub delay: Duration,
    pub time_left: Duration,
    pub error: E,
}

/// The request failed for good.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{error} (gave up after {} and {attempts} attempt{})", short(round(*elapsed)), if *attempts == 1 { "" } else { "s" })]
pub struct GaveUp<E: fmt::Display> {
    /// The last error an attempt really got.
    pub error: E,
    pub elapsed: Duration,
    pub attempts: u32,
}

impl<E: fmt::Display> GaveUp<E> {
    /// A failure decided without repeating anything (a reply of the wrong kind).
    pub fn at_once(error: E) -> Self {
        GaveUp { error, elapsed: Duration::ZERO, attempts: 1 }
    }
}

/// What to do after a failed attempt: retry after a delay (cut to the deadline), or give up.
pub fn next_delay(
    error: &impl CallError,
    policy: RetryPolicy,
    now: Duration,
    deadline: Duration,
    proposed: Duration,
) -> Option<Duration> {
    if !policy.enabled || !error.is_transient() || now >= deadline {
        return None;
    }
    Some(proposed.min(deadline - now))
}

/// How long one attempt may wait for its reply: its usual timeout, cut to what is left of the
/// deadline (but never below a second, so a last attempt is a real one).
pub fn attempt_timeout(usual: Duration, policy: RetryPolicy, now: Duration, deadline: Duration) -> Duration {
    if !policy.enabled {
        return usual;
    }
    usual.min(deadline.saturating_sub(now).max(Duration::from_secs(1)))
}

/// One request's retries: full-jitter exponential backoff (first delay up to 100 ms, doubling,
/// capped at 2 s, so a link that comes back is used again within about a second) until the
/// policy's deadline, which counts from the first attempt. Permanent failures end at once.
/// Times are durations since any origin the driver keeps.
#[derive(Clone, Debug)]
pub struct Retry {
    policy: RetryPolicy,
    usual: Duration,
    started: Duration,
    deadline: Duration,
    /// Full jitter from [`INITIAL_DELAY`] doubling up to [`MAX_DELAY`].
    backoff: Backoff,
    attempts: u32,
}

impl Retry {
    /// `usual` is one attempt's reply timeout; `seed` decides the jitter.
    pub fn new(policy: RetryPolicy, usual: Duration, now: Duration, seed: u64) -> Self {
        Retry {
            policy,
            usual,
            started: now,
            deadline: now + policy.duration,
            backoff: Backoff::full_jitter(INITIAL_DELAY, MAX_DELAY, seed),
            attempts: 0,
        }
    }

    /// Counts an attempt made now; its reply timeout.
    pub fn attempt(&mut self, now: Duration) -> Duration {
        self.attempts += 1;
        attempt_timeout(self.usual, self.policy, now, self.deadline)
    }

    /// The last attempt failed with `error`: the retry to make after its delay, or the end.
    pub fn failed<E: CallError>(&mut self, error: E, now: Duration) -> Result<RetryNotice<E>, GaveUp<E>> {
        let proposed = self.backoff.next_pause();
        match next_delay(&error, self.policy, now, self.deadline, proposed) {
            Some(delay) => {
                Ok(RetryNotice { attempt: self.attempts, delay, time_left: self.deadline.saturating_sub(now), error })
            }
            None => Err(self.give_up(error, now)),
        }
    }

    /// Ends here with `error` (the user cancelled, say).
    pub fn give_up<E: fmt::Display>(&self, error: E, now: Duration) -> GaveUp<E> {
        GaveUp { error, elapsed: now.saturating_sub(self.started), attempts: self.attempts }
    }
}

/// How long a user's cancel is repeated when retries are off: it must get through even so.
pub const CANCEL_REPEAT: Duration = Duration::from_secs(30);

/// The retry policy of a user's cancel: the command's, or [`CANCEL_REPEAT`] when that one does
/// not retry, since a cancel that does not get through leaves the script running.
pub fn cancel_policy(policy: RetryPolicy) -> RetryPolicy {
    if policy.enabled {
        policy
    } else {
        RetryPolicy::new(CANCEL_REPEAT)
    }
}

/// The retry policies of one submission: for the script's requests, and for the capabilities
/// request that comes first (the machine policy's health-check duration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies {
    pub script: RetryPolicy,
    pub health: RetryPolicy,
}

impl From<RetryPolicy> for Policies {
    fn from(policy: RetryPolicy) -> Self {
        Policies { script: policy, health: policy }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// Timing of the requests a submission makes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long one attempt waits for a reply (on top of any wait asked of the agent).
    pub attempt_timeout: Duration,
    /// How long the agent may hold a status request for new output.
    pub status_wait: Duration,
    /// How long the agent may hold the start reply for first output or the end.
    pub start_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            attempt_timeout: Duration::from_secs(10),
            status_wait: Duration::from_secs(5),
            start_wait: Duration::from_millis(500),
        }
    }
}
