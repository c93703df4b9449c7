//! Completes sent in batches. Every script ends with a complete (its ticket's output dropped, a
//! tombstone left), a durable message into the agent's quorum queue that nothing waits for. To
//! an agent that completes every ticket one message lists (`complete-batch/v1`), the completes
//! one dispatcher process makes within [`WINDOW`] of each other go as one message: the broker
//! writes, delivers and settles one message where it did as many as scripts, and the agent checks
//! one seal. Measured at 16 scripts in flight, the completes were a fifth of the broker's and the
//! agent's CPU per script (docs/performance.md).
//!
//! A complete is best effort as before: one that never arrives leaves the ticket to expire in
//! the agent's store. Those still waiting when the process ends are sent then
//! ([`CompleteBatches::flush`], before the connection closes).

use crate::route::Route;
use crate::rpc::RpcClient;
use contracts::wire::envelope::Request;
use contracts::wire::messages::{CompleteScriptV2, MAX_COMPLETE_BATCH};
use contracts::wire::ticket::Ticket;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a complete waits for others to the same agent before its batch is sent.
pub(crate) const WINDOW: Duration = Duration::from_millis(20);

/// The completes waiting for one route.
struct Batch {
    tickets: Vec<Ticket>,
    /// The latest deadline of the batch's tickets: the message expires with the last of them.
    not_after: SystemTime,
}

/// Completes waiting to be sent, by route, and the tasks that send them.
#[derive(Default)]
pub(crate) struct CompleteBatches {
    waiting: Mutex<HashMap<Route, Batch>>,
    senders: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl CompleteBatches {
    /// Adds the complete of `ticket` to `route`'s batch, sent [`WINDOW`] after the batch's first
    /// complete, or at once when it is full.
    pub(crate) fn add(self: &Arc<Self>, rpc: &Arc<RpcClient>, route: &Route, ticket: Ticket, not_after: SystemTime) {
        let full = {
            let mut waiting = self.waiting.lock().expect("complete batches poisoned");
            let batch = waiting.entry(route.clone()).or_insert_with(|| Batch { tickets: Vec::new(), not_after });
            batch.tickets.push(ticket);
            batch.not_after = batch.not_after.max(not_after);
            match batch.tickets.len() {
                n if n >= MAX_COMPLETE_BATCH => waiting.remove(route),
                1 => None,
                // A sender is already waiting for this batch.
                _ => return,
            }
        };
        let (batches, rpc, route) = (self.clone(), rpc.clone(), route.clone());
        let sender = tokio::spawn(async move {
            let batch = match full {
                Some(full) => full,
                None => {
                    tokio::time::sleep(WINDOW).await;
                    let batch = batches.waiting.lock().expect("complete batches poisoned").remove(&route);
                    let Some(batch) = batch else { return };
                    batch
                }
            };
            send(&rpc, &route, batch).await;
        });
        match self.senders.try_lock() {
            Ok(mut senders) => {
                senders.retain(|sender| !sender.is_finished());
                senders.push(sender);
            }
            // Being flushed as the process ends: this sender runs on its own.
            Err(_) => drop(sender),
        }
    }

    /// Sends every waiting batch now and waits for the batches on their way: the process ends.
    pub(crate) async fn flush(&self, rpc: &RpcClient) {
        let mut senders = self.senders.lock().await;
        let waiting: Vec<(Route, Batch)> = self.waiting.lock().expect("complete batches poisoned").drain().collect();
        for (route, batch) in waiting {
            send(rpc, &route, batch).await;
        }
        for sender in senders.drain(..) {
            let _ = sender.await;
        }
    }
}

/// Publishes `batch` as one complete (or more, past [`MAX_COMPLETE_BATCH`]); a failure is only
/// logged, as for any complete.
async fn send(rpc: &RpcClient, route: &Route, batch: Batch) {
    for chunk in batch.tickets.chunks(MAX_COMPLETE_BATCH) {
        let (first, more) = chunk.split_first().expect("chunks are never empty");
        let request = Request::CompleteScriptV2(CompleteScriptV2 { ticket: first.clone(), more: more.to_vec() });
        if let Err(error) = rpc.send(route, &request, batch.not_after).await {
            tracing::warn!(%route, tickets = chunk.len(), %error, "could not complete tickets (the agent cleans them up later)");
        }
    }
}
