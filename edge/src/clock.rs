//! The system's clock, for what `contracts` measures but does not time itself: the time now as the
//! wire writes it, and the duration of a store operation.

use contracts::metrics::StoreOps;
use std::future::Future;
use std::time::{Instant, SystemTime};

/// Now, in unix milliseconds: the time as the wire writes it ([`contracts::time`]).
pub fn now_ms() -> u64 {
    contracts::time::unix_millis(SystemTime::now())
}

/// Runs one store operation, recording in `ops` how long it took and whether it failed.
pub async fn observe<T, E>(
    ops: &StoreOps,
    operation: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = call.await;
    ops.record(operation, started.elapsed(), result.is_err());
    result
}
