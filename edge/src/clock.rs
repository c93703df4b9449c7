//! The system's clock, for what `contracts` measures but does not time itself.

use contracts::metrics::StoreOps;
use std::future::Future;
use std::time::Instant;

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
