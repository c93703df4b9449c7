//! Cancels that reach the worker running a script at once. A pool's workers share its service
//! queue, so a cancel is often taken by a worker that does not run the script: that worker flags
//! the ticket in the store and, in the same step (the store's cancel script), publishes the
//! ticket on the cancel channel of the store's key prefix. Every worker with a Redis store
//! subscribes to that channel and stops its own run of a ticket it hears of.
//!
//! Redis pub/sub keeps nothing for a subscriber that is away: a cancel published while the
//! subscription is down is picked up by the lease renewal (every third of `--lease-ttl`), which
//! reads the flag, as before, and before a script's process starts the flag is read anyway.

use contracts::backoff::Backoff;
use contracts::time::short;
use edge::connect::store::{current_client, RedisTarget};
use futures_util::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The channel cancels of tickets under `prefix` are published on; the message is the ticket
/// (normalised, as in the store's keys).
pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}cancels")
}

/// The first wait before subscribing again after losing the subscription (doubling while it
/// fails), and the longest.
const FIRST_RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);
const MAX_RESUBSCRIBE_DELAY: Duration = Duration::from_secs(5);

/// Follows the cancel channel of `prefix` until `stop`, calling `on_cancel` with each ticket
/// published there; subscribes again (with backoff) whenever the subscription is lost.
pub(crate) async fn follow(
    target: RedisTarget,
    prefix: String,
    connect_timeout: Duration,
    stop: CancellationToken,
    on_cancel: impl Fn(&str),
) {
    let channel = channel(&prefix);
    let mut backoff = Backoff::doubling(FIRST_RESUBSCRIBE_DELAY, MAX_RESUBSCRIBE_DELAY);
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = tokio::time::timeout(connect_timeout, subscribe(&target, &channel)) => subscribed,
        };
        if subscribed.as_ref().is_ok_and(Result::is_ok) {
            backoff.reset();
        }
        let delay = backoff.next_pause();
        match subscribed {
            Ok(Ok(pubsub)) => {
                tracing::debug!(%channel, "listening for cancels of scripts running here");
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        _ = stop.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else { break };
                    match message.get_payload::<String>() {
                        Ok(ticket) => on_cancel(&ticket),
                        Err(error) => tracing::warn!(%channel, %error, "unreadable cancel notice ignored"),
                    }
                }
                tracing::warn!(%channel, "lost the subscription to cancel notices; subscribing again (lease renewals pick cancels up meanwhile)");
            }
            Ok(Err(error)) if refused(&error) => {
                tracing::warn!(%channel, %error, "the redis user may not subscribe to cancel notices (grant it the channel, ACL SETUSER USER &CHANNEL); cancels another pool worker takes reach this one's scripts only at lease renewals");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%channel, %error, retry_in = %short(delay), "cannot subscribe to cancel notices; lease renewals pick cancels up meanwhile")
            }
            Err(_) => {
                tracing::warn!(%channel, retry_in = %short(delay), "subscribing to cancel notices timed out; lease renewals pick cancels up meanwhile")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Whether Redis refused the subscription for good: the user lacks the channel (ACL `NOPERM`).
fn refused(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
}

async fn subscribe(target: &RedisTarget, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = current_client(target).await?.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("an error reply");
        value.extract_error().expect_err("an error")
    }

    #[test]
    fn only_a_missing_channel_permission_ends_the_subscribing() {
        assert!(refused(&reply("NOPERM User cuttle has no permissions to access the 'cuttle:cancels' channel")));
        assert!(!refused(&reply("ERR unknown command 'SUBSCRIBE'")));
        assert!(!refused(&redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
    }
}
