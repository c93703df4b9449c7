//! The one retry executor every RPC goes through, driving contracts' [`Retry`]: transient
//! failures are repeated with full-jitter exponential backoff until the policy's deadline,
//! which counts from the first attempt; permanent failures end at once. Giving up reports the
//! last real error and the time spent.

use crate::error::RpcError;
use contracts::submission::retry::{Retry, RetryPolicy};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A retry about to happen, for the user to see.
pub type RetryNotice = contracts::submission::retry::RetryNotice<RpcError>;

/// The RPC failed for good.
pub type GaveUp = contracts::submission::retry::GaveUp<RpcError>;

/// Runs `attempt` until it succeeds, fails permanently, the deadline passes, or `cancel` fires.
/// `attempt` gets the reply timeout to use; `notify` hears of every retry before its delay.
pub async fn execute<T, F, Fut>(
    policy: RetryPolicy,
    usual_timeout: std::time::Duration,
    cancel: &CancellationToken,
    mut notify: impl FnMut(&RetryNotice) + Send,
    attempt: F,
) -> Result<T, GaveUp>
where
    F: Fn(std::time::Duration) -> Fut,
    Fut: std::future::Future<Output = Result<T, RpcError>>,
{
    let origin = Instant::now();
    let mut retry = Retry::new(policy, usual_timeout, origin.elapsed(), fastrand::u64(..));
    loop {
        let run = async {
            let result = attempt(retry.attempt(origin.elapsed())).await;
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let notice = retry.failed(error, origin.elapsed())?;
            notify(&notice);
            tokio::time::sleep(notice.delay).await;
            Err(None)
        };
        let finished = tokio::select! {
            result = run => Some(result),
            _ = cancel.cancelled() => None,
        };
        match finished {
            Some(Ok(value)) => return Ok(value),
            Some(Err(Some(gave_up))) => return Err(gave_up),
            Some(Err(None)) => {}
            None => return Err(retry.give_up(RpcError::Cancelled, origin.elapsed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn transient() -> RpcError {
        crate::error::lost_link("reset")
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
                    Err(crate::error::lost_link(&format!("reset {n}")))
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
