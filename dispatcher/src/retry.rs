//! The one retry executor every RPC goes through. Transient failures are repeated with
//! exponential backoff and full jitter (first delay up to 100 ms, doubling, capped at 2 s, so a
//! link that comes back is used again within about a second) until the policy's deadline, which
//! counts from the first attempt. Permanent failures end at once. Giving up reports the last real
//! error and the time spent.

use crate::error::RpcError;
use backon::Retryable;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// First backoff ceiling; attempt n waits a random time up to `INITIAL_DELAY * 2^n`.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Largest backoff ceiling.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// Whether and for how long to retry one RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub enabled: bool,
    /// Total time for the RPC, first attempt included.
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
pub struct RetryNotice {
    /// The attempt that just failed (1 is the first).
    pub attempt: u32,
    pub delay: Duration,
    pub time_left: Duration,
    pub error: RpcError,
}

/// The RPC failed for good.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{error} (gave up after {} and {attempts} attempt{})", short(round(*elapsed)), if *attempts == 1 { "" } else { "s" })]
pub struct GaveUp {
    /// The last error an attempt really got.
    pub error: RpcError,
    pub elapsed: Duration,
    pub attempts: u32,
}

/// A duration as users write them: `2m30s`, `1h5s`, `1.5s`, `300ms` (no spaces, tenths of a
/// second below ten seconds, whole seconds above).
pub fn short(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    if d < Duration::from_secs(10) {
        let tenths = d.as_millis() / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    [(h, "h"), (m, "m"), (s, "s")].iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect()
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// Full-jitter exponential backoff: an endless series of delays, each random up to a growing
/// ceiling.
#[derive(Clone, Debug)]
pub struct FullJitter {
    ceiling: Duration,
    rng: fastrand::Rng,
}

impl FullJitter {
    pub fn new() -> Self {
        FullJitter { ceiling: INITIAL_DELAY, rng: fastrand::Rng::new() }
    }
}

impl Default for FullJitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for FullJitter {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let delay = self.ceiling.mul_f64(self.rng.f64());
        self.ceiling = (self.ceiling * 2).min(MAX_DELAY);
        Some(delay)
    }
}

/// What to do after a failed attempt: retry after a delay (cut to the deadline), or give up.
pub fn next_delay(
    error: &RpcError,
    policy: RetryPolicy,
    now: Instant,
    deadline: Instant,
    proposed: Duration,
) -> Option<Duration> {
    if !policy.enabled || !error.is_transient() || now >= deadline {
        return None;
    }
    Some(proposed.min(deadline - now))
}

/// How long one attempt may wait for its reply: its usual timeout, cut to what is left of the
/// deadline (but never below a second, so a last attempt is a real one).
pub fn attempt_timeout(usual: Duration, policy: RetryPolicy, now: Instant, deadline: Instant) -> Duration {
    if !policy.enabled {
        return usual;
    }
    usual.min(deadline.saturating_duration_since(now).max(Duration::from_secs(1)))
}

/// Runs `attempt` until it succeeds, fails permanently, the deadline passes, or `cancel` fires.
/// `attempt` gets the reply timeout to use; `notify` hears of every retry before its delay.
pub async fn execute<T, F, Fut>(
    policy: RetryPolicy,
    usual_timeout: Duration,
    cancel: &CancellationToken,
    mut notify: impl FnMut(&RetryNotice) + Send,
    attempt: F,
) -> Result<T, GaveUp>
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    let started = Instant::now();
    let deadline = started + policy.duration;
    let attempts = AtomicU32::new(0);
    let run = (|| {
        attempts.fetch_add(1, Ordering::Relaxed);
        attempt(attempt_timeout(usual_timeout, policy, Instant::now(), deadline))
    })
    .retry(FullJitter::new())
    .sleep(tokio::time::sleep)
    .adjust(|error: &RpcError, proposed| next_delay(error, policy, Instant::now(), deadline, proposed?))
    .notify(|error: &RpcError, delay| {
        notify(&RetryNotice {
            attempt: attempts.load(Ordering::Relaxed),
            delay,
            time_left: deadline.saturating_duration_since(Instant::now()),
            error: error.clone(),
        })
    });
    let result = tokio::select! {
        result = run => result,
        _ = cancel.cancelled() => Err(RpcError::Cancelled),
    };
    result.map_err(|error| GaveUp { error, elapsed: started.elapsed(), attempts: attempts.load(Ordering::Relaxed) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> RpcError {
        RpcError::ConnectionLost("reset".into())
    }

    #[test]
    fn durations_read_as_users_write_them() {
        let cases =
            [(150_000, "2m30s"), (3_605_000, "1h5s"), (1_500, "1.5s"), (2_000, "2s"), (300, "300ms"), (0, "0ms")];
        for (ms, text) in cases {
            assert_eq!(short(Duration::from_millis(ms)), text);
        }
        assert_eq!(short(Duration::from_millis(59_900)), "59s");
    }

    #[test]
    fn full_jitter_stays_under_a_doubling_capped_ceiling() {
        let delays: Vec<_> = FullJitter::new().take(20).collect();
        let mut ceiling = INITIAL_DELAY;
        for d in delays {
            assert!(d <= ceiling);
            ceiling = (ceiling * 2).min(MAX_DELAY);
        }
    }

    #[test]
    fn permanent_errors_and_disabled_retries_give_up_at_once() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(60);
        let policy = RetryPolicy::new(Duration::from_secs(60));
        let unroutable = RpcError::Unroutable { target: "agent x".into() };
        assert_eq!(next_delay(&unroutable, policy, now, deadline, Duration::from_millis(5)), None);
        assert_eq!(next_delay(&transient(), RetryPolicy::once(), now, deadline, Duration::from_millis(5)), None);
        assert_eq!(
            next_delay(&transient(), policy, now, deadline, Duration::from_millis(5)),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn delays_are_cut_to_the_deadline_and_stop_after_it() {
        let now = Instant::now();
        let policy = RetryPolicy::new(Duration::from_secs(1));
        let deadline = now + Duration::from_millis(50);
        assert_eq!(
            next_delay(&transient(), policy, now, deadline, Duration::from_secs(2)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(next_delay(&transient(), policy, deadline, deadline, Duration::from_millis(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_deadline_counting_the_first_attempt_and_reports_the_last_error() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::new(Duration::from_secs(30));
        let mut notices = 0;
        let started = Instant::now();
        let result: Result<(), GaveUp> = execute(
            policy,
            Duration::from_secs(10),
            &CancellationToken::new(),
            |_| notices += 1,
            |timeout| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    // The first attempt takes its full timeout, as a lost reply would.
                    tokio::time::sleep(if n == 0 { timeout } else { Duration::from_millis(10) }).await;
                    Err(RpcError::ConnectionLost(format!("reset {n}")))
                }
            },
        )
        .await;
        let gave_up = result.unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(30) && elapsed < Duration::from_secs(32), "{elapsed:?}");
        assert!(gave_up.attempts > 5);
        assert_eq!(notices, gave_up.attempts - 1);
        let last = calls.load(Ordering::Relaxed) - 1;
        assert!(gave_up.to_string().contains(&format!("reset {last}")), "{gave_up}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_then_success_returns_the_success() {
        let calls = AtomicU32::new(0);
        let result = execute(
            RetryPolicy::new(Duration::from_secs(30)),
            Duration::from_secs(1),
            &CancellationToken::new(),
            |_| {},
            |_| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < 3 {
                        Err(transient())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_retrying() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result: Result<(), _> = execute(
            RetryPolicy::new(Duration::from_secs(30)),
            Duration::from_secs(1),
            &cancel,
            |_| {},
            |_| async { std::future::pending::<Result<(), RpcError>>().await },
        )
        .await;
        assert!(matches!(result.unwrap_err().error, RpcError::Cancelled));
    }
}
